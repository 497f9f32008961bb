//! The contract between the daemon (`unikerneld`) and the per-VM monitor
//! (`unikernel-vmm`): everything that crosses the process boundary is defined once here,
//! so neither side assembles or parses it by hand.
//!
//! - [`args`]: the VMM's command line, typed both ways (argv -> [`args::VmmArgs`] -> argv).
//! - [`cmdline`]: the guest's command line: kernel parameters, then ` -- ` and the app's.
//! - [`exit`]: its exit statuses and its one-line error on stderr.
//! - [`console`]: where the console goes, the replay protocol of the console socket, and
//!   the frames of the console feed the daemon reads.
//! - [`control`]: the control socket's line protocol (pause, resume, snapshot, console feed).
//! - [`pool`]: the warm pool's hand-off (a VMM created ahead of need gets what to run).
//! - [`size`], [`mac`], [`tap`]: memory sizes, MAC addresses, and tap devices.
//! - [`limits`]: bounds both sides check.
pub mod args;
pub mod cmdline;
pub mod console;
pub mod control;
pub mod exit;
pub mod limits;
pub mod mac;
pub mod pool;
pub mod size;
pub mod tap;

/// The VMM's program name: what the daemon runs, and what it checks before adopting a
/// process an earlier daemon started.
pub const VMM_BINARY: &str = "unikernel-vmm";

/// FNV-1a (64-bit): small and stable across Rust versions and platforms (unlike
/// `DefaultHasher`), for names and hashes that must not change between releases.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}

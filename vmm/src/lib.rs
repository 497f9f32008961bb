//! unikernel-vmm: a small, suspicious per-VM monitor for unikernels on KVM.
//!
//! One process runs one VM. The layout follows Firecracker's `src/vmm`: KVM state in
//! `vstate`, x86 setup in `arch`, devices in `devices`, and `builder` assembling a VM.
//! It knows nothing about KDL, D-Bus, netlink or systemd.
pub mod arch;
pub mod builder;
pub mod cmdline;
pub mod config;
pub mod control;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod jail;
pub mod loader;
pub mod pool;
pub mod seccomp;
pub mod snapshot;
pub mod sockopt;
pub mod vstate;
pub mod watchdog;

/// A warning on stderr, prefixed with the program name.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        eprintln!("{}{}", contract::exit::WARNING_PREFIX, format_args!($($arg)*))
    };
}

//! Running VMs: the VMM process, its console, its readiness, and what to do when it ends.
pub mod backoff;
pub mod console;
pub mod control;
pub mod feed;
pub mod inbox;
pub mod launcher;
pub mod probe;
pub mod process;
pub mod uids;
pub mod warm;

/// Whether a socket call failed because the daemon (or the host) is out of something:
/// descriptors (EMFILE, ENFILE) or memory (ENOMEM, ENOBUFS). Such a failure says nothing
/// of the VMM at the other end.
pub(crate) fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

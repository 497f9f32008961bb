//! Running VMs: the VMM process, its console, its readiness, and what to do when it ends.
pub mod backoff;
pub mod console;
pub mod control;
pub mod launcher;
pub mod probe;
pub mod process;
pub mod uids;
pub mod warm;

//! The wall between a guest and the host, raised once everything the VM needs is open (what
//! Firecracker's jailer does from outside, done here from inside): after the build for a
//! boot; for a restore, before the snapshot's state is believed (a VMM wrote it, and a
//! guest may have taken that VMM over). The process drops every way back to the host's
//! files and powers, then each thread closes itself in with a seccomp filter
//! (`crate::seccomp`).
//!
//! In order, while the process is still single-threaded (unshare and setresuid must be):
//! new mount, IPC and UTS namespaces; a root that is an empty read-only tmpfs (moved over
//! the old root, then chroot; see `fs.rs` for why not pivot_root), with only the VM's
//! snapshot directory bound in at its own path;
//! no capability left in the bounding set; no supplementary groups; the VM's own uid and
//! gid (which clears every capability); no_new_privs.
//!
//! No PID namespace: unshare(CLONE_NEWPID) only places later children in it and the VMM
//! has none (seccomp forbids it any). No network namespace: the tap is already open, and
//! a namespace per VM costs the kernel a loopback device and a slow, asynchronous teardown.
mod creds;
mod fds;
mod fs;

use std::path::{Path, PathBuf};

pub use fds::close_inherited;

/// What a jail is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    /// The one host directory left visible (read-write, owned by `uid`): where the VM is
    /// saved to, at the same path as on the host. Bound once, at the start: what fills its
    /// disk later frees it later too, but a directory that cannot be made at the start
    /// stays missing for this VMM.
    pub snapshot_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("jail: {what}: {source}")]
    Sys { what: String, source: std::io::Error },
    #[error("jail: the snapshot directory {0} must be an absolute path")]
    RelativeSnapshotDir(PathBuf),
}

/// The last OS error, with what was being done.
pub(crate) fn sys_err(what: impl Into<String>) -> Error {
    Error::Sys {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// Checks a libc return value (-1 is an error in errno).
pub(crate) fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> Result<(), Error> {
    if ret < 0 {
        return Err(sys_err(what()));
    }
    Ok(())
}

/// Creates the snapshot directory if needed (0700, like `snapshot::write`), before any jail.
pub fn prepare_snapshot_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Sys {
            what: format!("cannot create {}", dir.display()),
            source,
        })
}

impl Jail {
    /// Enters the jail. Must run before the process starts any thread.
    pub fn enter(&self) -> Result<(), Error> {
        let snapshot = match &self.snapshot_dir {
            Some(dir) if dir.is_relative() => return Err(Error::RelativeSnapshotDir(dir.clone())),
            // Without it the VM runs all the same; only saving it will fail, and say so.
            Some(dir) => match prepare_snapshot_dir(dir).and_then(|()| fs::give(dir, self.uid, self.gid)) {
                Ok(()) => Some(dir.as_path()),
                Err(e) => {
                    crate::log_warn!("{e}: this VM cannot be saved");
                    None
                }
            },
            None => None,
        };
        fs::enter_empty_root(snapshot)?;
        creds::drop_to(self.uid, self.gid)
    }
}

#[cfg(test)]
mod tests;

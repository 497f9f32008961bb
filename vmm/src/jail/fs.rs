//! The jail's filesystem: a mount namespace of its own whose root is an empty read-only
//! tmpfs, with at most one host directory bound in (the VM's snapshot directory).
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{check, Error};

/// Where the new root is built before it is moved over `/`: the old root's /tmp, as
/// bubblewrap does (it exists on every host, and in the new namespace covering it hides
/// nothing from anyone else).
const BASE: &CStr = c"/tmp";
/// The new root: a handful of directories, never a file.
const ROOT_OPTIONS: &CStr = c"size=16k,nr_inodes=64,mode=0755";

fn cstring(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Sys {
        what: format!("{} has a NUL byte", path.display()),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// Gives the snapshot directory to `uid:gid`, who will write snapshots into it.
pub fn give(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| Error::Sys {
        what: format!("cannot give {} to uid {uid}", path.display()),
        source,
    })
}

fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), Error> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let ret = unsafe { libc::mount(ptr(src), target.as_ptr(), ptr(fstype), flags, ptr(data).cast()) };
    check(ret, || format!("mount {target:?} (flags {flags:#x})"))
}

/// Moves the process into a new mount (and IPC, UTS) namespace whose root holds nothing
/// but the directory `bind`, at its host path.
pub fn enter_empty_root(bind: Option<&Path>) -> Result<(), Error> {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: unshare takes flags only; the process is single-threaded (else EINVAL).
    let ret = unsafe { libc::unshare(flags) };
    check(ret, || "unshare (mount, IPC, UTS namespaces)".into())?;
    // Nothing done here may propagate back to the host's mounts.
    mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    // Opened in the new namespace (a bind mount's source must be one of its own mounts),
    // before the tmpfs covers what the path goes through (it may be under /tmp).
    let bind = bind
        .map(|dir| {
            let fd: OwnedFd = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(dir)
                .map_err(|source| Error::Sys {
                    what: format!("cannot open {}", dir.display()),
                    source,
                })?
                .into();
            Ok::<_, Error>((dir, fd))
        })
        .transpose()?;
    let hidden = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(Some(c"tmpfs"), BASE, Some(c"tmpfs"), hidden, Some(ROOT_OPTIONS))?;
    if let Some((dir, fd)) = bind {
        let inside = Path::new(BASE.to_str().unwrap_or("/tmp")).join(dir.strip_prefix("/").unwrap_or(dir));
        std::fs::create_dir_all(&inside).map_err(|source| Error::Sys {
            what: format!("cannot make the mount point {}", inside.display()),
            source,
        })?;
        let target = cstring(&inside)?;
        // The path may be under /tmp, now covered: bind what the fd holds, not the path.
        let source = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|_| Error::Sys {
            what: "fd path".into(),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        mount(Some(&source), &target, None, libc::MS_BIND, None)?;
        mount(None, &target, None, libc::MS_BIND | libc::MS_REMOUNT | hidden, None)?;
    }
    // SAFETY: chdir with a NUL-terminated path.
    check(unsafe { libc::chdir(BASE.as_ptr()) }, || "chdir to the new root".into())?;
    // The new root goes over the old one and becomes this process's root (what
    // switch_root does), not through pivot_root: pivot_root walks every thread on the
    // host to move those whose root was the old one, 5-7 ms beside 5,000 VMMs (~15,000
    // threads) where this is constant. The old root stays under the new one, reachable by
    // no path: getting past a root takes chroot (CAP_SYS_CHROOT) or mount powers, which
    // the VMM gives up for good below, and its seccomp filters allow neither call.
    mount(Some(c"."), c"/", None, libc::MS_MOVE, None)?;
    // SAFETY: chroot with a NUL-terminated path.
    check(unsafe { libc::chroot(c".".as_ptr()) }, || {
        "chroot to the new root".into()
    })?;
    // SAFETY: as above.
    check(unsafe { libc::chdir(c"/".as_ptr()) }, || "chdir /".into())?;
    mount(None, c"/", None, libc::MS_REMOUNT | libc::MS_RDONLY | hidden, None)
}

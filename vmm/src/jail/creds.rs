//! Who the jailed VMM is: its own uid and gid, no capabilities, no way to gain any.
use super::{check, Error};

/// The highest capability number any kernel may know (CAP_LAST_CAP is 40 today); the
/// loop ends at the first one this kernel does not know.
const MAX_CAP: libc::c_ulong = 63;

/// Becomes `uid:gid` for good. Must run single-threaded: glibc applies set*id to every
/// thread, but the point is that there are none yet.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), Error> {
    for cap in 0..=MAX_CAP {
        // SAFETY: PR_CAPBSET_DROP takes a capability number.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(super::sys_err(format!("drop capability {cap} from the bounding set")));
        }
    }
    // SAFETY: an empty group list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, || "setgroups".into())?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) }, || format!("setresgid {gid}"))?;
    // Leaving uid 0 for good clears the permitted, effective and ambient capabilities.
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) }, || format!("setresuid {uid}"))?;
    // Whatever the host's fs.suid_dumpable: no core dumps of guest memory, no ptrace by
    // the same uid, /proc/PID/* owned by root.
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }, || {
        "PR_SET_DUMPABLE".into()
    })?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, || {
        "PR_SET_NO_NEW_PRIVS".into()
    })
}

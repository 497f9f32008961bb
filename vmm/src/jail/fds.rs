//! Descriptors the VMM did not ask for: whatever its parent left open without
//! close-on-exec. Closed first thing, before anything of the VM is opened.
use std::os::fd::RawFd;

/// Closes every fd above stderr except those in `keep` (fds named on the command line).
pub fn close_inherited(keep: &[RawFd]) {
    for (first, last) in gaps(keep) {
        close_range(first, last);
    }
}

/// The inclusive ranges of fds above 2 that are not in `keep`.
pub(super) fn gaps(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut gaps = Vec::new();
    let mut from = 3u32;
    for fd in keep {
        if fd > from {
            gaps.push((from, fd - 1));
        }
        from = fd + 1;
    }
    gaps.push((from, u32::MAX));
    gaps
}

fn close_range(first: u32, last: u32) {
    // SAFETY: close_range only closes descriptors; none of these is in use yet (nothing
    // has been opened), so no owner is left holding a closed fd.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if ret < 0 {
        // Before Linux 5.9: one at a time, over what is actually open.
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        let open: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .filter(|fd| (first..=last).contains(fd))
            .collect();
        for fd in open {
            // SAFETY: as above; the read_dir fd itself is closed by now.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

//! What the VMM asks of the sockets it is handed (`--control-fd`, the console feed) and
//! how it sends on them without ever blocking the thread or raising SIGPIPE.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// An integer socket option (SOL_SOCKET) of `fd`. A descriptor that is not a socket gives
/// ENOTSOCK, which callers turn into their own refusal.
pub fn int(fd: BorrowedFd<'_>, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`; a bad fd is an error.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `fd` is a unix socket of `kind` (SOCK_STREAM, SOCK_DGRAM); `Ok(false)` for
/// another socket or not a socket at all.
pub fn is_unix(fd: BorrowedFd<'_>, kind: libc::c_int) -> io::Result<bool> {
    let domain = match int(fd, libc::SO_DOMAIN) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => return Ok(false),
        other => other?,
    };
    Ok(domain == libc::AF_UNIX && int(fd, libc::SO_TYPE)? == kind)
}

/// Sends `data` on the connected socket `fd` without blocking and without SIGPIPE (no
/// address: the seccomp filters allow `sendto` with none); how many bytes went.
pub fn send_nonblocking(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `data`, valid for the call.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

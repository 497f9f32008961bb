//! A VMM of the warm pool (`--pool-fd N`): it creates its VM first (memory, irqchip, PIT,
//! vCPUs, CPUID: the KVM calls that cost most of a start), says so on the socket the
//! daemon gave it, and sleeps in `recvmsg` until it is handed what to run. From then on
//! it is the VMM the hand-off's arguments describe, with its stderr and descriptors.
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use contract::args::VmmArgs;
use contract::pool;

use crate::builder::{self, Warm};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] builder::Error),
    #[error(transparent)]
    Handoff(#[from] pool::Error),
    #[error("{0}")]
    Mismatch(String),
    #[error("pool socket: {0}")]
    Io(#[from] std::io::Error),
}

/// What the pool gave this VMM.
pub enum Waited {
    /// Run this, on this VM; `at` is when the hand-off arrived (the start's time is
    /// counted from there).
    Run {
        args: Box<VmmArgs>,
        warm: Warm,
        at: Instant,
    },
    /// The daemon closed its end: nothing to run.
    Nothing,
}

/// Creates the VM that `pooled` (the pool's own arguments) describes, then waits on `fd`.
pub fn wait(fd: RawFd, pooled: &VmmArgs) -> Result<Waited, Error> {
    // SAFETY: the fd was named on our command line and is ours alone (inherited for us).
    let socket = unsafe { UnixStream::from_raw_fd(fd) };
    let warm = Warm::prepare(pooled.memory, pooled.vcpus, pooled.cpuid_cache.as_deref())?;
    use std::io::Write;
    if let Err(e) = (&socket).write_all(pool::READY) {
        // The daemon is gone already.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(Waited::Nothing);
        }
        return Err(e.into());
    }
    let Some(handoff) = pool::receive(&socket)? else {
        return Ok(Waited::Nothing);
    };
    let at = Instant::now();
    let (args, stderr) = handoff.resolve()?;
    // From here on the VMM's words go to the service's log.
    // SAFETY: dup2 onto stderr; `stderr` stays open until the call returns.
    if unsafe { libc::dup2(stderr.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    drop(stderr);
    pool::fits(&args, warm.memory().bytes(), warm.vcpus()).map_err(Error::Mismatch)?;
    // `ps` and the daemon's sweep read what a VMM runs from its command line.
    if let Err(e) = show_args(&args) {
        crate::log_warn!("cannot show the handed-off arguments in /proc/PID/cmdline: {e}");
    }
    Ok(Waited::Run {
        args: Box::new(args),
        warm,
        at,
    })
}

/// Writes `args` over this process's own arguments, so that /proc/PID/cmdline (what ps
/// and the daemon's sweep read) shows what it runs. The daemon starts pooled VMMs with
/// room to spare (`--pool-room`) and hands off nothing longer; the rest is NUL-filled.
/// std has parsed its arguments already: nothing reads them after this.
fn show_args(args: &VmmArgs) -> std::io::Result<()> {
    let program = std::env::args_os()
        .next()
        .unwrap_or_else(|| contract::VMM_BINARY.into());
    let text = pool::argv_bytes(&program, args);
    let (start, end) = arg_area()?;
    let room = end.saturating_sub(start);
    if text.len() > room {
        return Err(std::io::Error::other(format!(
            "{} bytes of arguments, {room} bytes of room",
            text.len()
        )));
    }
    // SAFETY: [start, end) is this process's argument area, as the kernel reports it
    // (mapped and writable: the top of the main thread's stack); `text` fits in it.
    unsafe {
        let area = start as *mut u8;
        std::ptr::copy_nonoverlapping(text.as_ptr(), area, text.len());
        std::ptr::write_bytes(area.add(text.len()), 0, room - text.len());
    }
    Ok(())
}

/// Fields 48 and 49 of /proc/self/stat: where the kernel finds this process's arguments.
fn arg_area() -> std::io::Result<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|i| stat[i + 2..].split(' ').collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.trim().parse::<usize>().ok());
    match (field(48), field(49)) {
        (Some(start), Some(end)) if start > 0 && end >= start => Ok((start, end)),
        _ => Err(std::io::Error::other("no argument area in /proc/self/stat")),
    }
}

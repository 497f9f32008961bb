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
    Ok(Waited::Run {
        args: Box::new(args),
        warm,
        at,
    })
}

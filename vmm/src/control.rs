//! The control socket (`--control PATH`): requests from the daemon to pause, resume or
//! snapshot the running VM, served on the event loop (protocol: `contract::control`).
//!
//! One request per connection, read with a short timeout so a client that connects and
//! says nothing cannot hold the loop (the socket is the daemon's, in its state directory,
//! mode 0600). While a snapshot is written the loop is busy, which is what we want: no
//! device may touch guest memory or queues while they are saved.
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::control::{reply_line, AfterSnapshot, Request, MAX_LINE};
use contract::exit::ExitStatus;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;

use crate::device_manager::{Legacy, NetDevice};
use crate::devices::legacy::console_socket::{feed_socket, ConsoleSocket};
use crate::event_loop::{EventLoop, Next};
use crate::snapshot::{self, memory::Origin, DevicesState, MemoryInfo, NetState, Snapshot};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vcpu_handle::VcpuHandle;
use crate::vstate::vcpu_state::check_xsave_size;
use crate::vstate::vm::Vm;

/// How long a client has to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// Binds the control socket (replacing a stale one), owner-only, for the event loop.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let listener = contract::control::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Takes the inherited socket `fd` (`--control-fd`), which must be a unix stream socket
/// that listens already: the daemon binds it before the spawn, so that it can connect at
/// once instead of waiting for the path to appear.
pub fn inherited(fd: RawFd) -> io::Result<UnixListener> {
    let refused = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening unix stream socket (bind and listen before handing it over)",
        )
    };
    // SAFETY: only borrowed for the checks; a bad fd makes them fail.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if !crate::sockopt::is_unix(borrowed, libc::SOCK_STREAM)?
        || crate::sockopt::int(borrowed, libc::SO_ACCEPTCONN)? == 0
    {
        return Err(refused());
    }
    // SAFETY: named on our command line and inherited for us alone; checked above to be
    // the kind of socket a UnixListener is.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// What the control socket acts on: every piece of the running VM.
pub struct Controller {
    pub handles: Vec<VcpuHandle>,
    pub vm: Arc<Vm>,
    pub mem: GuestMemoryMmap,
    pub origin: Origin,
    pub legacy: Legacy,
    pub net: Option<NetDevice>,
    /// The console socket (`--console unix:PATH`), which takes a new feed.
    pub console: Option<ConsoleSocket>,
    paused: bool,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    pub fn new(
        handles: Vec<VcpuHandle>,
        vm: Arc<Vm>,
        mem: GuestMemoryMmap,
        origin: Origin,
        legacy: Legacy,
        net: Option<NetDevice>,
        console: Option<ConsoleSocket>,
    ) -> Self {
        Controller {
            handles,
            vm,
            mem,
            origin,
            legacy,
            net,
            console,
            paused: false,
        }
    }

    fn pause(&mut self) -> Result<(), String> {
        for h in &self.handles {
            h.pause().map_err(|e| e.to_string())?;
        }
        self.paused = true;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), String> {
        for h in &self.handles {
            h.resume().map_err(|e| e.to_string())?;
        }
        self.paused = false;
        Ok(())
    }

    /// Everything but guest memory, read while the vCPUs are paused.
    fn capture(&self) -> Result<Snapshot, String> {
        let msrs: Arc<[u32]> = self.vm.msr_indices().map_err(|e| e.to_string())?.into();
        let vcpus = self
            .handles
            .iter()
            .map(|h| h.save(msrs.clone()).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let net = self.net.as_ref().map(|n| NetState {
            device: lock(&n.device).save(),
            transport: lock(&n.transport).save(),
        });
        Ok(Snapshot {
            vmm: format!("{} {}", contract::VMM_BINARY, env!("CARGO_PKG_VERSION")),
            memory: MemoryInfo {
                bytes: self.mem.iter().map(|r| r.len()).sum(),
                file_ino: 0,
            },
            vm: self.vm.save_state().map_err(|e| e.to_string())?,
            vcpus,
            devices: DevicesState {
                serial: lock(&self.legacy.serial).save(),
                cmos: lock(&self.legacy.cmos).save(),
                net,
            },
        })
    }

    fn snapshot(&mut self, dir: &Path) -> Result<Vec<String>, String> {
        let start = Instant::now();
        check_xsave_size(self.vm.xsave_size())?;
        let was_paused = self.paused;
        self.pause()?;
        let written = self.capture().and_then(|state| {
            snapshot::write(dir, |file| {
                let written = snapshot::memory::save(&self.mem, &self.origin, file)
                    .map_err(|e| format!("writing guest memory: {e}"))?;
                Ok((state, written))
            })
            .map_err(|e| e.to_string())
        });
        if written.is_err() && !was_paused {
            // A failed snapshot leaves the guest as it was.
            let _ = self.resume();
        }
        let written = written?;
        Ok(vec![written.to_string(), start.elapsed().as_millis().to_string()])
    }

    /// Installs the feed that came with a `console-feed` request.
    fn console_feed(&mut self, fds: Vec<OwnedFd>) -> Result<Vec<String>, String> {
        let console = self
            .console
            .as_ref()
            .ok_or("this VMM's console is not a socket (--console unix:PATH)")?;
        let fd = fds
            .into_iter()
            .next()
            .ok_or("console-feed needs its socket sent with the request (SCM_RIGHTS)")?;
        let socket = feed_socket(fd).map_err(|e| e.to_string())?;
        console.set_feed(socket).map_err(|e| format!("console feed: {e}"))?;
        Ok(Vec::new())
    }

    /// Serves one request (`fds`: what came with it); `true` when the process must end
    /// after the reply.
    fn serve(&mut self, request: Request, fds: Vec<OwnedFd>) -> (Result<Vec<String>, String>, bool) {
        match request {
            Request::Ping => (Ok(Vec::new()), false),
            Request::ConsoleFeed => (self.console_feed(fds), false),
            Request::Pause => (self.pause().map(|()| Vec::new()), false),
            Request::Resume => (self.resume().map(|()| Vec::new()), false),
            Request::Snapshot { dir, then } => {
                let result = self.snapshot(&dir);
                match (then, &result) {
                    (AfterSnapshot::Exit, Ok(_)) => (result, true),
                    (AfterSnapshot::Resume, Ok(_)) => match self.resume() {
                        Ok(()) => (result, false),
                        Err(e) => (Err(format!("saved, but cannot resume: {e}")), false),
                    },
                    (_, Err(_)) => (result, false),
                }
            }
        }
    }

    fn answer(&mut self, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let (result, exit) = match read_request(&stream) {
            Ok((line, _)) if line.is_empty() => return,
            Ok((line, fds)) => match std::str::from_utf8(&line).map(Request::parse) {
                Ok(Ok(request)) => self.serve(request, fds),
                Ok(Err(e)) => (Err(e.to_string()), false),
                Err(_) => (Err("cannot read the request: not UTF-8".into()), false),
            },
            Err(e) => (Err(format!("cannot read the request: {e}")), false),
        };
        let _ = (&stream).write_all(reply_line(result).as_bytes());
        if exit {
            // The snapshot is the VM now: end without running it any further.
            let _ = lock(&self.legacy.serial).flush();
            std::process::exit(i32::from(ExitStatus::Saved.code()));
        }
    }
}

/// Reads one request line (at most [`MAX_LINE`] bytes, up to its newline) and the
/// descriptor that may ride with it (one: more are closed by the kernel).
fn read_request(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 512];
    while !line.contains(&b'\n') && line.len() < MAX_LINE {
        let mut raw = [-1 as RawFd; 1];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points into `buf`, which may hold any bytes and outlives the
        // call.
        let (n, count) =
            unsafe { stream.recv_with_fds(&mut iov, &mut raw) }.map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: the first `count` entries are descriptors the kernel just gave us.
        fds.extend(raw[..count].iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    if let Some(end) = line.iter().position(|&b| b == b'\n') {
        line.truncate(end + 1);
    }
    line.truncate(MAX_LINE);
    Ok((line, fds))
}

/// Serves `listener` on the event loop.
pub fn register(events: &mut EventLoop, listener: UnixListener, mut controller: Controller) -> io::Result<()> {
    let fd = listener.as_raw_fd();
    events.add(fd, EventSet::IN, move |_| {
        loop {
            match listener.accept() {
                Ok((stream, _)) => controller.answer(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: the request is lost, the VM runs on.
                    crate::log_warn!("control socket: accept failed: {e}");
                    break;
                }
            }
        }
        Next::Keep
    })
}

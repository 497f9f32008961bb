//! The console as a unix socket, for a supervisor that must be able to go away and come
//! back (a daemon restart must not lose or block the guest's output). The VMM keeps the
//! last [`RING_BYTES`] of output; a client that connects first receives
//! `"<n> <total>\n"` followed by those `n` replayed bytes, then the live output. One client at a
//! time: a new connection replaces the old one. Writes never block the vCPU: bytes a
//! client is too slow to take are dropped for that client (the ring still has them).
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;

use crate::event_loop::{EventLoop, Next};

pub use contract::console::RING_BYTES;

#[derive(Default)]
struct Hub {
    ring: VecDeque<u8>,
    /// Bytes the guest has written in all.
    written: u64,
    client: Option<UnixStream>,
}

impl Hub {
    fn push(&mut self, data: &[u8]) {
        self.written += data.len() as u64;
        let data = &data[data.len().saturating_sub(RING_BYTES)..];
        let overflow = (self.ring.len() + data.len()).saturating_sub(RING_BYTES);
        self.ring.drain(..overflow);
        self.ring.extend(data);
    }

    /// Sends without blocking and without SIGPIPE; a gone client is dropped.
    fn send(&mut self, data: &[u8]) {
        let Some(client) = &self.client else { return };
        let mut rest = data;
        while !rest.is_empty() {
            match send_nonblocking(client, rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.client = None;
                    return;
                }
            }
        }
    }
}

fn send_nonblocking(s: &UnixStream, data: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the pointer and length describe `data`, valid for the call.
    let n = unsafe {
        libc::send(
            s.as_raw_fd(),
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

/// The console sink handed to the UART.
#[derive(Clone)]
pub struct ConsoleSocket {
    hub: Arc<Mutex<Hub>>,
}

impl ConsoleSocket {
    /// Binds `path` (replacing a stale socket file); clients are accepted on the VMM's
    /// event loop.
    pub fn bind(path: &Path, events: &mut EventLoop) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let hub = Arc::new(Mutex::new(Hub::default()));
        let accept_hub = hub.clone();
        events.add(listener.as_raw_fd(), EventSet::IN, move |_| {
            while let Ok((stream, _)) = listener.accept() {
                // Sends are MSG_DONTWAIT either way; a blocking socket keeps that simple.
                let _ = stream.set_nonblocking(false);
                let mut hub = accept_hub.lock().unwrap_or_else(|p| p.into_inner());
                let replay: Vec<u8> = hub.ring.iter().copied().collect();
                hub.client = Some(stream);
                let header = contract::console::replay_header(replay.len(), hub.written);
                hub.send(header.as_bytes());
                hub.send(&replay);
            }
            Next::Keep
        })?;
        Ok(ConsoleSocket { hub })
    }
}

impl Write for ConsoleSocket {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        hub.push(data);
        hub.send(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};

    fn connect(path: &Path) -> (contract::console::Replay, BufReader<UnixStream>) {
        let mut r = BufReader::new(UnixStream::connect(path).unwrap());
        let mut header = String::new();
        r.read_line(&mut header).unwrap();
        (contract::console::parse_replay_header(header.as_bytes()).unwrap(), r)
    }

    #[test]
    fn a_late_client_gets_the_replay_then_live_output() {
        let dir = std::env::temp_dir().join(format!("uk-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.sock");
        let mut events = EventLoop::new().unwrap();
        let mut console = ConsoleSocket::bind(&path, &mut events).unwrap();
        events.spawn().unwrap();
        console.write_all(b"before\n").unwrap(); // nobody listening: kept in the ring
        let (n, mut r) = connect(&path);
        assert_eq!((n.len, n.total), (7, Some(7)));
        // The event loop installs the client before sending the header, so this is live.
        console.write_all(b"after\n").unwrap();
        let mut got = vec![0u8; 13];
        r.read_exact(&mut got).unwrap();
        assert_eq!(got, b"before\nafter\n");
        // A second client replaces the first and gets everything so far.
        let (n, _r2) = connect(&path);
        assert_eq!((n.len, n.total), (13, Some(13)));
        drop(r);
        console.write_all(b"x").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ring_keeps_only_the_newest_bytes() {
        let mut hub = Hub::default();
        hub.push(&vec![b'a'; RING_BYTES]);
        hub.push(b"bc");
        assert_eq!(hub.ring.len(), RING_BYTES);
        assert_eq!(hub.ring.back(), Some(&b'c'));
        hub.push(&vec![b'z'; RING_BYTES + 10]);
        assert!(hub.ring.iter().all(|b| *b == b'z'));
        assert_eq!(hub.ring.len(), RING_BYTES);
    }

    #[test]
    fn a_gone_client_does_not_hurt_the_writer() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut hub = Hub {
            client: Some(a),
            ..Hub::default()
        };
        drop(b);
        hub.send(b"lost");
        assert!(hub.client.is_none());
    }
}

//! The console as a unix socket, for a supervisor that must be able to go away and come
//! back (a daemon restart must not lose or block the guest's output). The VMM keeps the
//! last [`RING_BYTES`] of output; a client that connects first receives
//! `"<n> <total>\n"` followed by those `n` replayed bytes, then the live output. One client at a
//! time: a new connection replaces the old one. Writes never block the vCPU: bytes a
//! client is too slow to take are dropped for that client (the ring still has them).
//!
//! Next to the socket, the output can go to a console feed (`contract::console`): the
//! daemon's datagram socket, which gets each line as the guest ends it. A feed the
//! receiver cannot take right now keeps its bytes for the next try (up to the ring's
//! size; past that the oldest go, and the offsets show the receiver the gap).
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;

use crate::event_loop::{EventLoop, Next};
use crate::sockopt::send_nonblocking;

pub use contract::console::RING_BYTES;
use contract::console::{FeedFrame, FeedKind, FEED_CHUNK};

#[derive(Default)]
struct Hub {
    ring: VecDeque<u8>,
    /// Bytes the guest has written in all.
    written: u64,
    client: Option<UnixStream>,
    feed: Option<Feed>,
    /// The VMM's start, while the guest's first line is still to be traced.
    trace_first_line: Option<std::time::Instant>,
}

/// Output on its way to the console feed.
struct Feed {
    socket: UnixDatagram,
    /// Bytes not sent yet: the current line, or what the receiver could not take.
    pending: Vec<u8>,
    /// Where `pending` starts in all the guest has written.
    pending_at: u64,
}

impl Feed {
    /// Sends what is pending as one live frame. `false` when the receiver is gone (the
    /// daemon ended: a new one hands over a new feed).
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let header = FeedFrame::header(FeedKind::Live, self.pending_at);
        match send_frame(&self.socket, &header, &self.pending) {
            Ok(()) => {
                self.pending_at += self.pending.len() as u64;
                self.pending.clear();
                true
            }
            // The receiver's queue is full: try again with the next output.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(_) => false,
        }
    }

    fn take(&mut self, data: &[u8], written: u64) -> bool {
        if self.pending.is_empty() {
            self.pending_at = written - data.len() as u64;
        }
        self.pending.extend_from_slice(data);
        // Bounded: a receiver that takes nothing for long loses the oldest bytes, not
        // the VMM's memory.
        let over = self.pending.len().saturating_sub(RING_BYTES);
        if over > 0 {
            self.pending.drain(..over);
            self.pending_at += over as u64;
        }
        if data.contains(&b'\n') || self.pending.len() >= FEED_CHUNK {
            return self.flush();
        }
        true
    }
}

/// One datagram of header and bytes, from one buffer (see `sockopt::send_nonblocking`).
fn send_frame(socket: &UnixDatagram, header: &[u8], bytes: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(header.len() + bytes.len());
    frame.extend_from_slice(header);
    frame.extend_from_slice(bytes);
    send_nonblocking(socket.as_fd(), &frame).map(drop)
}

/// Takes `fd` as a feed socket: a unix datagram socket, connected (sends carry no
/// address). Anything else is refused.
pub fn feed_socket(fd: OwnedFd) -> io::Result<UnixDatagram> {
    let refused = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the console feed must be a connected unix datagram socket",
        )
    };
    if !crate::sockopt::is_unix(fd.as_fd(), libc::SOCK_DGRAM)? {
        return Err(refused());
    }
    let socket = UnixDatagram::from(fd);
    socket.peer_addr().map_err(|_| refused())?;
    Ok(socket)
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
            match send_nonblocking(client.as_fd(), rest) {
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

impl ConsoleSocket {
    /// Sends the output to `socket` from now on (see [`feed_socket`]), first what the ring
    /// holds as a replay frame. A feed given before the guest runs has nothing to replay.
    pub fn set_feed(&self, socket: UnixDatagram) -> io::Result<()> {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if !hub.ring.is_empty() {
            let replay: Vec<u8> = hub.ring.iter().copied().collect();
            let header = FeedFrame::header(FeedKind::Replay, hub.written - replay.len() as u64);
            send_frame(&socket, &header, &replay)?;
        }
        hub.feed = Some(Feed {
            socket,
            pending: Vec::new(),
            pending_at: hub.written,
        });
        Ok(())
    }
}

impl ConsoleSocket {
    /// Tells the feed's receiver that the event loop (whose timer calls this) runs. A
    /// full receiver misses this one; it asks over the control socket when it hears none.
    pub fn heartbeat(&self) {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        let written = hub.written;
        if let Some(feed) = &hub.feed {
            let header = FeedFrame::header(FeedKind::Heartbeat, written);
            match send_frame(&feed.socket, &header, &[]) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(_) => hub.feed = None,
            }
        }
    }
}

impl ConsoleSocket {
    /// Prints `contract::exit::FIRST_LINE_PREFIX` when the guest ends its first line.
    pub fn trace_first_line(&self, start: std::time::Instant) {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if hub.written == 0 {
            hub.trace_first_line = Some(start);
        }
    }
}

impl Write for ConsoleSocket {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(start) = hub.trace_first_line.filter(|_| data.contains(&b'\n')) {
            hub.trace_first_line = None;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            eprintln!("{}{ms:.2} ms", contract::exit::FIRST_LINE_PREFIX);
        }
        hub.push(data);
        hub.send(data);
        let written = hub.written;
        if let Some(feed) = &mut hub.feed {
            if !feed.take(data, written) {
                hub.feed = None;
            }
        }
        Ok(data.len())
    }

    /// Sends a line the guest has not ended yet to the feed (the VMM is about to end).
    fn flush(&mut self) -> io::Result<()> {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = &mut hub.feed {
            feed.flush();
        }
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

    /// The frames waiting on the receiving end of a feed.
    fn frames(rx: &UnixDatagram) -> Vec<(FeedKind, u64, Vec<u8>)> {
        rx.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; contract::console::FEED_MAX];
        let mut out = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            let f = FeedFrame::parse(&buf[..n]).unwrap();
            out.push((f.kind, f.offset, f.bytes.to_vec()));
        }
        out
    }

    fn console_without_socket() -> ConsoleSocket {
        ConsoleSocket {
            hub: Arc::new(Mutex::new(Hub::default())),
        }
    }

    #[test]
    fn the_feed_gets_whole_lines_with_their_offsets_and_a_late_feed_a_replay() {
        let mut console = console_without_socket();
        // Written before any feed: in the ring only.
        console.write_all(b"early\n").unwrap();
        let (tx, rx) = UnixDatagram::pair().unwrap();
        console.set_feed(tx).unwrap();
        assert_eq!(frames(&rx), vec![(FeedKind::Replay, 0, b"early\n".to_vec())]);
        // Byte by byte, as the UART writes: nothing until the line ends.
        for b in b"one\ntw" {
            console.write_all(&[*b]).unwrap();
        }
        assert_eq!(frames(&rx), vec![(FeedKind::Live, 6, b"one\n".to_vec())]);
        // A heartbeat says how much was written, pending bytes included, and sends none.
        console.heartbeat();
        assert_eq!(frames(&rx), vec![(FeedKind::Heartbeat, 12, Vec::new())]);
        // The end of the VMM sends the unended line.
        console.flush().unwrap();
        assert_eq!(frames(&rx), vec![(FeedKind::Live, 10, b"tw".to_vec())]);
        // A long line goes in chunks.
        console.write_all(&vec![b'x'; FEED_CHUNK]).unwrap();
        assert_eq!(frames(&rx).len(), 1);
    }

    #[test]
    fn a_full_receiver_delays_lines_and_a_gone_one_drops_the_feed() {
        let mut console = console_without_socket();
        let (tx, rx) = UnixDatagram::pair().unwrap();
        // Nobody reads: the sender's buffer fills after ~200 frames of a kilobyte.
        console.set_feed(tx).unwrap();
        let mut sent = 0u64;
        let line = vec![b'y'; 1000];
        let mut lines = 0;
        while lines < 1000 {
            let mut l = line.clone();
            l.push(b'\n');
            console.write_all(&l).unwrap();
            sent += l.len() as u64;
            lines += 1;
        }
        // Read everything that arrived; then one more line flushes what waited.
        let got = frames(&rx);
        console.write_all(b"last\n").unwrap();
        let more = frames(&rx);
        assert!(got.len() < lines, "the receiver's buffer filled: {} frames", got.len());
        assert!(more[0].2.len() > 5, "what waited went with the next line");
        let all: Vec<_> = got.iter().chain(more.iter()).collect();
        // Offsets run on without overlap; a gap is only where the pending bound dropped.
        let mut next = all[0].1;
        for (_, offset, bytes) in &all {
            assert!(*offset >= next, "no byte twice");
            next = offset + bytes.len() as u64;
        }
        assert_eq!(next, sent + 5, "the last frame ends at the last byte written");
        assert!(all.last().unwrap().2.ends_with(b"last\n"));
        // The receiver goes: the feed is dropped, the guest's writes go on.
        drop(rx);
        console.write_all(b"after\n").unwrap();
        assert!(console.hub.lock().unwrap().feed.is_none());
    }

    #[test]
    fn only_a_connected_datagram_socket_is_a_feed() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(feed_socket(OwnedFd::from(a)).is_err(), "a stream socket");
        let unconnected = UnixDatagram::unbound().unwrap();
        assert!(feed_socket(OwnedFd::from(unconnected)).is_err(), "not connected");
        let (c, _d) = UnixDatagram::pair().unwrap();
        assert!(feed_socket(OwnedFd::from(c)).is_ok());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(feed_socket(OwnedFd::from(file)).is_err(), "not a socket");
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

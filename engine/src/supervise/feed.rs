//! The console feeds of every VM, read on one socket (frames: `contract::console`).
//!
//! For each VM the daemon makes a datagram socket connected to its hub, hands it to the
//! VMM (`--console-feed-fd`, or the control request `console-feed` for a VMM it adopts)
//! and closes its own copy: the daemon holds no descriptor per VM for consoles, where a
//! connection per console was one of the three per VM that capped a host at ~6,600 VMs
//! under a 20,000-fd limit. Frames are told apart by the sender's address: the kernel
//! gives each VM's socket a unique one (autobind) before the VMM gets it, and the VMM
//! cannot change it (a bound socket stays bound; its seccomp filters allow no bind).
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use contract::console::{FeedFrame, FeedKind, FEED_MAX};
use tokio::sync::oneshot;

use super::console::{ConsoleRing, LineSink, MAX_LINE};
use super::inbox::Inbox;

/// The daemon's end of every console feed.
#[derive(Clone)]
pub struct ConsoleHub {
    shared: Arc<Shared>,
}

struct Shared {
    /// The same socket (a dup), read without asking tokio: the end of a VM must read
    /// what is queued now, whether or not the reactor has seen it yet.
    reader: UnixDatagram,
    path: PathBuf,
    routes: Mutex<Routes>,
    /// Wakes the reading task from a pause between reads: a VM attached.
    attached: tokio::sync::Notify,
}

/// While no VM waits for its first line, the hub is read at most this often: heartbeats
/// (one per VMM every 16 s: 625 a second at 10,000 VMs) and running guests' lines then
/// cost the daemon a wakeup per batch, not per datagram (~50 us each on this nested host,
/// more than pinging every VMM cost). A VM's last lines are read at its end, unpaused.
const READ_BATCH: Duration = Duration::from_millis(100);

/// Frames read per syscall.
const READ_AT_ONCE: usize = 16;

struct Routes {
    by_sender: HashMap<Box<[u8]>, Route>,
    /// Up to [`READ_AT_ONCE`] frames at a time.
    inbox: Inbox,
    /// What heartbeat times count from.
    epoch: Instant,
    /// Routes whose first line someone waits for.
    awaiting: usize,
}

struct Route {
    lines: FeedLines,
    /// When its last heartbeat came: milliseconds after the hub's epoch, plus one (0:
    /// none yet). Shared with its [`Attachment`], read without the routes' lock.
    heard: Arc<AtomicU64>,
}

/// One VM's console as the hub reads it: frames (which its VMM, and so a guest that took
/// it over, controls) into lines.
pub struct FeedLines {
    sink: LineSink,
    /// Replayed output (from before the feed) that starts before this offset is in the
    /// journal already (0: none of it; `NOT_LOGGED`: take all of it as logged).
    log_from: u64,
    /// The offset of the next byte expected; `None` before the first frame.
    next: Option<u64>,
    /// The line read so far, and where it starts.
    partial: Vec<u8>,
    line_start: u64,
    /// The line so far is (partly) a replay.
    partial_is_replay: bool,
    /// Where the first line not ended yet starts: output before it has reached the ring
    /// (and the journal, or was in it already). `UNKNOWN` before the first frame of an
    /// adopted VM. Shared with its [`Attachment`].
    read_to: Arc<AtomicU64>,
}

/// [`FeedLines`]'s `log_from` when no earlier daemon said how far its journal got.
pub const NOT_LOGGED: u64 = u64::MAX;
const UNKNOWN: u64 = u64::MAX;

impl FeedLines {
    /// `log_from`: see the field (0 for a VM the daemon starts itself).
    pub fn new(service: &str, ring: ConsoleRing, log_from: u64, first_line: Option<oneshot::Sender<()>>) -> Self {
        FeedLines {
            sink: LineSink::new(service.to_string(), ring, first_line),
            log_from,
            next: None,
            partial: Vec::new(),
            line_start: 0,
            partial_is_replay: false,
            read_to: Arc::new(AtomicU64::new(if log_from == NOT_LOGGED { UNKNOWN } else { log_from })),
        }
    }

    pub fn take(&mut self, frame: FeedFrame<'_>) {
        if frame.kind == FeedKind::Heartbeat {
            // Says nothing of the output (its offset may count bytes still on their way).
            return;
        }
        let end = frame.offset + frame.bytes.len() as u64;
        let mut bytes = frame.bytes;
        match self.next {
            // What the hub had already (a replay overlapping what came live).
            Some(next) if end <= next => return,
            Some(next) if frame.offset < next => bytes = &bytes[(next - frame.offset) as usize..],
            Some(next) if frame.offset > next => {
                tracing::warn!(
                    UNIKERNEL = %self.sink.service(),
                    "{} bytes of console output were lost on the way to the daemon (it did not read them in time); the VMM's console socket has the last 64 KiB",
                    frame.offset - next
                );
                self.end_line();
            }
            _ => {}
        }
        self.next = Some(end);
        let replay = frame.kind == FeedKind::Replay;
        let mut at = end - bytes.len() as u64;
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let mut piece = piece;
            while !piece.is_empty() {
                if self.partial.is_empty() {
                    self.line_start = at;
                }
                let room = MAX_LINE - self.partial.len();
                let (now, rest) = piece.split_at(piece.len().min(room));
                self.partial.extend_from_slice(now);
                self.partial_is_replay |= replay;
                at += now.len() as u64;
                piece = rest;
                if self.partial.ends_with(b"\n") || self.partial.len() == MAX_LINE {
                    self.end_line();
                }
            }
        }
        self.note_read_to();
    }

    /// Whether someone waits for its first line (a start's readiness).
    pub fn awaits_first_line(&self) -> bool {
        self.sink.awaits_first_line()
    }

    /// Ends the line read so far (a newline came, it is as long as a line may be, or the
    /// VM ended).
    pub fn end_line(&mut self) {
        if !self.partial.is_empty() {
            // A replayed line an earlier daemon logged goes to the ring alone.
            let logged_before = self.partial_is_replay && self.line_start < self.log_from;
            self.sink.line(&self.partial, !logged_before);
        }
        self.partial.clear();
        self.partial_is_replay = false;
        self.note_read_to();
    }

    fn note_read_to(&self) {
        if let Some(next) = self.next {
            let to = next - self.partial.len() as u64;
            self.read_to.store(to, Ordering::Relaxed);
        }
    }
}

fn lock(m: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Routes {
    /// Reads every frame waiting on `socket` into its route.
    fn drain(&mut self, socket: &UnixDatagram) -> io::Result<()> {
        use std::os::fd::AsFd;
        let Routes {
            by_sender,
            inbox,
            epoch,
            awaiting,
        } = self;
        loop {
            let n = match inbox.receive(socket.as_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for (name, bytes) in inbox.datagrams() {
                let (Some(name), Some(frame)) = (name, FeedFrame::parse(bytes)) else {
                    continue;
                };
                // A frame of a VM whose end was already read has nowhere to go.
                let Some(route) = by_sender.get_mut(name) else {
                    continue;
                };
                if frame.kind == FeedKind::Heartbeat {
                    let at = epoch.elapsed().as_millis() as u64 + 1;
                    route.heard.store(at, Ordering::Relaxed);
                } else {
                    let awaited = route.lines.awaits_first_line();
                    route.lines.take(frame);
                    if awaited && !route.lines.awaits_first_line() {
                        *awaiting -= 1;
                    }
                }
            }
            // Fewer than it could take: the queue was empty (what comes later is a new
            // edge for the reactor, or the next batch's).
            if n < inbox.slots() {
                return Ok(());
            }
        }
    }

    fn remove(&mut self, sender: &[u8]) -> Option<Route> {
        let route = self.by_sender.remove(sender)?;
        if route.lines.awaits_first_line() {
            self.awaiting -= 1;
        }
        Some(route)
    }
}

/// A VM's place on the hub; [`Attachment::finish`] reads its last lines.
pub struct Attachment {
    shared: Arc<Shared>,
    sender: Box<[u8]>,
    watch: FeedWatch,
}

impl ConsoleHub {
    /// Binds the hub at `path` (replacing a stale socket, owner-only) and reads it on a
    /// task of the current runtime. The queue of frames it can hold is the netns's
    /// `net.unix.max_dgram_qlen` when it is made (the daemon raises that first). A socket
    /// someone still reads is not replaced: this runs before the daemon locks its state
    /// directory, and a second daemon must not take the first one's consoles.
    pub fn bind(path: &Path) -> io::Result<ConsoleHub> {
        use std::os::unix::fs::PermissionsExt;
        if UnixDatagram::unbound().and_then(|probe| probe.connect(path)).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process reads console feeds here (another unikerneld on this state directory?)",
            ));
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let socket = UnixDatagram::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        socket.set_nonblocking(true)?;
        let epoch = Instant::now();
        let shared = Arc::new(Shared {
            reader: socket.try_clone()?,
            path: path.to_path_buf(),
            routes: Mutex::new(Routes {
                by_sender: HashMap::new(),
                inbox: Inbox::new(READ_AT_ONCE, FEED_MAX),
                epoch,
                awaiting: 0,
            }),
            attached: tokio::sync::Notify::new(),
        });
        tokio::spawn(read(shared.clone(), socket));
        Ok(ConsoleHub { shared })
    }

    /// Reads what has arrived now, whatever the batch (the daemon is about to end).
    pub fn read_now(&self) {
        if let Err(e) = lock(&self.shared.routes).drain(&self.shared.reader) {
            tracing::warn!("console hub: {e}");
        }
    }

    /// A new feed for `service`: the socket to hand to its VMM (the daemon keeps no copy)
    /// and its place on the hub. `log_from`: replayed output (written before the feed)
    /// from this offset on is new to the journal (0 for a VM this daemon starts,
    /// [`NOT_LOGGED`] when no earlier daemon said). `first_line` fires on its first line.
    pub fn attach(
        &self,
        service: &str,
        ring: ConsoleRing,
        log_from: u64,
        first_line: Option<oneshot::Sender<()>>,
    ) -> io::Result<(OwnedFd, Attachment)> {
        let socket = UnixDatagram::unbound()?;
        autobind(&socket)?;
        let address = socket.local_addr()?;
        let sender: Box<[u8]> = std::os::linux::net::SocketAddrExt::as_abstract_name(&address)
            .ok_or_else(|| io::Error::other("autobind gave no abstract address"))?
            .into();
        socket.connect(&self.shared.path)?;
        let heard = Arc::new(AtomicU64::new(0));
        let lines = FeedLines::new(service, ring, log_from, first_line);
        let read_to = lines.read_to.clone();
        let route = Route {
            lines,
            heard: heard.clone(),
        };
        let mut routes = lock(&self.shared.routes);
        routes.awaiting += usize::from(route.lines.awaits_first_line());
        if let Some(old) = routes.by_sender.insert(sender.clone(), route) {
            // The kernel gave a gone socket's address again, and the route outlived it.
            routes.awaiting -= usize::from(old.lines.awaits_first_line());
        }
        let epoch = routes.epoch;
        drop(routes);
        self.shared.attached.notify_one();
        Ok((
            socket.into(),
            Attachment {
                shared: self.shared.clone(),
                sender,
                watch: FeedWatch { heard, read_to, epoch },
            },
        ))
    }
}

/// Binds `socket` to an abstract address the kernel picks, unique on the host.
fn autobind(socket: &UnixDatagram) -> io::Result<()> {
    let addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    // SAFETY: an address of just the family asks for autobind; `addr` outlives the call.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the hub: in batches at most every [`READ_BATCH`] (on the dup `reader`, the
/// socket out of the reactor), and while a first line is awaited at once, with `socket`
/// in the reactor. Epoll reports every datagram as a new edge, so a socket left
/// registered wakes the daemon per datagram whether or not anyone reads it.
async fn read(shared: Arc<Shared>, socket: UnixDatagram) {
    use tokio::io::unix::AsyncFd;
    let mut socket = socket;
    loop {
        let awaiting = {
            let mut routes = lock(&shared.routes);
            if let Err(e) = routes.drain(&shared.reader) {
                tracing::warn!("console hub: {e}");
            }
            routes.awaiting
        };
        if awaiting == 0 {
            tokio::select! {
                () = tokio::time::sleep(READ_BATCH) => {}
                () = shared.attached.notified() => {}
            }
            continue;
        }
        // SAFETY: a UnixDatagram owns its fd, open and the same until it is dropped, which
        // is after `into_inner` (or with the AsyncFd).
        let registered = unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) };
        let watched = match registered {
            Ok(w) => w,
            Err(e) => {
                let (inner, e) = e.into_parts();
                tracing::warn!("console hub: cannot watch it: {e}");
                socket = inner;
                tokio::time::sleep(READ_BATCH).await;
                continue;
            }
        };
        loop {
            let mut ready = match watched.readable().await {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!("console hub: {e}; consoles are no longer read");
                    return;
                }
            };
            let drained = lock(&shared.routes).drain(&shared.reader);
            // Read until the queue was found empty: anything newer is a new edge.
            ready.clear_ready();
            if let Err(e) = drained {
                tracing::warn!("console hub: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if lock(&shared.routes).awaiting == 0 {
                break;
            }
        }
        socket = watched.into_inner();
    }
}

impl Attachment {
    /// The VMM has ended: reads what it sent (every frame is queued before its end) and
    /// the line it did not end, and leaves the hub.
    pub fn finish(self) {
        let mut routes = lock(&self.shared.routes);
        let _ = routes.drain(&self.shared.reader);
        if let Some(mut route) = routes.remove(&self.sender) {
            route.lines.end_line();
        }
    }

    /// What the hub hears of its VMM (kept after [`Attachment::finish`]).
    pub fn watch(&self) -> FeedWatch {
        self.watch.clone()
    }
}

/// When a VMM's last heartbeat reached the hub, and how far its console was read.
#[derive(Clone)]
pub struct FeedWatch {
    heard: Arc<AtomicU64>,
    read_to: Arc<AtomicU64>,
    epoch: Instant,
}

impl FeedWatch {
    /// Where the first console line not read to its end starts (the next daemon logs
    /// replayed output from there); `None` if not known.
    pub fn read_to(&self) -> Option<u64> {
        Some(self.read_to.load(Ordering::Relaxed)).filter(|&at| at != UNKNOWN)
    }

    /// Whether the VMM sent a heartbeat in the last `window` (its event loop runs).
    pub fn heard_within(&self, window: Duration) -> bool {
        match self.heard.load(Ordering::Relaxed) {
            0 => false,
            at => (self.epoch.elapsed().as_millis() as u64 + 1).saturating_sub(at) <= window.as_millis() as u64,
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        lock(&self.shared.routes).remove(&self.sender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::console::FeedFrame;

    fn send(fd: &UnixDatagram, kind: FeedKind, offset: u64, bytes: &[u8]) {
        let mut d = FeedFrame::header(kind, offset).to_vec();
        d.extend_from_slice(bytes);
        fd.send(&d).unwrap();
    }

    fn hub(tag: &str) -> (ConsoleHub, PathBuf) {
        let dir = std::env::temp_dir().join(format!("uk-hub-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        (ConsoleHub::bind(&dir.join("feed.sock")).unwrap(), dir)
    }

    #[tokio::test]
    async fn lines_reach_their_own_service_and_the_end_reads_the_last_one() {
        let (hub, dir) = hub("route");
        let (a_ring, b_ring) = (ConsoleRing::default(), ConsoleRing::default());
        let (first_tx, first_rx) = oneshot::channel();
        let (a_fd, a) = hub.attach("a", a_ring.clone(), 0, Some(first_tx)).unwrap();
        let (b_fd, b) = hub.attach("b", b_ring.clone(), 0, None).unwrap();
        let (a_fd, b_fd) = (UnixDatagram::from(a_fd), UnixDatagram::from(b_fd));
        // a's first line is awaited: the hub reads without pausing until it comes.
        assert_eq!(lock(&hub.shared.routes).awaiting, 1);
        send(&a_fd, FeedKind::Live, 0, b"a one\nst");
        send(&b_fd, FeedKind::Live, 0, b"b one\n");
        send(&a_fd, FeedKind::Live, 8, b"ill a\nno end");
        tokio::time::timeout(std::time::Duration::from_secs(2), first_rx)
            .await
            .expect("the first line is signalled")
            .unwrap();
        assert_eq!(lock(&hub.shared.routes).awaiting, 0);
        // One still awaited when its VM ends is not awaited any more.
        let (_c_fd, c) = hub
            .attach("c", ConsoleRing::default(), 0, Some(oneshot::channel().0))
            .unwrap();
        assert_eq!(lock(&hub.shared.routes).awaiting, 1);
        c.finish();
        assert_eq!(lock(&hub.shared.routes).awaiting, 0);
        drop(a_fd);
        a.finish();
        assert_eq!(a_ring.tail(10), vec!["a one", "still a", "no end"]);
        b.finish();
        assert_eq!(b_ring.tail(10), vec!["b one"]);
        assert!(lock(&hub.shared.routes).by_sender.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_heartbeat_is_heard_and_is_not_output() {
        let (hub, dir) = hub("beat");
        let ring = ConsoleRing::default();
        let (fd, at) = hub.attach("a", ring.clone(), 0, None).unwrap();
        let fd = UnixDatagram::from(fd);
        let beats = at.watch();
        assert!(!beats.heard_within(Duration::from_secs(60)), "nothing heard yet");
        send(&fd, FeedKind::Live, 0, b"par");
        // Counts the bytes of the unended line the VMM still holds: no gap, no line end.
        send(&fd, FeedKind::Heartbeat, 7, b"");
        send(&fd, FeedKind::Live, 3, b"tial\n");
        for _ in 0..200 {
            if beats.heard_within(Duration::from_secs(60)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(beats.heard_within(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!beats.heard_within(Duration::from_millis(10)), "an old heartbeat");
        at.finish();
        assert_eq!(ring.tail(10), vec!["partial"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What the journal (tracing) got while `f` ran.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::new(Mutex::new(Vec::new())));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buf.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_replay_is_logged_from_where_the_last_daemon_read_to() {
        let frame = |kind, offset, bytes: &'static [u8]| FeedFrame { kind, offset, bytes };
        let ring = ConsoleRing::default();
        // The last daemon read to byte 8 ("three" starts there), then went away.
        let mut lines = FeedLines::new("a", ring.clone(), 8, None);
        assert_eq!(lines.read_to.load(Ordering::Relaxed), 8);
        let log = logged(|| {
            lines.take(frame(FeedKind::Replay, 0, b"one\ntwo\nthree\nfo"));
            lines.take(frame(FeedKind::Live, 16, b"ur\n"));
        });
        assert_eq!(ring.tail(10), ["one", "two", "three", "four"]);
        assert!(!log.contains("one") && !log.contains("two"), "logged twice: {log}");
        assert!(log.contains("three") && log.contains("four"), "{log}");
        assert_eq!(lines.read_to.load(Ordering::Relaxed), 19);
        // Without a word from the last daemon, a replay is taken as logged.
        let mut lines = FeedLines::new("b", ConsoleRing::default(), NOT_LOGGED, None);
        assert_eq!(lines.read_to.load(Ordering::Relaxed), UNKNOWN);
        let log = logged(|| lines.take(frame(FeedKind::Replay, 0, b"old\npart")));
        assert!(!log.contains("old"), "{log}");
        assert_eq!(
            lines.read_to.load(Ordering::Relaxed),
            4,
            "the unended line is not read yet"
        );
    }

    #[tokio::test]
    async fn a_replay_fills_the_ring_and_overlaps_and_gaps_are_sorted_out() {
        let (hub, dir) = hub("replay");
        let ring = ConsoleRing::default();
        let (fd, at) = hub.attach("a", ring.clone(), NOT_LOGGED, None).unwrap();
        let fd = UnixDatagram::from(fd);
        // An adopted VMM: its ring (from byte 100) as a replay, then live output, one
        // frame of which repeats what the replay had.
        send(&fd, FeedKind::Replay, 100, b"old\nnew");
        send(&fd, FeedKind::Live, 104, b"new");
        send(&fd, FeedKind::Live, 107, b" line\n");
        // 10 bytes lost on the way (the queue was full), then more.
        send(&fd, FeedKind::Live, 123, b"after\n");
        // Past a line's bound: split.
        let long = vec![b'x'; MAX_LINE + 3];
        send(&fd, FeedKind::Live, 129, &long);
        at.finish();
        let lines = ring.tail(10);
        assert_eq!(&lines[..3], ["old", "new line", "after"]);
        assert_eq!((lines[3].len(), lines[4].as_str()), (MAX_LINE, "xxx"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_hub_in_use_is_not_replaced_and_a_stale_one_is() {
        let (hub, dir) = hub("in-use");
        let path = dir.join("feed.sock");
        let err = ConsoleHub::bind(&path).err().expect("refused while the first reads");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(hub);
        // Its reading task still holds the socket until the runtime ends: a stale file is
        // what a daemon that ended leaves.
        std::fs::remove_file(&path).unwrap();
        drop(UnixDatagram::bind(&path).unwrap());
        ConsoleHub::bind(&path).expect("a stale socket file is replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn frames_from_a_socket_the_hub_did_not_make_go_nowhere() {
        let (hub, dir) = hub("stranger");
        let ring = ConsoleRing::default();
        let (_fd, at) = hub.attach("a", ring.clone(), 0, None).unwrap();
        let stranger = UnixDatagram::unbound().unwrap();
        stranger.connect(dir.join("feed.sock")).unwrap();
        send(&stranger, FeedKind::Live, 0, b"forged\n");
        // Not a frame at all.
        stranger.send(b"x").unwrap();
        at.finish();
        assert!(ring.tail(10).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

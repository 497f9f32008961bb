//! A guest's console lines: each goes to the journal with the field UNIKERNEL=<name> and
//! into a bounded ring that status and `logs` show ([`LineSink`]). They come from the
//! console hub (`super::feed`); [`follow`] reads them from a VMM's console socket instead
//! (`--console unix:PATH`), for an adopted VMM older than the feed. After a daemon restart
//! the VMM replays its recent output; that replay fills the ring but is not logged again.
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The console reader's buffer (lines longer than it are read in several steps).
const READ_BUFFER: usize = 1024;
use tokio::net::UnixStream;

/// Lines kept per service.
pub const RING_LINES: usize = 200;
/// Longest line kept (a guest is untrusted: no unbounded line buffers).
pub(crate) const MAX_LINE: usize = 4096;
/// A replay header is two decimal numbers and a newline ("65536 18446744073709551615\n").
const MAX_HEADER: u64 = 64;

#[derive(Default, Debug)]
struct Ring {
    lines: VecDeque<String>,
    /// Lines ever pushed: the cursor of the line after the newest.
    pushed: u64,
}

/// The last [`RING_LINES`] console lines of one service. Kept across its VM's restarts
/// (a crash's last words stay readable), with a cursor so a follower (`logs -f`) can ask
/// for what is new.
#[derive(Clone, Default, Debug)]
pub struct ConsoleRing(Arc<Mutex<Ring>>);

impl ConsoleRing {
    pub fn push(&self, line: String) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.lines.len() == RING_LINES {
            ring.lines.pop_front();
        }
        ring.lines.push_back(line);
        ring.pushed += 1;
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.lines
            .iter()
            .skip(ring.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The lines from `cursor` on (those still kept), and the cursor to ask with next.
    pub fn since(&self, cursor: u64) -> (Vec<String>, u64) {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = ring.pushed - ring.lines.len() as u64;
        let skip = cursor.saturating_sub(oldest).min(ring.lines.len() as u64) as usize;
        (ring.lines.iter().skip(skip).cloned().collect(), ring.pushed)
    }
}

fn clean(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.trim_end_matches(['\n', '\r']).to_string()
}

/// When another client takes the console again within a second of the last time, the
/// follower waits this long before taking it back (no busy tug of war).
const RECONNECT_AFTER: Duration = Duration::from_millis(50);

/// Connects to the console socket: `attempts` tries 2 ms apart while it does not exist
/// yet; while the daemon is out of descriptors, for as long as that lasts (the follower
/// ends with its VM, which aborts it), saying so once.
async fn connect(service: &str, socket: &PathBuf, attempts: u32) -> Result<UnixStream, std::io::Error> {
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    let mut tries = 0;
    let mut said = false;
    while tries < attempts {
        match UnixStream::connect(socket).await {
            Ok(s) => {
                if said {
                    tracing::info!(UNIKERNEL = %service, "console socket connected again: the daemon has room again");
                }
                return Ok(s);
            }
            // Not a reason to give up on a console, only to wait until there is room.
            Err(e) if super::out_of_resources(&e) => {
                if !said {
                    said = true;
                    tracing::warn!(
                        UNIKERNEL = %service,
                        "cannot connect to the console socket {}: {e}; trying again until there is room",
                        socket.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                last = e;
                tries += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    Err(last)
}

/// Follows the console of `service` until the VMM goes away. `log_replay`: whether the
/// replayed part is new to the journal (a fresh VM) or was logged by an earlier daemon.
/// `first_line` fires when the guest's first line arrives (a readiness line). When another
/// client takes the socket (the VMM serves one at a time), the follower takes it back,
/// says so, and logs only what it had not seen (the header says where the replay starts).
/// A guest that prints without end is rate-limited in the journal ([`LineBudget`]); the
/// ring (and `unikernelctl logs`) keeps every line.
pub async fn follow(
    service: String,
    socket: PathBuf,
    ring: ConsoleRing,
    log_replay: bool,
    first_line: Option<tokio::sync::oneshot::Sender<()>>,
) {
    // The VMM binds the socket before the guest runs; give it a moment to appear.
    let mut stream = match connect(&service, &socket, 500).await {
        Ok(s) => s,
        Err(e) => {
            // The errno matters: EMFILE (the daemon is out of fds) is not ENOENT.
            tracing::warn!(UNIKERNEL = %service, "cannot connect to the console socket {}: {e}", socket.display());
            return;
        }
    };
    // Bytes of output consumed so far (logged or kept in the ring); None until the first
    // header says where we start.
    let mut seen: Option<u64> = None;
    let mut last_takeover: Option<tokio::time::Instant> = None;
    let mut sink = LineSink::new(service.clone(), ring, first_line);
    loop {
        // One per VM for its whole life: guests print lines, not megabytes, and the
        // default 8 KiB was half of all the daemon keeps per service.
        let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
        let mut header = Vec::new();
        // No header: the VMM is gone (or going). Bounded: a VMM a guest took over must
        // not make the daemon buffer a "header" without end.
        if matches!(
            (&mut reader).take(MAX_HEADER).read_until(b'\n', &mut header).await,
            Ok(0) | Err(_)
        ) {
            return;
        }
        let replay = contract::console::parse_replay_header(&header)
            .unwrap_or(contract::console::Replay { len: 0, total: None });
        let reconnected = seen.is_some();
        if reconnected {
            // Said only now that the VMM answered: a VMM that is dying closes our
            // connection before its listener, and a connect in between gets no header.
            tracing::warn!(
                UNIKERNEL = %service,
                "another client took the console socket; connected again (nothing was lost)"
            );
        }
        let skip = seen.map_or(0, |s| replay.already_seen(s));
        let mut consumed = replay.total.map_or(0, |t| t.saturating_sub(replay.len as u64));
        if skip > 0 {
            let mut sink = tokio::io::sink();
            if tokio::io::copy(&mut (&mut reader).take(skip as u64), &mut sink)
                .await
                .is_err()
            {
                return;
            }
            consumed += skip as u64;
        }
        // New to us: a fresh VM's replay (when asked), or what came while another
        // client held the socket.
        let log_rest_of_replay = log_replay || reconnected;
        let mut replay_left = replay.len - skip;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            consumed += n as u64;
            let replayed = replay_left > 0;
            replay_left = replay_left.saturating_sub(n);
            sink.line(&line, !replayed || log_rest_of_replay);
        }
        seen = Some(match replay.total {
            Some(_) => consumed,
            None => u64::MAX, // an older VMM: no way to tell what is new; log nothing twice
        });
        // The connection ended: the VMM is gone (connecting fails at once), or another
        // client replaced us. Take it back.
        if last_takeover.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
        let Ok(again) = connect(&service, &socket, 1).await else {
            return;
        };
        last_takeover = Some(tokio::time::Instant::now());
        stream = again;
    }
}

/// Where one service's console lines go: the journal (rate-limited by a [`LineBudget`]),
/// its ring, and the signal of its first line.
pub struct LineSink {
    service: String,
    ring: ConsoleRing,
    budget: LineBudget,
    first_line: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LineSink {
    pub fn new(service: String, ring: ConsoleRing, first_line: Option<tokio::sync::oneshot::Sender<()>>) -> Self {
        LineSink {
            service,
            ring,
            budget: LineBudget::new(),
            first_line,
        }
    }

    /// One line (its newline, if any, is dropped): into the ring, and to the journal when
    /// `log`.
    pub fn line(&mut self, bytes: &[u8], log: bool) {
        let text = clean(bytes);
        let service = &self.service;
        if log {
            match self.budget.take() {
                Verdict::Log { dropped: 0 } => {
                    tracing::info!(target: "console", UNIKERNEL = %service, "{text}")
                }
                Verdict::Log { dropped } => {
                    tracing::warn!(
                        UNIKERNEL = %service,
                        "{dropped} console lines were not logged (more than {} lines/s); `unikernelctl logs` has the last {}",
                        LineBudget::PER_SEC,
                        RING_LINES
                    );
                    tracing::info!(target: "console", UNIKERNEL = %service, "{text}");
                }
                Verdict::Drop => {}
            }
        }
        self.ring.push(text);
        if let Some(tx) = self.first_line.take() {
            let _ = tx.send(());
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Whether someone waits for its first line (a start's readiness).
    pub fn awaits_first_line(&self) -> bool {
        self.first_line.is_some()
    }
}

/// How many console lines per second of one service go to the journal: a steady rate
/// with a burst allowance (a token bucket), so a boot banner always gets through and a
/// guest printing 20,000 lines/s costs the daemon little.
pub struct LineBudget {
    tokens: f64,
    last: tokio::time::Instant,
    dropped: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `dropped` lines were not logged since the last one that was.
    Log {
        dropped: u64,
    },
    Drop,
}

impl LineBudget {
    pub const PER_SEC: u32 = 200;
    pub const BURST: u32 = 1000;

    pub fn new() -> Self {
        LineBudget {
            tokens: f64::from(Self::BURST),
            last: tokio::time::Instant::now(),
            dropped: 0,
        }
    }

    pub fn take(&mut self) -> Verdict {
        let now = tokio::time::Instant::now();
        let refill = (now - self.last).as_secs_f64() * f64::from(Self::PER_SEC);
        self.tokens = (self.tokens + refill).min(f64::from(Self::BURST));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Log {
                dropped: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            Verdict::Drop
        }
    }
}

impl Default for LineBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_cut_to_the_rate_and_the_dropped_lines_are_counted() {
        let mut b = LineBudget::new();
        let logged = (0..5000).filter(|_| b.take() != Verdict::Drop).count();
        assert_eq!(logged, LineBudget::BURST as usize, "the burst, then nothing");
        tokio::time::advance(Duration::from_millis(100)).await;
        // 100 ms at 200/s: 20 more, the first of which reports the 4,000 dropped.
        assert_eq!(b.take(), Verdict::Log { dropped: 4000 });
        let more = (0..100).filter(|_| b.take() != Verdict::Drop).count();
        assert_eq!(more, 19);
        // A quiet guest gets its whole burst back.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!((0..1000).filter(|_| b.take() != Verdict::Drop).count(), 1000);
    }

    #[test]
    fn the_ring_is_bounded_and_tails_in_order() {
        let r = ConsoleRing::default();
        for i in 0..RING_LINES + 5 {
            r.push(i.to_string());
        }
        assert_eq!(
            r.tail(2),
            vec![(RING_LINES + 3).to_string(), (RING_LINES + 4).to_string()]
        );
        assert_eq!(r.tail(10_000).len(), RING_LINES);
        assert_eq!(r.tail(10_000)[0], "5");
        let (lines, next) = r.since(0);
        assert_eq!((lines.len(), next), (RING_LINES, RING_LINES as u64 + 5));
        r.push("new".into());
        assert_eq!(r.since(next), (vec!["new".to_string()], next + 1));
        assert_eq!(r.since(next + 1).0.len(), 0);
    }

    /// A VMM that writes `bytes` to the first client of its console socket and ends; the
    /// lines the follower kept.
    async fn follow_one_connection(tag: &str, bytes: &[u8]) -> Vec<String> {
        use tokio::io::AsyncWriteExt;
        let dir = std::env::temp_dir().join(format!("uk-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let ring = ConsoleRing::default();
        let follower = tokio::spawn(follow("t".into(), path.clone(), ring.clone(), false, None));
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(bytes).await.unwrap();
        // The VMM ends: its listener goes, then the connection.
        drop(listener);
        drop(s);
        follower.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        ring.tail(RING_LINES)
    }

    #[tokio::test]
    async fn replay_fills_the_ring_and_long_lines_are_split() {
        let long = "x".repeat(MAX_LINE + 10);
        let lines = follow_one_connection("follow", format!("6\nold 1\nnew 2\n{long}\n").as_bytes()).await;
        assert_eq!(lines[0], "old 1");
        assert_eq!(lines[1], "new 2");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "x".repeat(10));
    }

    #[tokio::test]
    async fn a_header_without_end_is_cut_not_buffered() {
        // A VMM a guest took over sends a megabyte with no newline where the header goes:
        // the daemon reads at most MAX_HEADER bytes as the header, the rest as lines.
        let lines = follow_one_connection("header", "9".repeat(1 << 20).as_bytes()).await;
        assert!(!lines.is_empty(), "the bytes after the header are console output");
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE));
        assert_eq!(lines[0].len(), MAX_LINE);
    }

    #[tokio::test]
    async fn a_console_taken_by_another_client_is_taken_back_without_losing_or_repeating() {
        use tokio::io::AsyncWriteExt;
        let dir = std::env::temp_dir().join(format!("uk-takeover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let ring = ConsoleRing::default();
        let follower = tokio::spawn(follow("t".into(), path.clone(), ring.clone(), true, None));
        // A fresh VM: nothing to replay; "a" live.
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"0 0\na\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Another client replaces the follower; the guest writes "b" meanwhile.
        drop(s);
        // The follower comes back: the replay holds "a" (already seen) and "b" (not).
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(2), listener.accept())
            .await
            .expect("the follower reconnects")
            .unwrap();
        s.write_all(b"4 4\na\nb\nc\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(listener);
        drop(s);
        tokio::time::timeout(Duration::from_secs(2), follower)
            .await
            .expect("the follower ends with the VMM")
            .unwrap();
        assert_eq!(ring.tail(10), vec!["a", "b", "c"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

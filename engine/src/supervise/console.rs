//! A guest's console, read from its VMM's console socket (`--console unix:PATH`): each
//! line goes to the journal with the field UNIKERNEL=<name> and into a bounded ring that
//! status and `logs` show. After a daemon restart the VMM replays its recent output; that
//! replay fills the ring but is not logged again.
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;

/// Lines kept per service.
pub const RING_LINES: usize = 200;
/// Longest line kept (a guest is untrusted: no unbounded line buffers).
const MAX_LINE: usize = 4096;

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

/// Follows the console of `service` until the VMM goes away. `log_replay`: whether the
/// replayed part is new to the journal (a fresh VM) or was logged by an earlier daemon.
/// `first_line` fires when the guest's first line arrives (a readiness line).
pub async fn follow(
    service: String,
    socket: PathBuf,
    ring: ConsoleRing,
    log_replay: bool,
    mut first_line: Option<tokio::sync::oneshot::Sender<()>>,
) {
    // The VMM binds the socket before the guest runs; give it a moment to appear.
    let mut stream = None;
    for _ in 0..500 {
        match UnixStream::connect(&socket).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let Some(stream) = stream else {
        tracing::warn!(UNIKERNEL = %service, "cannot connect to the console socket {}", socket.display());
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut header = Vec::new();
    if reader.read_until(b'\n', &mut header).await.is_err() {
        return;
    }
    let mut replay = contract::console::parse_replay_header(&header).unwrap_or(0);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let replayed = replay > 0;
        replay = replay.saturating_sub(n);
        let text = clean(&line);
        if !replayed || log_replay {
            tracing::info!(target: "console", UNIKERNEL = %service, "{text}");
        }
        ring.push(text);
        if let Some(tx) = first_line.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn replay_fills_the_ring_and_long_lines_are_split() {
        let dir = std::env::temp_dir().join(format!("uk-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let ring = ConsoleRing::default();
        let follower = tokio::spawn(follow("t".into(), path.clone(), ring.clone(), false, None));
        let (mut s, _) = listener.accept().await.unwrap();
        use tokio::io::AsyncWriteExt;
        let long = "x".repeat(MAX_LINE + 10);
        s.write_all(format!("6\nold 1\nnew 2\n{long}\n").as_bytes())
            .await
            .unwrap();
        drop(s);
        follower.await.unwrap();
        let lines = ring.tail(10);
        assert_eq!(lines[0], "old 1");
        assert_eq!(lines[1], "new 2");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "x".repeat(10));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

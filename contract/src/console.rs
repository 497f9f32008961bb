//! Where the guest's serial console goes, and the protocol of the console socket: the VMM
//! keeps the last [`RING_BYTES`] of output; a client that connects first receives
//! `"<n> <total>\n"` and those `n` replayed bytes, then the live output. `total` is how
//! many bytes the guest has written in all, so a client that reconnects knows which part
//! of the replay it already has. One client at a time: a new one replaces the old.
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Output the VMM keeps for replay.
pub const RING_BYTES: usize = 64 * 1024;

/// Where the console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleTarget {
    Stdout,
    /// A file, appended to.
    File(PathBuf),
    /// A unix socket the VMM listens on (`unix:PATH`).
    Socket(PathBuf),
    /// Discarded.
    Off,
}

impl FromStr for ConsoleTarget {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => ConsoleTarget::Stdout,
            "off" => ConsoleTarget::Off,
            s if s.starts_with("unix:") => ConsoleTarget::Socket(PathBuf::from(&s[5..])),
            path => ConsoleTarget::File(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for ConsoleTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleTarget::Stdout => f.write_str("stdout"),
            ConsoleTarget::Off => f.write_str("off"),
            ConsoleTarget::Socket(p) => write!(f, "unix:{}", p.display()),
            ConsoleTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The header a new client gets: how many replayed bytes follow, and how many the guest
/// has written in all (the replay is the end of that).
pub fn replay_header(replayed: usize, total: u64) -> String {
    format!("{replayed} {total}\n")
}

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    /// Bytes of replay that follow the header.
    pub len: usize,
    /// Bytes the guest had written when the header was sent (`None` from an older VMM).
    pub total: Option<u64>,
}

impl Replay {
    /// Of the replay, how many leading bytes a client that has consumed `seen` bytes of
    /// output already has.
    pub fn already_seen(&self, seen: u64) -> usize {
        match self.total {
            Some(total) => {
                let start = total.saturating_sub(self.len as u64);
                usize::try_from(seen.saturating_sub(start)).map_or(self.len, |n| n.min(self.len))
            }
            None => 0,
        }
    }
}

/// Reads a header line back (with or without its newline); `None` if it is not one.
pub fn parse_replay_header(line: &[u8]) -> Option<Replay> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches(['\n', '\r']);
    let mut words = text.split(' ');
    let len: usize = words.next()?.parse().ok()?;
    let total = match words.next() {
        Some(t) => Some(t.parse::<u64>().ok().filter(|&t| t >= len as u64)?),
        None => None,
    };
    (len <= RING_BYTES && words.next().is_none()).then_some(Replay { len, total })
}

/// The console feed (`--console-feed-fd`, or handed over later with the control request
/// `console-feed`): the VMM sends its console output as datagrams on a connected unix
/// datagram socket, one per line (or per [`FEED_CHUNK`] bytes of a longer one). The daemon
/// receives the feeds of all its VMs on one socket of its own and tells them apart by the
/// sender's address, so it holds no descriptor per VM for consoles. A datagram is a kind
/// byte, the offset of its first byte in all the guest has written (u64, little endian),
/// then the bytes: a receiver sees a gap (bytes the VMM could not send while the receiver
/// was behind) as an offset past what it has.
pub const FEED_HEADER: usize = 9;
/// A run of output without a newline is sent once it is this long.
pub const FEED_CHUNK: usize = 4096;
/// The longest datagram: a replay of the whole ring.
pub const FEED_MAX: usize = FEED_HEADER + RING_BYTES;

/// What a feed datagram holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedKind {
    /// Output as the guest writes it.
    Live = 0,
    /// Output written before the feed was given (the end of the ring), sent once when a
    /// feed is installed: the receiver knows whether it logged it already.
    Replay = 1,
    /// No bytes: the VMM's event loop runs. Sent from its timer at least every
    /// [`FEED_HEARTBEAT_EVERY`], so its supervisor knows without asking (a liveness ping
    /// over the control socket costs a connection; at 10,000 VMs those were most of an
    /// idle daemon's CPU). The offset is all the guest has written so far.
    Heartbeat = 2,
}

/// The longest a VMM with a feed goes without a [`FeedKind::Heartbeat`].
pub const FEED_HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(16);

/// One feed datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedFrame<'a> {
    pub kind: FeedKind,
    /// Where `bytes` start in all the guest has written.
    pub offset: u64,
    pub bytes: &'a [u8],
}

impl<'a> FeedFrame<'a> {
    /// The header that goes before the bytes.
    pub fn header(kind: FeedKind, offset: u64) -> [u8; FEED_HEADER] {
        let mut h = [0u8; FEED_HEADER];
        h[0] = kind as u8;
        h[1..].copy_from_slice(&offset.to_le_bytes());
        h
    }

    /// Reads a datagram; `None` if it is not one (too short, unknown kind, or an offset
    /// that would overflow).
    pub fn parse(datagram: &'a [u8]) -> Option<FeedFrame<'a>> {
        let (head, bytes) = (datagram.get(..FEED_HEADER)?, &datagram[FEED_HEADER..]);
        let kind = match head[0] {
            0 => FeedKind::Live,
            1 => FeedKind::Replay,
            2 => FeedKind::Heartbeat,
            _ => return None,
        };
        let offset = u64::from_le_bytes(head[1..].try_into().ok()?);
        offset.checked_add(bytes.len() as u64)?;
        Some(FeedFrame { kind, offset, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_headers_round_trip() {
        for t in [
            ConsoleTarget::Stdout,
            ConsoleTarget::Off,
            ConsoleTarget::Socket("/run/x/console.sock".into()),
            ConsoleTarget::File("/tmp/c.log".into()),
        ] {
            assert_eq!(t.to_string().parse::<ConsoleTarget>().unwrap(), t);
        }
        let r = parse_replay_header(replay_header(42, 1000).as_bytes()).unwrap();
        assert_eq!((r.len, r.total), (42, Some(1000)));
        assert_eq!(r.already_seen(0), 0, "a new client has nothing");
        assert_eq!(r.already_seen(970), 12, "replay starts at byte 958");
        assert_eq!(r.already_seen(5000), 42);
        let old = parse_replay_header(b"7").unwrap();
        assert_eq!(
            (old.len, old.total, old.already_seen(100)),
            (7, None, 0),
            "an older VMM"
        );
        assert_eq!(parse_replay_header(b"x\n"), None);
        assert_eq!(parse_replay_header(b"5 3\n"), None, "total below the replay");
        assert_eq!(parse_replay_header(format!("{}\n", RING_BYTES + 1).as_bytes()), None);
    }

    #[test]
    fn feed_frames_round_trip_and_bad_ones_are_refused() {
        let mut d = FeedFrame::header(FeedKind::Replay, 1 << 40).to_vec();
        d.extend_from_slice(b"hello\n");
        let f = FeedFrame::parse(&d).unwrap();
        assert_eq!(
            (f.kind, f.offset, f.bytes),
            (FeedKind::Replay, 1 << 40, &b"hello\n"[..])
        );
        let empty = FeedFrame::header(FeedKind::Live, 7);
        assert_eq!(FeedFrame::parse(&empty).unwrap().bytes, b"");
        let beat = FeedFrame::header(FeedKind::Heartbeat, 42);
        assert_eq!(
            FeedFrame::parse(&beat).map(|f| (f.kind, f.offset)),
            Some((FeedKind::Heartbeat, 42))
        );
        assert_eq!(FeedFrame::parse(&empty[..8]), None, "short");
        let mut unknown = empty;
        unknown[0] = 9;
        assert_eq!(FeedFrame::parse(&unknown), None, "unknown kind");
        let mut wraps = FeedFrame::header(FeedKind::Live, u64::MAX).to_vec();
        wraps.push(b'x');
        assert_eq!(FeedFrame::parse(&wraps), None, "offset past the end of u64");
    }
}

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
}

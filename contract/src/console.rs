//! Where the guest's serial console goes, and the protocol of the console socket: the VMM
//! keeps the last [`RING_BYTES`] of output; a client that connects first receives
//! `"<n>\n"` and those `n` replayed bytes, then the live output. One client at a time.
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

/// The header a new client gets: how many replayed bytes follow.
pub fn replay_header(replayed: usize) -> String {
    format!("{replayed}\n")
}

/// Reads a header line back (with or without its newline); `None` if it is not one.
pub fn parse_replay_header(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let n: usize = text.trim_end_matches(['\n', '\r']).parse().ok()?;
    (n <= RING_BYTES).then_some(n)
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
        assert_eq!(parse_replay_header(replay_header(42).as_bytes()), Some(42));
        assert_eq!(parse_replay_header(b"0"), Some(0));
        assert_eq!(parse_replay_header(b"x\n"), None);
        assert_eq!(parse_replay_header(format!("{}\n", RING_BYTES + 1).as_bytes()), None);
    }
}

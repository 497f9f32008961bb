//! The VMM's control socket (`--control PATH`): a unix stream socket the VMM listens on,
//! through which the daemon asks a running VM to pause, resume or save a snapshot.
//!
//! One request per line, one reply per line, both UTF-8 text:
//!
//! ```text
//! -> uk1 snapshot exit /var/lib/unikerneld/snapshots/web
//! <- ok 1384448 7
//! ```
//!
//! Every request starts with the protocol version ([`VERSION`]); a VMM answers a request
//! of another version with `err` and does nothing, so a daemon and a VMM of different
//! releases never misread each other. Replies are `ok [values...]` or `err <message>`.
//! Paths are the rest of the line after the fixed words (they may contain spaces, not
//! newlines).

/// The files of a snapshot directory (`snapshot exit` writes them, `--restore DIR` reads
/// them): the VM's state, written last, and its memory.
pub const SNAPSHOT_STATE_FILE: &str = "state";
pub const SNAPSHOT_MEMORY_FILE: &str = "memory";
use std::fmt;
use std::path::PathBuf;

/// Binds a control socket at `path` (replacing a stale socket file), owner-only,
/// listening: the VMM does for `--control PATH`, the daemon before it hands one over with
/// `--control-fd`.
pub fn bind(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Sends `bytes` on the stream `socket` with `passed` riding along (SCM_RIGHTS), without
/// SIGPIPE (a non-blocking socket does not block); how many bytes went. For a socket the
/// caller holds in another type (tokio's).
pub fn send_with_fd(
    socket: std::os::fd::BorrowedFd<'_>,
    bytes: &[u8],
    passed: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    struct Borrowed<'a>(std::os::fd::BorrowedFd<'a>);
    impl ScmSocket for Borrowed<'_> {
        fn socket_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }
    Borrowed(socket)
        .send_with_fd(bytes, passed.as_raw_fd())
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The protocol version every request starts with.
pub const VERSION: &str = "uk1";

/// Longest request line a VMM reads (a path and a few words).
pub const MAX_LINE: usize = 4096;

/// What to do once a snapshot is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterSnapshot {
    /// Stop the VM and end the process (standby): the snapshot is its whole state.
    Exit,
    /// Let the guest run on (a checkpoint).
    Resume,
}

/// A request to a VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Is it there and serving requests? Answered `ok`.
    Ping,
    /// Stop every vCPU (the guest sees time stand still); answered once they are stopped.
    Pause,
    /// Let paused vCPUs run again.
    Resume,
    /// Pause, write a snapshot into the directory, then exit or resume. Answered
    /// `ok <memory bytes written> <milliseconds>`.
    Snapshot { dir: PathBuf, then: AfterSnapshot },
    /// Send the console from now on to the datagram socket that rides with this request
    /// (SCM_RIGHTS), first the output still in the VMM's ring as a replay
    /// (`contract::console::FeedKind`): a daemon that adopts the VMM gets its console
    /// without holding a connection to it. Answered `ok`.
    ConsoleFeed,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("unsupported control protocol version {0:?} (this VMM speaks {VERSION})")]
    Version(String),
    #[error("unknown control request {0:?}")]
    Unknown(String),
    #[error("snapshot needs `exit` or `resume` and a directory")]
    Snapshot,
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, ParseError> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (version, rest) = line.split_once(' ').unwrap_or((line, ""));
        if version != VERSION {
            return Err(ParseError::Version(version.chars().take(32).collect()));
        }
        let (verb, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match verb {
            "ping" => Ok(Request::Ping),
            "pause" => Ok(Request::Pause),
            "resume" => Ok(Request::Resume),
            "console-feed" => Ok(Request::ConsoleFeed),
            "snapshot" => {
                let (then, dir) = rest.split_once(' ').ok_or(ParseError::Snapshot)?;
                let then = match then {
                    "exit" => AfterSnapshot::Exit,
                    "resume" => AfterSnapshot::Resume,
                    _ => return Err(ParseError::Snapshot),
                };
                if dir.is_empty() {
                    return Err(ParseError::Snapshot);
                }
                Ok(Request::Snapshot {
                    dir: PathBuf::from(dir),
                    then,
                })
            }
            other => Err(ParseError::Unknown(other.chars().take(32).collect())),
        }
    }
}

impl fmt::Display for Request {
    /// The request line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Ping => write!(f, "{VERSION} ping"),
            Request::Pause => write!(f, "{VERSION} pause"),
            Request::Resume => write!(f, "{VERSION} resume"),
            Request::ConsoleFeed => write!(f, "{VERSION} console-feed"),
            Request::Snapshot { dir, then } => {
                let then = match then {
                    AfterSnapshot::Exit => "exit",
                    AfterSnapshot::Resume => "resume",
                };
                write!(f, "{VERSION} snapshot {then} {}", dir.display())
            }
        }
    }
}

/// What a snapshot request reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// Bytes of guest memory written (zero pages are holes and not counted).
    pub memory_bytes: u64,
    /// From the request to the snapshot on disk.
    pub millis: u64,
}

/// A reply line, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(Vec<String>),
    Err(String),
}

impl Reply {
    pub fn parse(line: &str) -> Reply {
        let line = line.trim_end_matches(['\n', '\r']);
        match line.split_once(' ').unwrap_or((line, "")) {
            ("ok", rest) => Reply::Ok(rest.split_whitespace().map(String::from).collect()),
            ("err", msg) => Reply::Err(msg.to_string()),
            _ => Reply::Err(format!(
                "unreadable reply {:?}",
                line.chars().take(80).collect::<String>()
            )),
        }
    }

    /// The reply to a snapshot request, if it succeeded.
    pub fn saved(&self) -> Result<Saved, String> {
        match self {
            Reply::Ok(values) => match values.as_slice() {
                [bytes, millis] => match (bytes.parse(), millis.parse()) {
                    (Ok(memory_bytes), Ok(millis)) => Ok(Saved { memory_bytes, millis }),
                    _ => Err(format!("unreadable snapshot reply {values:?}")),
                },
                _ => Err(format!("unreadable snapshot reply {values:?}")),
            },
            Reply::Err(msg) => Err(msg.clone()),
        }
    }
}

/// The reply line for `result`, with its newline (messages lose their own newlines).
pub fn reply_line(result: Result<Vec<String>, String>) -> String {
    match result {
        Ok(values) if values.is_empty() => "ok\n".to_string(),
        Ok(values) => format!("ok {}\n", values.join(" ")),
        Err(msg) => format!("err {}\n", msg.replace('\n', " ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_their_line() {
        for r in [
            Request::Ping,
            Request::Pause,
            Request::Resume,
            Request::ConsoleFeed,
            Request::Snapshot {
                dir: "/var/lib/unikerneld/snapshots/my web".into(),
                then: AfterSnapshot::Exit,
            },
            Request::Snapshot {
                dir: "/tmp/s".into(),
                then: AfterSnapshot::Resume,
            },
        ] {
            assert_eq!(Request::parse(&format!("{r}\n")), Ok(r));
        }
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        assert_eq!(Request::parse("uk2 ping"), Err(ParseError::Version("uk2".into())));
        assert_eq!(Request::parse(""), Err(ParseError::Version(String::new())));
        assert_eq!(Request::parse("uk1 reboot"), Err(ParseError::Unknown("reboot".into())));
        assert_eq!(Request::parse("uk1 snapshot exit"), Err(ParseError::Snapshot));
        assert_eq!(Request::parse("uk1 snapshot later /x"), Err(ParseError::Snapshot));
        assert_eq!(Request::parse("uk1 snapshot exit "), Err(ParseError::Snapshot));
    }

    #[test]
    fn replies_parse_and_carry_the_snapshot_figures() {
        let ok = Reply::parse(&reply_line(Ok(vec!["4096".into(), "3".into()])));
        assert_eq!(
            ok.saved(),
            Ok(Saved {
                memory_bytes: 4096,
                millis: 3
            })
        );
        let err = Reply::parse(&reply_line(Err("disk full\nreally".into())));
        assert_eq!(err, Reply::Err("disk full really".into()));
        assert!(Reply::parse("ok").saved().is_err());
        assert!(matches!(Reply::parse("what"), Reply::Err(_)));
    }
}

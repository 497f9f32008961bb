//! What the daemon reports about each service: only what it observed.
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The life cycle of a service, as `unikernelctl status` and D-Bus show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Declared, not started yet.
    Pending,
    /// The VMM runs; the guest has not answered yet.
    Booting,
    /// The guest accepted a TCP connection on its exposed port (or, without one, printed
    /// its first console line).
    Running,
    /// Asked to stop; waiting for the VMM to end.
    Stopping,
    /// Not running, on purpose (a clean exit the policy does not restart).
    Stopped,
    /// Ended on its own; restarting after a delay.
    Backoff,
    /// Gave up: a crash loop, or a failure with restart "never".
    Failed,
    /// Saved to a snapshot after being idle (`standby`): no process, no guest memory; the
    /// next connection to an exposed port wakes it.
    Standby,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Pending,
        State::Booting,
        State::Running,
        State::Stopping,
        State::Stopped,
        State::Backoff,
        State::Failed,
        State::Standby,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Booting => "booting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Standby => "standby",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub state: State,
    pub pid: Option<u32>,
    pub address: Option<Ipv4Addr>,
    /// When the current VM was spawned, ms since the epoch.
    pub started_unix_ms: Option<u64>,
    /// Spawn -> running of the current VM, in milliseconds.
    pub boot_ms: Option<f64>,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub source_file: PathBuf,
    pub source_line: usize,
    pub spec_hash: String,
    /// (host port, guest port).
    pub exposed: Vec<(u16, u16)>,
    pub memory_bytes: u64,
    /// Stopped by an operator and held so until Start, a declaration change or a daemon restart.
    pub held: bool,
    /// Its `standby` settings, when it scales to zero.
    #[serde(default)]
    pub standby: Option<String>,
    /// Wakes from standby since the daemon started.
    #[serde(default)]
    pub wakes: u64,
    /// Connection -> guest running again, of the last wake.
    #[serde(default)]
    pub last_wake_ms: Option<f64>,
    /// Guest memory in its snapshot (zero pages not counted).
    #[serde(default)]
    pub snapshot_bytes: Option<u64>,
    /// Connections open through its host ports.
    #[serde(default)]
    pub open_connections: u64,
}

/// A declaration error in force (the file's last good specs run meanwhile).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeclarationError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
}

impl From<&crate::decl::DeclError> for DeclarationError {
    fn from(d: &crate::decl::DeclError) -> Self {
        DeclarationError {
            file: d.file.clone(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
            help: d.help.clone(),
        }
    }
}

impl DeclarationError {
    /// The message with its help, as one text (what the bus carries).
    pub fn message_with_help(&self) -> String {
        match &self.help {
            Some(h) => format!("{} ({h})", self.message),
            None => self.message.clone(),
        }
    }

    /// As the bus carries it: (file, line, column, message with help).
    pub fn to_bus(&self) -> (String, u32, u32, String) {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        (
            self.file.display().to_string(),
            n(self.line),
            n(self.column),
            self.message_with_help(),
        )
    }

    /// Back from the bus (the help is part of the message there).
    pub fn from_bus((file, line, column, message): (String, u32, u32, String)) -> Self {
        DeclarationError {
            file: file.into(),
            line: line as usize,
            column: column as usize,
            message,
            help: None,
        }
    }
}

/// `file:line:col: message (help)`: the one way a declaration error is written.
impl fmt::Display for DeclarationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message_with_help()
        )
    }
}

/// The daemon's whole status, as written to `<state>/status.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Shared with the snapshots before and after it where a service's status did not
    /// change: a publish at 10,000 services copies pointers, not statuses, and whoever
    /// compares two snapshots (the status file, the bus) can skip what is the same one.
    pub services: Vec<Arc<Status>>,
    /// Every declaration error in force.
    pub declaration_errors: Vec<DeclarationError>,
    /// Which revision of the declarations is in force, and the last one refused.
    #[serde(default)]
    pub source: SourceStatus,
}

/// Where the declarations in force come from: a git revision (followed with `--git`, or
/// the HEAD of a config directory that is a git work tree), the last revision refused,
/// and why the remote could not be read, if it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub applied_revision: Option<crate::source::Revision>,
    pub failed_revision: Option<crate::source::FailedRevision>,
    pub fetch_error: Option<String>,
}

impl Snapshot {
    pub fn count(&self, state: State) -> usize {
        self.services.iter().filter(|s| s.state == state).count()
    }

    /// For sd_notify STATUS=: "12 running, 1 failed, 1 declaration error".
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("{} running", self.count(State::Running))];
        for state in State::ALL.into_iter().filter(|s| *s != State::Running) {
            let n = self.count(state);
            if n > 0 {
                parts.push(format!("{n} {state}"));
            }
        }
        match self.declaration_errors.len() {
            0 => {}
            1 => parts.push("1 declaration error".into()),
            n => parts.push(format!("{n} declaration errors")),
        }
        let mut line = parts.join(", ");
        if let Some(r) = &self.source.applied_revision {
            line.push_str(&format!(
                "; revision {}{}",
                r.short(),
                if r.dirty { " (dirty)" } else { "" }
            ));
        }
        if let Some(f) = &self.source.failed_revision {
            line.push_str(&format!("; revision {} refused", f.short()));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: State) -> Status {
        Status {
            name: name.into(),
            state,
            pid: None,
            address: None,
            started_unix_ms: None,
            boot_ms: None,
            restarts: 0,
            last_error: None,
            source_file: "/x.kdl".into(),
            source_line: 1,
            spec_hash: "0".into(),
            exposed: vec![],
            memory_bytes: 0,
            held: false,
            standby: None,
            wakes: 0,
            last_wake_ms: None,
            snapshot_bytes: None,
            open_connections: 0,
        }
    }

    #[test]
    fn summary_names_what_is_not_running() {
        let mut s = Snapshot::default();
        assert_eq!(s.summary(), "0 running");
        s.services = vec![
            Arc::new(status("a", State::Running)),
            Arc::new(status("b", State::Running)),
            Arc::new(status("c", State::Failed)),
        ];
        s.declaration_errors = vec![DeclarationError {
            file: "/a.kdl".into(),
            line: 1,
            column: 2,
            message: "x".into(),
            help: None,
        }];
        assert_eq!(s.declaration_errors[0].to_string(), "/a.kdl:1:2: x");
        assert_eq!(s.summary(), "2 running, 1 failed, 1 declaration error");
        let json = serde_json::to_string(&s.services[2]).unwrap();
        assert!(json.contains("\"state\":\"failed\""), "{json}");
    }
}

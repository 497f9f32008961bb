//! `standby`: scale to zero. After `idle` without traffic the service's VM is saved to a
//! snapshot and its process ends; the next connection to an exposed port restores it.
//!
//! ```kdl
//! standby idle="30s" connections="keep-awake" prewarm=#false
//! ```
use std::time::Duration;

use kdl::{KdlNode, KdlValue};

use super::diagnostic::{did_you_mean, DeclError, Reporter};

/// Shortest idle time: below it a service would sleep between two requests of one page.
pub const MIN_IDLE: Duration = Duration::from_millis(100);
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);
const PROPERTIES: [&str; 3] = ["idle", "connections", "prewarm"];

/// What an open connection that carries nothing does to the idle clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Connections {
    /// An open connection keeps the service awake, however quiet.
    KeepAwake,
    /// A quiet connection does not: it stays open through the daemon while the service
    /// is on standby, and its next byte wakes it.
    Hold,
}

impl Connections {
    pub const NAMES: [&'static str; 2] = ["keep-awake", "hold"];

    pub fn as_str(self) -> &'static str {
        match self {
            Connections::KeepAwake => "keep-awake",
            Connections::Hold => "hold",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StandbySpec {
    pub idle: Duration,
    pub connections: Connections,
    /// Boot when declared and go to standby as soon as the guest serves, so that no
    /// request ever waits for a cold boot (only for a wake).
    pub prewarm: bool,
}

impl std::fmt::Display for StandbySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "idle={}ms connections={} prewarm={}",
            self.idle.as_millis(),
            self.connections.as_str(),
            self.prewarm
        )
    }
}

/// "30s", "500ms", "5m", "1h".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

pub fn parse(r: &Reporter, node: &KdlNode, diags: &mut Vec<DeclError>) -> Option<StandbySpec> {
    let mut spec = StandbySpec {
        idle: DEFAULT_IDLE,
        connections: Connections::KeepAwake,
        prewarm: false,
    };
    let before = diags.len();
    for e in node.entries() {
        let Some(name) = e.name().map(|n| n.value()) else {
            diags.push(r.error(
                e.span(),
                "standby takes properties, not values",
                "a value",
                Some("write standby idle=\"30s\"".into()),
            ));
            continue;
        };
        match (name, e.value()) {
            ("idle", KdlValue::String(v)) => match parse_duration(v) {
                Some(d) if d >= MIN_IDLE => spec.idle = d,
                _ => diags.push(r.error(
                    e.span(),
                    format!("invalid idle time {v:?}"),
                    "invalid duration",
                    Some("write a duration of at least 100ms, like \"30s\", \"500ms\", \"5m\" or \"1h\"".into()),
                )),
            },
            ("connections", KdlValue::String(v)) => match v.as_str() {
                "keep-awake" => spec.connections = Connections::KeepAwake,
                "hold" => spec.connections = Connections::Hold,
                other => diags.push(
                    r.error(
                        e.span(),
                        format!("unknown connections mode {other:?}"),
                        "unknown",
                        Some(
                            did_you_mean(other, &Connections::NAMES)
                                .unwrap_or_else(|| "use \"keep-awake\" or \"hold\"".into()),
                        ),
                    ),
                ),
            },
            ("prewarm", KdlValue::Bool(b)) => spec.prewarm = *b,
            ("idle" | "connections", _) => diags.push(r.error(
                e.span(),
                format!("`{name}` takes a string"),
                "not a string",
                Some(if name == "idle" {
                    "write idle=\"30s\"".into()
                } else {
                    "write connections=\"hold\"".into()
                }),
            )),
            ("prewarm", _) => diags.push(r.error(
                e.span(),
                "`prewarm` is #true or #false",
                "not a boolean",
                Some("write prewarm=#true".into()),
            )),
            (other, _) => diags.push(
                r.error(
                    e.span(),
                    format!("unknown standby property `{other}`"),
                    "unknown",
                    Some(
                        did_you_mean(other, &PROPERTIES)
                            .unwrap_or_else(|| "standby takes idle, connections, prewarm".into()),
                    ),
                ),
            ),
        }
    }
    (diags.len() == before).then_some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        for bad in ["", "s", "30", "30 s", "1.5s", "-1s", "99999999999999999999h", "3d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}

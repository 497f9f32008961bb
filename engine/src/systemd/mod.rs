//! systemd integration: readiness, status line and watchdog through sd_notify (all no-ops
//! when the daemon was not started by systemd), and logging to the journal.
pub mod scope;

use std::time::Duration;

use sd_notify::NotifyState;

/// READY=1 once the first reconcile was applied.
pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

pub fn status(line: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(line)]);
}

pub fn watchdog() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog (half its timeout), when systemd set one.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// The journal when it is there (fields upper-cased, no prefix, so each per-service event
/// carries UNIKERNEL=<name>), else stderr. `RUST_LOG` filters, default `info,notify=warn`.
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // notify reports routine inotify bookkeeping ("unable to remove watch descriptor"
        // for a file that is already gone) at info: not news for an operator.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn"));
    let journal = if std::path::Path::new("/run/systemd/journal/socket").exists() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_field_prefix(None).with_syslog_identifier("unikerneld".into()))
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    match journal {
        Some(j) => registry.with(j).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .init(),
    }
}

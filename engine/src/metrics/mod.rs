//! Metrics in the Prometheus text format (opt-in: `unikerneld --metrics ADDR`), for a fleet
//! operator's scraper: services by state, boot and wake time histograms, restarts, wakes,
//! each VM's host memory, and the daemon's own fds, threads and memory. The names are
//! documented in the README; they are an interface, like the D-Bus API.
pub mod histogram;
pub mod server;

use std::fmt::Write;

use histogram::Histogram;

use crate::status::{Snapshot, State};

const BOOT_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const WAKE_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const HOST_BOUNDS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

/// What the controller observes over its life (a status snapshot only holds the last
/// value of each service).
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Spawn -> serving of every VM booted from its image.
    pub boots: Histogram,
    /// Wake requested -> serving of every VM resumed from standby.
    pub wakes: Histogram,
    /// The daemon's part of every start and wake: network setup, the spawn, the VM's record.
    pub host: Histogram,
    /// Starts and wakes that took a VMM from the warm pool.
    pub pooled_starts: u64,
    /// Pooled VMMs ready when the metrics were read.
    pub pool_ready: u64,
    /// Liveness checks of running VMMs a heartbeat answered (no connection made).
    pub heard: u64,
    /// Liveness checks that pinged the VMM over its control socket.
    pub pinged: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            boots: Histogram::new(BOOT_BOUNDS),
            wakes: Histogram::new(WAKE_BOUNDS),
            host: Histogram::new(HOST_BOUNDS),
            pooled_starts: 0,
            pool_ready: 0,
            heard: 0,
            pinged: 0,
        }
    }
}

/// The daemon process, as /proc shows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Process {
    pub open_fds: u64,
    pub threads: u64,
    pub resident_bytes: u64,
}

impl Process {
    /// `/proc/<pid>` of `pid`, or of this process with `None`.
    pub fn read(pid: Option<u32>) -> Option<Process> {
        let dir = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".to_string(),
        };
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        Some(Process {
            open_fds: std::fs::read_dir(format!("{dir}/fd"))
                .map(|d| d.count() as u64)
                .unwrap_or(0),
            threads: field("Threads:").unwrap_or(0),
            resident_bytes: field("VmRSS:").unwrap_or(0) * 1024,
        })
    }
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample per service: `name{service="..."} value`.
fn per_service<'a>(out: &mut String, name: &str, kind: &str, help: &str, rows: impl Iterator<Item = (&'a str, u64)>) {
    header(out, name, kind, help);
    for (service, value) in rows {
        let _ = writeln!(out, "{name}{{service=\"{}\"}} {value}", label(service));
    }
}

/// The whole exposition. `vm_memory` is each running VM's host memory (its VMM's RSS), by
/// service, in the snapshot's order.
pub fn render(snapshot: &Snapshot, stats: &Stats, daemon: Process, vm_memory: &[(String, u64)]) -> String {
    let mut out = String::with_capacity(4096 + snapshot.services.len() * 256);
    header(&mut out, "unikerneld_build_info", "gauge", "The daemon's version.");
    let _ = writeln!(
        out,
        "unikerneld_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    header(&mut out, "unikerneld_services", "gauge", "Declared services by state.");
    for state in State::ALL {
        let _ = writeln!(
            out,
            "unikerneld_services{{state=\"{state}\"}} {}",
            snapshot.count(state)
        );
    }
    header(
        &mut out,
        "unikerneld_declaration_errors",
        "gauge",
        "Declaration errors in force.",
    );
    let _ = writeln!(
        out,
        "unikerneld_declaration_errors {}",
        snapshot.declaration_errors.len()
    );

    stats.boots.render(
        &mut out,
        "unikerneld_boot_seconds",
        "VM start (spawn) to serving, of every VM booted from its image.",
    );
    stats.wakes.render(
        &mut out,
        "unikerneld_wake_seconds",
        "Wake requested to serving, of every VM resumed from standby.",
    );
    stats.host.render(
        &mut out,
        "unikerneld_start_host_seconds",
        "The daemon's part of every start and wake: network setup, the VMM's spawn and its record.",
    );

    let services = || snapshot.services.iter();
    per_service(
        &mut out,
        "unikerneld_service_restarts_total",
        "counter",
        "Restarts of each service's VM (crashes, liveness).",
        services().map(|s| (s.name.as_str(), u64::from(s.restarts))),
    );
    per_service(
        &mut out,
        "unikerneld_service_wakes_total",
        "counter",
        "Wakes of each service from standby.",
        services().map(|s| (s.name.as_str(), s.wakes)),
    );
    per_service(
        &mut out,
        "unikerneld_service_open_connections",
        "gauge",
        "Open connections through each service's host ports.",
        services().map(|s| (s.name.as_str(), s.open_connections)),
    );
    per_service(
        &mut out,
        "unikerneld_service_memory_bytes",
        "gauge",
        "Host memory of each running VM (its VMM's resident set: touched guest memory and the VMM).",
        vm_memory.iter().map(|(name, bytes)| (name.as_str(), *bytes)),
    );
    per_service(
        &mut out,
        "unikerneld_service_snapshot_bytes",
        "gauge",
        "Guest memory in each standby service's snapshot.",
        services()
            .filter(|s| s.state == State::Standby)
            .map(|s| (s.name.as_str(), s.snapshot_bytes.unwrap_or(0))),
    );

    if let Some(r) = &snapshot.source.applied_revision {
        header(
            &mut out,
            "unikerneld_revision_info",
            "gauge",
            "The revision of the declarations in force.",
        );
        let _ = writeln!(
            out,
            "unikerneld_revision_info{{commit=\"{}\",dirty=\"{}\"}} 1",
            label(&r.commit),
            r.dirty
        );
    }
    header(
        &mut out,
        "unikerneld_revision_refused",
        "gauge",
        "1 while the last revision fetched was refused.",
    );
    let _ = writeln!(
        out,
        "unikerneld_revision_refused {}",
        u8::from(snapshot.source.failed_revision.is_some())
    );

    header(
        &mut out,
        "unikerneld_open_fds",
        "gauge",
        "File descriptors the daemon holds.",
    );
    let _ = writeln!(out, "unikerneld_open_fds {}", daemon.open_fds);
    header(
        &mut out,
        "unikerneld_warm_pool_ready",
        "gauge",
        "VMMs started ahead of need, their VM created, waiting for a start.",
    );
    let _ = writeln!(out, "unikerneld_warm_pool_ready {}", stats.pool_ready);
    header(
        &mut out,
        "unikerneld_warm_pool_starts_total",
        "counter",
        "Starts and wakes that took a VMM from the warm pool.",
    );
    let _ = writeln!(out, "unikerneld_warm_pool_starts_total {}", stats.pooled_starts);
    header(
        &mut out,
        "unikerneld_liveness_checks_total",
        "counter",
        "Liveness checks of running VMMs, by how they were answered: a recent heartbeat on the console feed, or a ping over the control socket.",
    );
    let _ = writeln!(
        out,
        "unikerneld_liveness_checks_total{{by=\"heartbeat\"}} {}",
        stats.heard
    );
    let _ = writeln!(out, "unikerneld_liveness_checks_total{{by=\"ping\"}} {}", stats.pinged);
    header(&mut out, "unikerneld_threads", "gauge", "The daemon's threads.");
    let _ = writeln!(out, "unikerneld_threads {}", daemon.threads);
    header(
        &mut out,
        "unikerneld_resident_memory_bytes",
        "gauge",
        "The daemon's resident memory.",
    );
    let _ = writeln!(out, "unikerneld_resident_memory_bytes {}", daemon.resident_bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_is_a_name_optional_labels_and_a_number() {
        let mut stats = Stats::default();
        stats.boots.observe(0.012);
        let text = render(
            &Snapshot::default(),
            &stats,
            Process::default(),
            &[("a\"b".into(), 4096)],
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        }
        assert!(text.contains("unikerneld_services{state=\"running\"} 0\n"));
        assert!(text.contains("unikerneld_boot_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("unikerneld_service_memory_bytes{service=\"a\\\"b\"} 4096\n"));
    }
}

//! The sysctls a host of many VMs needs, applied at daemon start. Only what the
//! configuration needs, only upwards, and every change logged as `key: old -> new`.
use std::path::PathBuf;

use super::Mode;

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub fn read(key: &str) -> Option<String> {
    std::fs::read_to_string(path(key)).ok().map(|s| s.trim().to_string())
}

/// The kernel's ceiling for kernel.pid_max on 64-bit hosts.
const PID_MAX_LIMIT: u64 = 4_194_304;

/// One change made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

/// What should be set for `vms` VMs in `mode`. Values are minimums: a host already tuned
/// higher is left alone. (Guests reaching beyond the host, which would need forwarding, is
/// the operator's choice and is not set here.)
pub fn wanted(vms: usize, mode: &Mode) -> Vec<(&'static str, u64)> {
    let n = vms as u64;
    // One neighbour entry per guest (and per tap in routed mode): keep the table from
    // garbage-collecting live entries or refusing new ones.
    let mut out = vec![
        ("net.ipv4.neigh.default.gc_thresh1", n.max(128)),
        ("net.ipv4.neigh.default.gc_thresh2", (2 * n).max(512)),
        ("net.ipv4.neigh.default.gc_thresh3", (4 * n).max(1024)),
        // The daemon's listening sockets for exposed ports take bursts of connections.
        ("net.core.somaxconn", 4096),
        // Each 1-vCPU VMM is 2 threads of ours plus the kernel's kvm-nx-lpage-recovery
        // thread: pids and threads run out long before memory does (32,768 pids stop a
        // host near 6,000 VMs). Room for 4 per VM plus 16,384 for the rest of the host:
        // a default host (32,768) is left alone up to 4,096 VMs.
        ("kernel.pid_max", (4 * n + 16_384).min(PID_MAX_LIMIT)),
        ("kernel.threads-max", 4 * n + 16_384),
    ];
    if *mode == Mode::Routed {
        // Many /32 routes: room in the route cache.
        out.push(("net.ipv4.route.max_size", (4 * n).max(16384)));
    }
    out
}

/// The console hub's queue: every VM's console lines come in on one datagram socket, and
/// the kernel's default (10 frames queued) would have VMMs hold lines back whenever a
/// few hundred guests print at once.
pub const CONSOLE_FEED_QUEUE: (&str, u64) = ("net.unix.max_dgram_qlen", 4096);

/// Raises each key to its wanted value; returns (and logs) what changed.
pub fn apply(wanted: &[(&str, u64)]) -> Vec<Change> {
    let mut changes = Vec::new();
    for (key, value) in wanted {
        let Some(old) = read(key) else {
            tracing::info!(
                "sysctl {key} is not available here (another network namespace, or an older kernel); skipped"
            );
            continue;
        };
        if old.parse::<u64>().is_ok_and(|v| v >= *value) {
            continue;
        }
        match std::fs::write(path(key), value.to_string()) {
            Ok(()) => {
                tracing::info!("{key}: {old} -> {value}");
                changes.push(Change {
                    key: key.to_string(),
                    old,
                    new: value.to_string(),
                });
            }
            Err(e) => tracing::warn!("cannot set {key} to {value}: {e}"),
        }
    }
    changes
}

/// Sets a per-interface key without logging (one per tap would flood the journal).
pub fn set_quiet(key: &str, value: &str) {
    if let Err(e) = std::fs::write(path(key), value) {
        tracing::warn!("cannot set {key} to {value}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_scales_with_vms_and_mode() {
        let small = wanted(10, &Mode::Bridged { bridge: "ukbr0".into() });
        assert!(small.contains(&("net.ipv4.neigh.default.gc_thresh3", 1024)));
        assert!(!small.iter().any(|(k, _)| *k == "net.ipv4.route.max_size"));
        assert!(
            !small.iter().any(|(k, _)| *k == "net.ipv4.ip_forward"),
            "forwarding is never turned on behind the operator's back"
        );
        let big = wanted(5000, &Mode::Routed);
        assert!(big.contains(&("net.ipv4.neigh.default.gc_thresh3", 20000)));
        assert!(big.iter().any(|(k, _)| *k == "net.ipv4.route.max_size"));
        // 10,000 VMs need more pids than a default host has (32,768).
        let dense = wanted(10_000, &Mode::Routed);
        assert!(dense.contains(&("kernel.pid_max", 56_384)));
        assert!(dense.contains(&("kernel.threads-max", 56_384)));
        // Up to 4,096 VMs a default host (pid_max 32,768) is not touched.
        assert!(wanted(4096, &Mode::Routed).contains(&("kernel.pid_max", 32_768)));
        assert!(wanted(10_000_000, &Mode::Routed).contains(&("kernel.pid_max", PID_MAX_LIMIT)));
    }

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            path("net.core.somaxconn"),
            PathBuf::from("/proc/sys/net/core/somaxconn")
        );
        assert_eq!(
            path("net/ipv4/conf/uk-web/proxy_arp"),
            PathBuf::from("/proc/sys/net/ipv4/conf/uk-web/proxy_arp")
        );
    }
}

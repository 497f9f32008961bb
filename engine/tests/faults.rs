//! Fault injection: the daemon is killed (kill -9) at a random moment while it starts 50
//! services, and a new daemon takes over. Whenever the kill lands (before a tap, between
//! spawning a VMM and recording it, mid-boot), the end state is exactly one VMM per
//! declared service, each the one the status names, and no VMM that nothing manages.
//! UK_FAULT_TRIALS sets the number of trials (default 20, as CI runs it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod support;

use std::time::Duration;

use support::*;
use unikerneld::status::State;

const SERVICES: usize = 50;

/// A small deterministic generator (no dependency), so a failing trial can be replayed.
fn delay_ms(trial: u64) -> u64 {
    let x = trial
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (x >> 33) % 400
}

fn decl(i: usize) -> String {
    http_decl(&format!("s{i}"), 21_000 + i as u16, "")
}

#[test]
fn killing_the_daemon_anywhere_in_a_mass_start_leaves_exactly_one_vmm_per_service() {
    let trials: u64 = std::env::var("UK_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for trial in 0..trials {
        let mut d = Daemon::new(&format!("fault{trial}"));
        for i in 0..SERVICES {
            d.declare(&format!("s{i}.kdl"), &decl(i));
        }
        let kill_after = delay_ms(trial);
        d.spawn();
        std::thread::sleep(Duration::from_millis(kill_after));
        d.kill_daemon();
        let before = d.vmm_processes().len();
        d.start();
        let status = d.wait_for(&format!("trial {trial}: all running"), Duration::from_secs(120), |s| {
            s.services.len() == SERVICES && s.services.iter().all(|x| x.state == State::Running)
        });
        // Let the new daemon's sweep and any late exits settle, then count.
        std::thread::sleep(Duration::from_millis(200));
        let vmms = d.vmm_processes();
        let mut by_service: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
        for (pid, name) in &vmms {
            by_service.entry(name).or_default().push(*pid);
        }
        for s in &status.services {
            let pids = by_service.get(s.name.as_str()).cloned().unwrap_or_default();
            assert_eq!(
                pids,
                vec![s.pid.unwrap()],
                "trial {trial} (killed after {kill_after} ms): {} has VMMs {pids:?}, status says {:?}\n{}",
                s.name,
                s.pid,
                d.log_text()
            );
        }
        assert_eq!(vmms.len(), SERVICES, "trial {trial}: no VMM outside the services");
        eprintln!(
            "trial {trial}: killed after {kill_after} ms with {before} VMMs up; then {SERVICES} services, {} VMMs",
            vmms.len()
        );
    }
}

//! Liveness: VMMs that stop answering are found and replaced; pings are bounded, and
//! skipped for VMMs heard from lately.
use std::time::Duration;

use super::*;

#[tokio::test(start_paused = true)]
async fn a_vmm_that_stops_answering_is_killed_and_started_again() {
    let mut h = Harness::new("hang").await;
    h.write("web.kdl", &decl("web", "net { expose 8080 guest=80 }\n"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let first = h.pid("web").unwrap();
    // Answering: nothing happens however often it is asked.
    for _ in 0..3 {
        h.ctl().resync().await;
        h.run_for(Duration::from_secs(1)).await;
    }
    assert_eq!(h.pid("web"), Some(first));
    h.host.behave(
        "web",
        Behaviour {
            hangs: true,
            ..Behaviour::default()
        },
    );
    h.ctl().resync().await;
    h.run_for(Duration::from_secs(6)).await;
    assert_eq!(h.pid("web"), Some(first), "one missed ping is not enough");
    h.ctl().resync().await;
    h.run_for(Duration::from_secs(6)).await;
    assert!(h.host.get().signals.contains(&(first, Signal::Kill)));
    let now = h.pid("web").unwrap();
    assert_ne!(now, first, "a new VM runs");
    assert_eq!(h.state("web"), Some(State::Running));
    let err = h.status("web").last_error.unwrap_or_default();
    assert!(err.contains("stopped answering"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn liveness_pings_are_bounded_and_a_ping_the_daemon_cannot_make_kills_nothing() {
    let mut h = Harness::new("pings").await;
    for i in 0..100 {
        h.write(&format!("s{i}.kdl"), &decl(&format!("s{i}"), ""));
    }
    h.ctl().reload().await;
    h.run_for(Duration::from_secs(2)).await;
    let pids: Vec<_> = (0..100).map(|i| h.pid(&format!("s{i}")).unwrap()).collect();
    h.ctl().resync().await;
    h.run_for(Duration::from_secs(1)).await;
    let most = h.host.get().most_pings_in_flight;
    assert!(
        (2..=crate::controller::repair::PINGS_AT_ONCE).contains(&most),
        "{most} pings at once for 100 VMs"
    );
    // The daemon is out of descriptors: its pings fail, which says nothing of the VMs.
    h.host.get().pings_fail = Some("Too many open files (os error 24)".into());
    for _ in 0..3 {
        h.ctl().resync().await;
        h.run_for(Duration::from_secs(6)).await;
    }
    let now: Vec<_> = (0..100).map(|i| h.pid(&format!("s{i}")).unwrap()).collect();
    assert_eq!(now, pids, "no VM was restarted");
    assert!(h.host.get().signals.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_vmm_heard_from_lately_is_not_pinged_and_one_that_falls_silent_is() {
    let mut h = Harness::new("heard").await;
    let beats = Behaviour {
        heartbeats: true,
        ..Behaviour::default()
    };
    for i in 0..10 {
        // Half send heartbeats (a VMM with a console feed); half are older VMMs.
        if i % 2 == 0 {
            h.host.behave(&format!("s{i}"), beats.clone());
        }
        h.write(&format!("s{i}.kdl"), &decl(&format!("s{i}"), ""));
    }
    h.ctl().reload().await;
    h.run_for(Duration::from_secs(2)).await;
    h.ctl().resync().await;
    h.run_for(Duration::from_secs(1)).await;
    assert_eq!(h.host.get().pings, 5, "only the VMMs not heard from are pinged");
    // A heartbeating VMM is stopped: its heartbeats stop, it is pinged, and restarted.
    let first = h.pid("s0").unwrap();
    h.host.behave(
        "s0",
        Behaviour {
            hangs: true,
            ..beats.clone()
        },
    );
    for _ in 0..2 {
        h.ctl().resync().await;
        h.run_for(Duration::from_secs(6)).await;
    }
    assert_eq!(h.host.get().pings, 5 + 6 + 6);
    assert!(h.host.get().signals.contains(&(first, Signal::Kill)));
    assert_ne!(h.pid("s0"), Some(first), "a new VM runs");
}

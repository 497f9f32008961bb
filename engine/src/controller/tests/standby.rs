//! Scale to zero: idle -> snapshot -> standby -> a connection wakes it, and the ways it
//! can go wrong (a snapshot that fails or does not restore, a daemon restart).
use std::time::Duration;

use super::*;

fn standby_decl(name: &str, settings: &str) -> String {
    decl(name, &format!("net {{ expose 8080 guest=80 }}\nstandby {settings}\n"))
}

impl Harness {
    /// A client at host port 8080 (the fake listener's gate): asks for the wake, as the
    /// real proxy does, and stays open while the guard lives.
    fn connect(&self) -> crate::proxy::OpenGuard {
        let gate = self.host.get().gates.get(&8080).cloned().expect("a listener on 8080");
        let guard = crate::proxy::OpenGuard::new(gate.activity.clone());
        if gate.target.borrow().is_none() {
            (gate.wake)();
        }
        guard
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_service_goes_to_standby_and_a_connection_resumes_it() {
    let mut h = Harness::new("standby").await;
    h.write("web.kdl", &standby_decl("web", "idle=\"1s\""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    h.run_for(Duration::from_millis(500)).await;
    assert_eq!(h.state("web"), Some(State::Running), "not idle long enough yet");
    h.run_for(Duration::from_millis(600)).await;
    assert_eq!(h.state("web"), Some(State::Standby));
    assert!(!h.host.running().contains_key("web"), "no process on standby");
    assert_eq!(h.host.get().snapshots, vec!["web".to_string()]);
    assert!(h.host.get().taps.contains("web"), "the tap is kept");
    assert_eq!(h.status("web").snapshot_bytes, Some(4096));

    let client = h.connect();
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    let pid = h.pid("web").unwrap();
    assert!(h.host.get().restored.contains(&pid), "resumed, not booted");
    let status = h.status("web");
    assert_eq!(status.wakes, 1);
    assert!(status.last_wake_ms.is_some());
    // keep-awake: an open connection keeps it running, however quiet.
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    drop(client);
    h.run_for(Duration::from_millis(1200)).await;
    assert_eq!(h.state("web"), Some(State::Standby));
    assert_eq!(h.host.get().snapshots.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn held_connections_do_not_keep_a_service_awake() {
    let mut h = Harness::new("hold").await;
    h.write("web.kdl", &standby_decl("web", "idle=\"1s\" connections=\"hold\""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let _client = h.connect();
    h.run_for(Duration::from_millis(1200)).await;
    assert_eq!(h.state("web"), Some(State::Standby), "quiet for 1 s, open or not");
}

#[tokio::test(start_paused = true)]
async fn prewarm_saves_the_service_as_soon_as_it_serves() {
    let mut h = Harness::new("prewarm").await;
    h.write("web.kdl", &standby_decl("web", "idle=\"1m\" prewarm=#true"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(20)).await;
    assert_eq!(h.state("web"), Some(State::Standby));
    assert_eq!(h.host.spawn_count("web"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_that_does_not_restore_boots_afresh_and_serves() {
    let mut h = Harness::new("badsnap").await;
    h.host.behave(
        "web",
        Behaviour {
            restore_fails: true,
            ..Behaviour::default()
        },
    );
    h.write("web.kdl", &standby_decl("web", "idle=\"1s\""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(1200)).await;
    assert_eq!(h.state("web"), Some(State::Standby));
    let _client = h.connect();
    h.run_for(Duration::from_millis(20)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    let pid = h.pid("web").unwrap();
    assert!(!h.host.get().restored.contains(&pid), "a cold boot");
    assert_eq!(h.host.spawn_count("web"), 3, "boot, failed restore, boot");
    let err = h.status("web").last_error.unwrap_or_default();
    assert!(err.contains("snapshot not restored"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_vm_adopted_from_an_earlier_daemon_goes_to_standby_too() {
    // Its exit status is not ours to read (it is not our child): the snapshot written
    // since the request is what says it saved, not a crash to restart from.
    let mut h = Harness::new("adoptsave").await;
    h.write("web.kdl", &standby_decl("web", "idle=\"1s\""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    h.restart_daemon().await;
    h.ctl().converge().await;
    h.run_for(Duration::from_millis(1200)).await;
    assert_eq!(h.state("web"), Some(State::Standby));
    assert_eq!(h.status("web").restarts, 0, "not taken for a crash");
    assert_eq!(h.host.spawn_count("web"), 1, "nothing restarted");
    let _client = h.connect();
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    assert!(
        h.host.get().restored.contains(&h.pid("web").unwrap()),
        "resumed, not booted"
    );

    // Without a snapshot written, an adopted VMM's end is a crash, as before.
    h.restart_daemon().await;
    h.ctl().converge().await;
    let pid = h.pid("web").unwrap();
    h.host.kill(pid, Ended::Signaled(libc::SIGKILL));
    h.run_for(Duration::from_millis(500)).await;
    assert_eq!(h.status("web").restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn standby_survives_a_daemon_restart_and_a_changed_declaration_boots_afresh() {
    let mut h = Harness::new("standbyadopt").await;
    h.write("web.kdl", &standby_decl("web", "idle=\"1s\""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(1200)).await;
    assert_eq!(h.state("web"), Some(State::Standby));
    let snap = h.root.join("run/snapshots/web");
    assert!(snap.join("state").exists(), "the fake VMM wrote its state file");
    h.restart_daemon().await;
    h.ctl().converge().await;
    assert_eq!(h.state("web"), Some(State::Standby), "adopted on standby");
    assert_eq!(h.host.spawn_count("web"), 1);
    let _client = h.connect();
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    assert!(h.host.get().restored.contains(&h.pid("web").unwrap()));

    // Back to standby, then the declaration changes: the snapshot is useless.
    drop(_client);
    h.run_for(Duration::from_millis(1200)).await;
    assert_eq!(h.state("web"), Some(State::Standby));
    h.write(
        "web.kdl",
        &decl(
            "web",
            "cmdline \"v=2\"\nnet { expose 8080 guest=80 }\nstandby idle=\"1s\"\n",
        ),
    );
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    assert!(!h.host.get().restored.contains(&h.pid("web").unwrap()), "a cold boot");
    assert!(!snap.exists(), "the old snapshot is deleted");
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_that_fails_leaves_the_service_running_and_tries_again_later() {
    let mut h = Harness::new("snapfail").await;
    h.host.behave(
        "web",
        Behaviour {
            snapshot_error: Some("No space left on device".into()),
            ..Behaviour::default()
        },
    );
    h.write("web.kdl", &standby_decl("web", "idle=\"1s\""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(1100)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    let gate = h.host.get().gates.get(&8080).cloned().unwrap();
    assert!(gate.target.borrow().is_some(), "connections go through again");
    let err = h.status("web").last_error.unwrap_or_default();
    assert!(err.contains("standby failed: No space left on device"), "{err}");
    let pid = h.pid("web");
    h.run_for(Duration::from_millis(1200)).await;
    assert!(h.host.get().snapshots.len() >= 2, "tried again after another idle time");
    assert_eq!(h.pid("web"), pid, "the same VM all along");
}

//! The controller's logic with a fake host and tokio's paused clock: no root, no KVM.
//! Scale to zero has its own file (`standby.rs`), in-place updates and mass applies theirs
//! (`apply.rs`).
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::fake::{Behaviour, FakeHost, FakeLauncher, FakeNet};
use super::host::{Drift, Signal};
use super::{Controller, Event};
use crate::plan::Action;
use crate::state_dir::StateDir;
use crate::status::State;
use crate::supervise::process::Ended;

mod apply;
mod liveness;
mod standby;

const CRASH: Option<(Duration, Ended)> = Some((Duration::from_millis(1), Ended::Exited(1)));

struct Harness {
    root: PathBuf,
    host: FakeHost,
    ctl: Option<Controller<FakeLauncher, FakeNet>>,
    rx: mpsc::UnboundedReceiver<Event>,
}

fn decl(name: &str, extra: &str) -> String {
    format!("unikernel \"{name}\" {{\n    image \"/images/http\"\n{extra}}}\n")
}

impl Harness {
    async fn new(tag: &str) -> Harness {
        let root = std::env::temp_dir().join(format!("uk-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let host = FakeHost::default();
        let (ctl, rx) = Self::controller(&root, &host);
        Harness {
            root,
            host,
            ctl: Some(ctl),
            rx,
        }
    }

    fn controller(
        root: &std::path::Path,
        host: &FakeHost,
    ) -> (Controller<FakeLauncher, FakeNet>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = StateDir::new(&root.join("run")).unwrap();
        let lock = state.lock().unwrap();
        let ctl = Controller::new(
            root.join("etc"),
            state,
            lock,
            FakeLauncher(host.clone()),
            FakeNet(host.clone()),
            tx,
        );
        (ctl, rx)
    }

    fn ctl(&mut self) -> &mut Controller<FakeLauncher, FakeNet> {
        self.ctl.as_mut().unwrap()
    }

    /// The daemon dies (`kill -9`: no cleanup) and a new one starts and adopts.
    async fn restart_daemon(&mut self) {
        drop(self.ctl.take());
        let (ctl, rx) = Self::controller(&self.root, &self.host);
        self.ctl = Some(ctl);
        self.rx = rx;
        self.ctl().adopt().await;
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.root.join("etc").join(file), text).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.root.join("etc").join(file)).unwrap();
    }

    /// Runs the controller's events for `d` of (paused) time.
    async fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            if self.ctl().has_queued_starts() {
                self.ctl().start_queued().await;
                continue;
            }
            tokio::select! {
                Some(ev) = self.rx.recv() => self.ctl.as_mut().unwrap().handle(ev).await,
                _ = tokio::time::sleep_until(end) => break,
            }
        }
    }

    fn state(&self, name: &str) -> Option<State> {
        let snap = self.ctl.as_ref().unwrap().snapshot();
        snap.services.iter().find(|s| s.name == name).map(|s| s.state)
    }

    fn pid(&self, name: &str) -> Option<u32> {
        let snap = self.ctl.as_ref().unwrap().snapshot();
        snap.services.iter().find(|s| s.name == name).and_then(|s| s.pid)
    }

    fn status(&self, name: &str) -> crate::status::Status {
        let snap = self.ctl.as_ref().unwrap().snapshot();
        (*snap.services.into_iter().find(|s| s.name == name).unwrap()).clone()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(self.ctl.take());
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[tokio::test(start_paused = true)]
async fn a_declared_service_boots_and_runs() {
    let mut h = Harness::new("boot").await;
    h.write("web.kdl", &decl("web", "net { expose 8080 guest=80 }\n"));
    let plan = h.ctl().reload().await;
    assert!(matches!(plan.actions[..], [Action::Create { .. }]));
    assert_eq!(h.state("web"), Some(State::Booting));
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    assert_eq!(h.host.running()["web"].len(), 1);
    assert!(h.host.get().taps.contains("web"));
    assert_eq!(h.host.get().listeners.get(&8080).map(String::as_str), Some("web"));
    // The same declarations again: nothing to do.
    assert!(h.ctl().reload().await.is_noop());
    assert_eq!(h.host.spawn_count("web"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_100_200_400_800_1600_ms_then_fails() {
    let mut h = Harness::new("backoff").await;
    h.host.behave(
        "web",
        Behaviour {
            exits_after: CRASH,
            ready_after: None,
            ..Default::default()
        },
    );
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_secs(10)).await;
    let spawns: Vec<Instant> = h.host.get().spawns.iter().map(|s| s.2).collect();
    assert_eq!(spawns.len(), 6, "the first start and five restarts");
    let gaps: Vec<u128> = spawns
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() - 1) // each VM ran 1 ms
        .collect();
    assert_eq!(gaps, vec![100, 200, 400, 800, 1600]);
    let st = h.status("web");
    assert_eq!(st.state, State::Failed);
    assert_eq!(st.restarts, 5);
    let err = st.last_error.unwrap();
    assert!(
        err.contains("exit status 1") && err.contains("6 times in a row"),
        "{err}"
    );
    // Failed stays failed: no more spawns, however long.
    h.run_for(Duration::from_secs(60)).await;
    assert_eq!(h.host.spawn_count("web"), 6);
}

#[tokio::test(start_paused = true)]
async fn a_stable_vm_that_crashes_restarts_after_the_first_delay_again() {
    let mut h = Harness::new("stable").await;
    h.host.behave(
        "web",
        Behaviour {
            exits_after: Some((Duration::from_secs(20), Ended::Signaled(9))),
            ..Default::default()
        },
    );
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_secs(100)).await;
    // Each VM ran 20 s (past STABLE_AFTER): never failed, 100 ms between lives.
    let spawns: Vec<Instant> = h.host.get().spawns.iter().map(|s| s.2).collect();
    assert!(spawns.len() >= 4, "{}", spawns.len());
    for w in spawns.windows(2) {
        assert_eq!((w[1] - w[0]).as_millis(), 20_100);
    }
    assert_ne!(h.state("web"), Some(State::Failed));
}

#[tokio::test(start_paused = true)]
async fn deleting_a_booting_service_stops_its_vm_and_releases_everything() {
    let mut h = Harness::new("delboot").await;
    h.host.behave(
        "web",
        Behaviour {
            ready_after: None,
            ..Default::default()
        },
    );
    h.write("web.kdl", &decl("web", "net { expose 8080 guest=80 }\n"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(50)).await;
    assert_eq!(h.state("web"), Some(State::Booting));
    h.remove("web.kdl");
    let plan = h.ctl().reload().await;
    assert!(matches!(plan.actions[..], [Action::Stop { .. }]));
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), None, "gone");
    assert!(h.host.running().is_empty());
    assert!(h.host.get().taps.is_empty(), "tap deleted");
    assert!(h.host.get().listeners.is_empty(), "host port closed");
    assert!(!h.root.join("run/services/web").exists(), "state folder removed");
}

#[tokio::test(start_paused = true)]
async fn deleting_a_service_in_back_off_cancels_its_restart() {
    let mut h = Harness::new("delbackoff").await;
    h.host.behave(
        "web",
        Behaviour {
            exits_after: CRASH,
            ..Default::default()
        },
    );
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(50)).await;
    assert_eq!(h.state("web"), Some(State::Backoff));
    h.remove("web.kdl");
    h.ctl().reload().await;
    assert_eq!(h.state("web"), None);
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(h.host.spawn_count("web"), 1, "the pending restart did not fire");
}

#[tokio::test(start_paused = true)]
async fn an_edit_while_booting_replaces_the_vm_once_the_old_one_ended() {
    let mut h = Harness::new("replaceboot").await;
    h.host.behave(
        "web",
        Behaviour {
            ready_after: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    );
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    let first = h.pid("web").unwrap();
    h.run_for(Duration::from_millis(100)).await;
    h.write("web.kdl", &decl("web", "memory \"32M\"\n"));
    let plan = h.ctl().reload().await;
    assert!(matches!(&plan.actions[..], [Action::Replace { changed, .. }] if changed == &["memory"]));
    h.run_for(Duration::from_secs(2)).await;
    let second = h.pid("web").unwrap();
    assert_ne!(first, second);
    assert_eq!(h.host.running()["web"], vec![second], "exactly one VM");
    assert!(h.host.get().signals.contains(&(first, Signal::Term)));
    assert_eq!(h.state("web"), Some(State::Running));
    assert_eq!(h.status("web").memory_bytes, 32 << 20);
}

#[tokio::test(start_paused = true)]
async fn a_vm_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let mut h = Harness::new("grace").await;
    h.host.behave(
        "web",
        Behaviour {
            ignores_term: true,
            ..Default::default()
        },
    );
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    let pid = h.pid("web").unwrap();
    h.remove("web.kdl");
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(4900)).await;
    assert_eq!(h.state("web"), Some(State::Stopping));
    h.run_for(Duration::from_millis(200)).await;
    assert_eq!(h.state("web"), None);
    assert!(h.host.get().signals.contains(&(pid, Signal::Kill)));
}

#[tokio::test(start_paused = true)]
async fn a_host_port_or_restart_policy_change_keeps_the_vm() {
    let mut h = Harness::new("inplace").await;
    h.write("web.kdl", &decl("web", "net { expose 8080 guest=80 }\n"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let pid = h.pid("web").unwrap();
    let hash = h.status("web").spec_hash;
    h.write(
        "web.kdl",
        &decl("web", "restart \"never\"\nnet { expose 9090 guest=80 }\n"),
    );
    let plan = h.ctl().reload().await;
    assert!(
        matches!(&plan.actions[..], [Action::Update { changed, .. }] if changed == &["expose", "restart"]),
        "{plan:?}"
    );
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.pid("web"), Some(pid), "same VM");
    assert_eq!(h.state("web"), Some(State::Running));
    assert_eq!(h.status("web").spec_hash, hash);
    assert_eq!(h.status("web").exposed, vec![(9090, 80)]);
    let listeners: Vec<u16> = h.host.get().listeners.keys().copied().collect();
    assert_eq!(listeners, vec![9090], "old port closed, new one open");
    // The new policy is in force: a crash now is not restarted.
    h.host.kill(pid, Ended::Exited(1));
    h.run_for(Duration::from_secs(1)).await;
    assert_eq!(h.state("web"), Some(State::Failed));
    assert_eq!(h.host.spawn_count("web"), 1);
}

#[tokio::test(start_paused = true)]
async fn operator_stop_holds_start_and_restart_release() {
    let mut h = Harness::new("operator").await;
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    h.ctl().operator_stop("web").unwrap();
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Stopped));
    assert!(h.status("web").held);
    assert!(h.host.running().is_empty());
    // A reload or a resync does not undo an operator's stop.
    h.ctl().resync().await;
    h.run_for(Duration::from_secs(1)).await;
    assert_eq!(h.state("web"), Some(State::Stopped));
    h.ctl().operator_start("web").await.unwrap();
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    assert!(!h.status("web").held);
    let pid = h.pid("web").unwrap();
    h.ctl().operator_restart("web").await.unwrap();
    h.run_for(Duration::from_millis(10)).await;
    assert_ne!(h.pid("web"), Some(pid));
    assert_eq!(h.state("web"), Some(State::Running));
    assert_eq!(h.status("web").restarts, 1);
    assert_eq!(
        h.ctl().operator_start("nope").await,
        Err(super::OperatorError::NoSuchUnikernel)
    );
    // An edit of its declaration also clears a hold.
    h.ctl().operator_stop("web").unwrap();
    h.run_for(Duration::from_millis(10)).await;
    h.write("web.kdl", &decl("web", "memory \"32M\"\n"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
}

#[tokio::test(start_paused = true)]
async fn a_new_daemon_adopts_matching_replaces_changed_and_stops_removed_vms() {
    let mut h = Harness::new("adopt").await;
    for name in ["same", "changed", "removed"] {
        h.write(&format!("{name}.kdl"), &decl(name, "net { }\n"));
    }
    h.host.behave(
        "removed",
        Behaviour {
            ignores_term: true,
            ..Default::default()
        },
    );
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let same = h.pid("same").unwrap();
    let changed = h.pid("changed").unwrap();
    let removed = h.pid("removed").unwrap();
    // While no daemon runs: one edited, one removed.
    h.write("changed.kdl", &decl("changed", "memory \"64M\"\nnet { }\n"));
    h.remove("removed.kdl");
    let t0 = Instant::now();
    h.restart_daemon().await;
    assert_eq!(
        Instant::now(),
        t0,
        "adoption waits for nothing (the removed VM ignores SIGTERM)"
    );
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(100)).await;
    assert_eq!(h.pid("same"), Some(same), "adopted untouched");
    assert_eq!(h.state("same"), Some(State::Running));
    assert_ne!(h.pid("changed"), Some(changed), "replaced");
    assert_eq!(h.status("changed").memory_bytes, 64 << 20);
    assert_eq!(h.state("removed"), None);
    assert!(h.host.get().taps.contains("removed"), "still held until its VM ends");
    h.run_for(Duration::from_secs(5)).await;
    assert!(h.host.get().signals.contains(&(removed, Signal::Kill)));
    assert!(!h.host.get().taps.contains("removed"), "released once it ended");
    let running = h.host.running();
    assert_eq!(running.keys().collect::<Vec<_>>(), vec!["changed", "same"]);
    assert!(running.values().all(|p| p.len() == 1));
    assert_eq!(h.host.spawn_count("same"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_vm_that_died_while_no_daemon_ran_is_started_again() {
    let mut h = Harness::new("deadwhiledown").await;
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let pid = h.pid("web").unwrap();
    drop(h.ctl.take());
    h.host.kill(pid, Ended::Signaled(9));
    h.restart_daemon().await;
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    assert_ne!(h.pid("web"), Some(pid));
}

#[tokio::test(start_paused = true)]
async fn resync_restarts_a_vm_whose_tap_was_deleted_and_rewires_a_down_one() {
    let mut h = Harness::new("drift").await;
    h.write("a.kdl", &decl("a", "net { }\n"));
    h.write("b.kdl", &decl("b", "net { }\n"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let (a, b) = (h.pid("a").unwrap(), h.pid("b").unwrap());
    h.host.get().drift = vec![("a".into(), Drift::TapGone), ("b".into(), Drift::Unwired)];
    h.ctl().resync().await;
    h.run_for(Duration::from_millis(50)).await;
    assert_ne!(h.pid("a"), Some(a), "a new VM on a new tap");
    assert_eq!(h.state("a"), Some(State::Running));
    assert_eq!(h.pid("b"), Some(b), "re-wired in place");
    assert_eq!(h.host.get().rewired, vec!["b".to_string()]);
    // Nothing drifted: the next resync changes nothing.
    let spawns = h.host.get().spawns.len();
    h.ctl().resync().await;
    h.run_for(Duration::from_millis(50)).await;
    assert_eq!(h.host.get().spawns.len(), spawns);
}

#[tokio::test(start_paused = true)]
async fn a_spawn_failure_is_a_back_off_not_a_crash_of_the_controller() {
    let mut h = Harness::new("spawnfail").await;
    h.host.behave(
        "web",
        Behaviour {
            spawn_error: Some("cannot run unikernel-vmm: Resource temporarily unavailable".into()),
            ..Default::default()
        },
    );
    h.write("web.kdl", &decl("web", ""));
    h.write("ok.kdl", &decl("ok", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Backoff));
    assert!(h.status("web").last_error.unwrap().contains("temporarily unavailable"));
    assert_eq!(h.state("ok"), Some(State::Running));
    // Room comes back: the next retry starts it.
    h.host.behave("web", Behaviour::default());
    h.run_for(Duration::from_millis(200)).await;
    assert_eq!(h.state("web"), Some(State::Running));
}

/// 1,000 file events (creations, edits, deletions, crashes in between), reloaded in
/// small batches as inotify would deliver them: the end state is exactly what is declared.
#[tokio::test(start_paused = true)]
async fn a_burst_of_1000_changes_ends_in_exactly_the_declared_state() {
    let mut h = Harness::new("burst").await;
    let mut declared: BTreeMap<String, u32> = BTreeMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..1000u32 {
        let name = format!("s{}", next() % 60);
        let file = format!("{name}.kdl");
        match next() % 4 {
            0 if declared.contains_key(&name) => {
                h.remove(&file);
                declared.remove(&name);
            }
            _ => {
                let mem = 16 + 16 * (next() % 3) as u32;
                h.write(&file, &decl(&name, &format!("memory \"{mem}M\"\nnet {{ }}\n")));
                declared.insert(name.clone(), mem);
            }
        }
        if next() % 7 == 0 {
            if let Some(pid) = h.host.running().values().flatten().next().copied() {
                h.host.kill(pid, Ended::Signaled(9));
            }
        }
        if i % 10 == 9 {
            let names: HashSet<_> = (0..60).map(|n| format!("s{n}.kdl").into()).collect();
            h.ctl().reload_changed(&names, tokio::time::Instant::now()).await;
            h.run_for(Duration::from_millis(next() % 20)).await;
        }
    }
    h.ctl().reload().await;
    h.run_for(Duration::from_secs(30)).await;
    let running = h.host.running();
    assert_eq!(
        running.keys().cloned().collect::<Vec<_>>(),
        declared.keys().cloned().collect::<Vec<_>>()
    );
    assert!(running.values().all(|p| p.len() == 1), "one VM per service");
    for (name, mem) in &declared {
        let st = h.status(name);
        assert_eq!(st.state, State::Running, "{name}");
        assert_eq!(st.memory_bytes, u64::from(*mem) << 20, "{name}");
    }
    let taps: Vec<String> = h.host.get().taps.iter().cloned().collect();
    assert_eq!(taps, declared.keys().cloned().collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_host_port_taken_at_start_is_bound_by_a_later_resync() {
    let mut h = Harness::new("portretry").await;
    h.host.get().taken_ports.insert(8080);
    h.write("web.kdl", &decl("web", "net { expose 8080 guest=80 }\n"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), Some(State::Running), "the VM runs without its port");
    let err = h.status("web").last_error.unwrap();
    assert!(err.contains("cannot listen on host port 8080"), "{err}");
    assert!(h.host.get().listeners.is_empty());
    h.host.get().taken_ports.clear();
    h.ctl().resync().await;
    assert_eq!(h.host.get().listeners.get(&8080).map(String::as_str), Some("web"));
    assert_eq!(h.status("web").last_error, None, "the bind error is cleared");
}

#[tokio::test(start_paused = true)]
async fn a_daemon_restart_keeps_the_vms_of_a_broken_file_and_of_a_missing_directory() {
    let mut h = Harness::new("restartbroken").await;
    h.write("web.kdl", &decl("web", ""));
    h.write("api.kdl", &decl("api", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let (web, api) = (h.pid("web").unwrap(), h.pid("api").unwrap());
    // Broken while no daemon runs: the new daemon has never seen it parse.
    h.write(
        "web.kdl",
        "unikernel \"web\" {\n    image \"/images/http\"\n    memroy \"32M\"\n}\n",
    );
    h.restart_daemon().await;
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.pid("web"), Some(web), "kept on its last good spec across the restart");
    assert_eq!(h.state("web"), Some(State::Running));
    let snap = h.ctl.as_ref().unwrap().snapshot();
    assert!(snap.declaration_errors[0].to_string().contains("web.kdl:3:5"));
    // The whole directory gone at the next start: nothing is taken as removed.
    let etc = h.root.join("etc");
    std::fs::rename(&etc, h.root.join("etc.away")).unwrap();
    h.restart_daemon().await;
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!((h.pid("web"), h.pid("api")), (Some(web), Some(api)));
    assert_eq!(h.host.running().len(), 2);
    // Back, and a file really removed: that one stops.
    std::fs::rename(h.root.join("etc.away"), &etc).unwrap();
    h.remove("api.kdl");
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("api"), None);
    assert_eq!(h.pid("web"), Some(web));
}

/// `cp -p`, `rsync -t --inplace`: same size, same mtime, same inode, new content.
#[tokio::test(start_paused = true)]
async fn an_edit_that_keeps_size_mtime_and_inode_is_applied() {
    let mut h = Harness::new("sneaky").await;
    h.write("web.kdl", &decl("web", "memory \"16M\"\n"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let pid = h.pid("web").unwrap();
    let path = h.root.join("etc/web.kdl");
    let before = std::fs::metadata(&path).unwrap();
    // Same length: 16M -> 32M.
    std::fs::write(&path, decl("web", "memory \"32M\"\n")).unwrap();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        {
            use std::os::unix::fs::MetadataExt;
            libc::timespec {
                tv_sec: before.mtime(),
                tv_nsec: before.mtime_nsec(),
            }
        },
    ];
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and two timespecs, as utimensat(2) takes.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0);
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
    h.ctl().resync().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(
        h.status("web").memory_bytes,
        32 << 20,
        "the resync saw it (ctime moved)"
    );
    assert_ne!(h.pid("web"), Some(pid));
}

#[tokio::test(start_paused = true)]
async fn the_recorded_tap_of_a_vm_that_died_and_was_undeclared_while_down_is_released() {
    let mut h = Harness::new("deadundeclared").await;
    h.write("web.kdl", &decl("web", "net { }\n"));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let pid = h.pid("web").unwrap();
    drop(h.ctl.take());
    h.host.kill(pid, Ended::Signaled(9));
    h.remove("web.kdl");
    h.restart_daemon().await;
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.state("web"), None);
    assert!(
        h.host.get().taps.is_empty(),
        "its tap (known from the record) is deleted"
    );
    assert!(!h.root.join("run/services/web").exists());
}

#[tokio::test(start_paused = true)]
async fn a_vmm_that_nothing_recorded_is_ended_so_no_service_runs_twice() {
    let mut h = Harness::new("stray").await;
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let stray = h.pid("web").unwrap();
    // The daemon died between spawning the VMM and recording it.
    drop(h.ctl.take());
    std::fs::remove_file(h.root.join("run/services/web/vm.json")).unwrap();
    h.restart_daemon().await;
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    assert!(
        h.host.get().signals.is_empty(),
        "ended by the sweep, not signalled as a VM of ours"
    );
    assert_eq!(h.host.running()["web"].len(), 1, "exactly one VMM");
    assert_ne!(h.pid("web"), Some(stray));
    assert_eq!(h.state("web"), Some(State::Running));
}

#[tokio::test(start_paused = true)]
async fn a_vm_that_cannot_be_recorded_does_not_run() {
    let mut h = Harness::new("norecord").await;
    // Its record's place is taken by a directory: writing the record fails.
    std::fs::create_dir_all(h.root.join("run/services/web/vm.json/x")).unwrap();
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(50)).await;
    assert!(!h.host.running().contains_key("web"), "no unrecorded VMM runs");
    assert_eq!(h.state("web"), Some(State::Backoff));
    let err = h.status("web").last_error.unwrap_or_default();
    assert!(err.contains("cannot record the VM in the state directory"), "{err}");
    // Room again: the next try runs and stays.
    std::fs::remove_dir_all(h.root.join("run/services/web/vm.json")).unwrap();
    h.run_for(Duration::from_secs(2)).await;
    assert_eq!(h.state("web"), Some(State::Running));
    assert_eq!(h.host.running()["web"].len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_host_out_of_resources_is_retried_every_second_and_never_failed() {
    let mut h = Harness::new("exhausted").await;
    h.host.behave(
        "web",
        Behaviour {
            spawn_error: Some("cannot run unikernel-vmm: Resource temporarily unavailable (os error 11)".into()),
            ..Default::default()
        },
    );
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    // Far more than the five quick failures that make a crash loop `failed`.
    h.run_for(Duration::from_secs(20)).await;
    assert_eq!(h.state("web"), Some(State::Backoff));
    let err = h.status("web").last_error.unwrap_or_default();
    assert!(err.contains("out of resources; trying again every second"), "{err}");
    h.host.behave("web", Behaviour::default());
    h.run_for(Duration::from_millis(1100)).await;
    assert_eq!(h.state("web"), Some(State::Running));
}

/// A publish reuses the status of every service that did not change (the very same
/// `Arc`, which the status file and the bus skip), and publishes what a fresh snapshot
/// says, field for field.
#[tokio::test(start_paused = true)]
async fn a_publish_shares_unchanged_statuses_and_equals_a_fresh_snapshot() {
    use std::sync::Arc;
    let mut h = Harness::new("publish").await;
    h.write(
        "web.kdl",
        &decl("web", "net { expose 8080 guest=80 }\nstandby idle=\"1m\"\n"),
    );
    h.write("api.kdl", &decl("api", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let publish = |h: &mut Harness| {
        h.ctl().status_dirty = true;
        h.ctl().publish().unwrap()
    };
    let by = |s: &crate::status::Snapshot, name: &str| s.services.iter().find(|x| x.name == name).unwrap().clone();
    let first = publish(&mut h);
    let fresh = h.ctl.as_ref().unwrap().snapshot();
    assert_eq!(first.services.len(), 2);
    for (published, now) in first.services.iter().zip(&fresh.services) {
        assert_eq!(**published, **now);
    }
    assert!(by(&first, "web").standby.is_some());
    let second = publish(&mut h);
    for (a, b) in first.services.iter().zip(&second.services) {
        assert!(Arc::ptr_eq(a, b), "{} built again though unchanged", a.name);
    }
    // api crashes and waits to restart: only its status is new.
    h.host.kill(h.pid("api").unwrap(), Ended::Exited(1));
    h.run_for(Duration::from_millis(5)).await;
    let third = publish(&mut h);
    assert!(Arc::ptr_eq(&by(&first, "web"), &by(&third, "web")));
    assert!(!Arc::ptr_eq(&by(&first, "api"), &by(&third, "api")));
    assert_ne!(by(&third, "api").state, State::Running, "it waits to restart");
    assert_eq!(*by(&third, "api"), *by(&h.ctl.as_ref().unwrap().snapshot(), "api"));
}

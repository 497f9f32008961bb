//! `unikerneld` end to end: real VMs under /dev/kvm, real taps in a namespace the test
//! creates, declarations edited the way users edit them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod support;

use std::time::Duration;

use support::*;
use unikerneld::status::State;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn add_edit_remove_converge_and_untouched_services_keep_their_vm() {
    let mut d = Daemon::new("edit");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    d.declare("api.kdl", &http_decl("api", 8081, ""));
    let web = d.running("web");
    let api = d.running("api");
    assert!(web.boot_ms.unwrap() > 0.0);
    let (code, body) = d.get(8080).unwrap();
    assert_eq!((code, body.split(' ').next().unwrap()), (200, "web"));
    assert!(d.get(8081).unwrap().1.starts_with("api "));
    assert_eq!(web.source_line, 1);
    assert!(web.source_file.ends_with("web.kdl"));
    // Each start says where its time went: the daemon's part, its spawn step by step, and
    // the VMM's own phases.
    let log = d.log_text();
    let started = log
        .lines()
        .find(|l| l.contains("running (booted in") && l.contains("web"))
        .unwrap_or_else(|| panic!("no start line for web in:\n{log}"));
    for phase in [
        "daemon ",
        "daemon CPU ",
        "network ",
        "tap ",
        "spawn ",
        "log file ",
        "command line ",
        "control socket ",
        "console feed ",
        "state directory ",
        "record ",
        "watchers ",
        "in the VMM: loaded ",
        "vm ",
        "cpuid ",
        "vcpus ",
        "jail ",
        "in the guest at ",
        "guest's first line at ",
    ] {
        assert!(started.contains(phase), "{phase:?} missing from: {started}");
    }
    eprintln!("{started}");

    // Edit memory: web is replaced (new pid), api keeps its VM.
    d.declare("web.kdl", &http_decl("web", 8080, "    memory \"32M\"\n"));
    let s = d.wait_for("web replaced", LONG, |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.state == State::Running && x.pid != web.pid)
    });
    let web2 = s.services.iter().find(|x| x.name == "web").unwrap();
    assert_eq!(web2.memory_bytes, 32 << 20);
    assert!(!alive(web.pid.unwrap()), "the old VM ended");
    assert_eq!(d.service("api").unwrap().pid, api.pid, "untouched service kept its VM");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1", "same host port, new VM");
    assert!(d.log_text().contains("replace: memory changed"), "{}", d.log_text());
    assert!(
        !d.log_text().contains("another client took the console socket"),
        "a VMM that ends is not a console takeover: {}",
        d.log_text()
    );

    // Remove the file: stopped, tap gone, address released.
    d.undeclare("web.kdl");
    d.wait_for("web gone", LONG, |s| s.services.iter().all(|x| x.name != "web"));
    assert!(!alive(web2.pid.unwrap()));
    d.taps_become(&["uk-api"]);
    assert!(d.get(8080).is_err(), "host port closed");
    assert!(!d.state.join("services/web").exists());
    assert!(d.get(8081).unwrap().1.starts_with("api "));
}

#[test]
fn a_broken_file_keeps_the_last_good_spec_running_until_fixed() {
    let mut d = Daemon::new("broken");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    let web = d.running("web");
    d.declare(
        "web.kdl",
        "unikernel \"web\" {\n    image \"/x\"\n    memroy \"32M\"\n}\n",
    );
    let s = d.wait_for("a declaration error", LONG, |s| !s.declaration_errors.is_empty());
    let err = &s.declaration_errors[0].to_string();
    assert!(err.contains("web.kdl:3:5"), "{err}");
    assert!(err.contains("memory"), "did-you-mean help: {err}");
    assert!(d.log_text().contains("web.kdl:3:5"));
    let now = d.service("web").unwrap();
    assert_eq!(
        (now.state, now.pid),
        (State::Running, web.pid),
        "still on its last good spec"
    );
    assert!(d.get(8080).unwrap().1.starts_with("web "));

    // Fixed (to what it was): the error clears, nothing restarts.
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    d.wait_for("errors cleared", LONG, |s| s.declaration_errors.is_empty());
    assert_eq!(d.service("web").unwrap().pid, web.pid);
    // Fixed to something new: converges to it.
    d.declare("web.kdl", &http_decl("web", 8080, "    vcpus 2\n"));
    d.wait_for("web replaced", LONG, |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.state == State::Running && x.pid != web.pid)
    });
}

#[test]
fn a_killed_vmm_is_restarted_and_a_crash_loop_ends_in_failed() {
    let mut d = Daemon::new("crash");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    d.declare(
        "bad.kdl",
        &format!(
            "unikernel \"bad\" {{\n    image \"{}\"\n    restart \"always\"\n}}\n",
            image("triplefault").display()
        ),
    );
    let web = d.running("web");
    // SAFETY: kill(2) of the VM's pid.
    unsafe { libc::kill(web.pid.unwrap() as i32, libc::SIGKILL) };
    let s = d.wait_for("web restarted", LONG, |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.state == State::Running && x.pid != web.pid)
    });
    let web2 = s.services.iter().find(|x| x.name == "web").unwrap();
    assert_eq!(web2.restarts, 1);
    assert!(web2.last_error.as_deref().unwrap().contains("signal 9"), "{web2:?}");
    assert!(d.get(8080).unwrap().1.starts_with("web "));

    let s = d.wait_for("bad failed", LONG, |s| {
        s.services.iter().any(|x| x.name == "bad" && x.state == State::Failed)
    });
    let bad = s.services.iter().find(|x| x.name == "bad").unwrap();
    let err = bad.last_error.as_deref().unwrap();
    assert!(err.contains("exit status 1"), "{err}");
    assert!(err.contains("triple fault"), "the VMM's reason: {err}");
    assert!(err.contains("6 times in a row"), "{err}");
    assert!(err.contains("about to triple fault"), "last console lines: {err}");
    assert_eq!(bad.restarts, 5);
    assert_eq!(bad.pid, None);
    // The back-off grew: 100, 200, 400, 800, 1600 ms, in that order.
    let log = d.log_text();
    let mut at = 0;
    for ms in [100, 200, 400, 800, 1600] {
        let needle = format!("restarting in {ms} ms");
        let found = log[at..]
            .lines()
            .position(|l| l.contains(&needle) && l.contains("UNIKERNEL=bad"));
        assert!(found.is_some(), "{needle} after offset {at}:\n{log}");
        at += log[at..].find(&needle).unwrap();
    }
}

#[test]
fn restarting_the_daemon_restarts_no_vm() {
    let mut d = Daemon::new("adopt");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    d.declare("api.kdl", &http_decl("api", 8081, ""));
    let web = d.running("web");
    let api = d.running("api");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1");
    d.kill_daemon();
    assert!(
        alive(web.pid.unwrap()) && alive(api.pid.unwrap()),
        "VMs outlive the daemon"
    );
    d.start();
    let web2 = d.running("web");
    let api2 = d.running("api");
    assert_eq!((web2.pid, api2.pid), (web.pid, api.pid), "adopted, not restarted");
    assert_eq!(web2.restarts, 0);
    // The same guest answers (its counter goes on) through the new daemon's host port.
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 2");
    assert!(d.log_text().contains("adopted VM pid"));

    // A second daemon on the same state directory refuses to start, and changes nothing.
    let out = d.command().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("another unikerneld (pid"), "{err}");
    assert_eq!(d.service("web").unwrap().pid, web.pid);

    // Changed while the daemon was down: replaced on adoption. Removed: stopped.
    d.kill_daemon();
    d.declare("web.kdl", &http_decl("web", 8080, "    memory \"24M\"\n"));
    d.undeclare("api.kdl");
    d.start();
    d.wait_for("web replaced, api gone", LONG, |s| {
        s.services.len() == 1
            && s.services[0].name == "web"
            && s.services[0].state == State::Running
            && s.services[0].pid != web.pid
    });
    // The removed VM is stopped without the daemon waiting for it: its end (and with it
    // the release of its tap) follows the status by a moment.
    let deadline = std::time::Instant::now() + LONG;
    while (alive(api.pid.unwrap()) || d.taps() != vec!["uk-web".to_string()]) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(api.pid.unwrap()));
    assert!(!alive(web.pid.unwrap()));
    assert_eq!(d.taps(), vec!["uk-web".to_string()]);
}

#[test]
fn a_burst_of_100_files_converges_to_exactly_the_final_state() {
    let mut d = Daemon::new("burst");
    d.start();
    let fds = |d: &Daemon| {
        std::fs::read_dir(format!("/proc/{}/fd", d.daemon_pid()))
            .unwrap()
            .count()
    };
    d.wait_for("started", LONG, |_| true);
    let idle_fds = fds(&d);
    let decl = |i: usize, mem: &str| {
        format!(
            "unikernel \"s{i}\" {{\n    image \"{}\"\n    cmdline \"name=s{i}\"\n    memory \"{mem}\"\n    net {{}}\n}}\n",
            image("http").display()
        )
    };
    for i in 0..100 {
        d.declare(&format!("s{i}.kdl"), &decl(i, "16M"));
    }
    // Still in the burst: half of them go away again, a quarter change.
    for i in 0..50 {
        d.undeclare(&format!("s{i}.kdl"));
    }
    for i in 50..75 {
        d.declare(&format!("s{i}.kdl"), &decl(i, "20M"));
    }
    let s = d.wait_for("50 running", Duration::from_secs(120), |s| {
        s.services.len() == 50 && s.services.iter().all(|x| x.state == State::Running)
    });
    for x in &s.services {
        let i: usize = x.name[1..].parse().unwrap();
        assert!(i >= 50, "{} should be gone", x.name);
        let want = if i < 75 { 20 << 20 } else { 16 << 20 };
        assert_eq!(x.memory_bytes, want, "{}", x.name);
    }
    // One descriptor per VM (its pidfd): consoles come in on the one hub socket. A few
    // more may be in flight (a liveness ping, a tap being made).
    let grown = fds(&d).saturating_sub(idle_fds);
    assert!(grown <= 50 + 8, "the daemon holds {grown} more fds for 50 VMs");
    let mut want: Vec<String> = s.services.iter().map(|x| format!("uk-{}", x.name)).collect();
    want.sort();
    d.taps_become(&want.iter().map(String::as_str).collect::<Vec<_>>());
    // And all of it goes away.
    for i in 50..100 {
        d.undeclare(&format!("s{i}.kdl"));
    }
    d.wait_for("nothing left", Duration::from_secs(60), |s| s.services.is_empty());
    d.taps_become(&[]);
    for pid in s.services.iter().filter_map(|x| x.pid) {
        assert!(!alive(pid));
    }
}

#[test]
fn the_same_name_in_two_files_is_reported_at_both_and_disturbs_nothing() {
    let mut d = Daemon::new("dup");
    d.start();
    d.declare("a.kdl", &http_decl("web", 8080, ""));
    let web = d.running("web");
    d.declare("b.kdl", &format!("// copy\n{}", http_decl("web", 9090, "")));
    let s = d.wait_for("a duplicate error", LONG, |s| s.declaration_errors.len() >= 2);
    let all: Vec<String> = s.declaration_errors.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    assert!(all.contains("a.kdl:1:1") && all.contains("b.kdl:2:1"), "{all}");
    assert!(all.contains("service \"web\" is also declared at"), "{all}");
    let now = d.service("web").unwrap();
    assert_eq!((now.state, now.pid), (State::Running, web.pid));
    assert!(
        now.source_file.ends_with("a.kdl"),
        "the first declaration stays in force"
    );
    assert!(d.get(9090).is_err());
}

#[test]
fn deletion_works_mid_boot_in_backoff_and_for_clean_exits() {
    let mut d = Daemon::new("delete");
    d.start();
    // Declared and removed again at once: whatever state it reached, it goes away.
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    std::thread::sleep(Duration::from_millis(120));
    d.undeclare("web.kdl");
    // In back-off.
    d.declare(
        "bad.kdl",
        &format!(
            "unikernel \"bad\" {{\n    image \"{}\"\n}}\n",
            image("triplefault").display()
        ),
    );
    d.wait_for("bad in backoff", LONG, |s| {
        s.services.iter().any(|x| x.name == "bad" && x.state == State::Backoff)
    });
    d.undeclare("bad.kdl");
    d.wait_for("nothing left", LONG, |s| s.services.is_empty());
    d.taps_become(&[]);
    // A guest that ends cleanly with restart "never" is stopped, not failed; a guest
    // without a port is running once it printed its first line.
    d.declare(
        "once.kdl",
        &format!(
            "unikernel \"once\" {{\n    image \"{}\"\n    cmdline \"hi\"\n    restart \"never\"\n}}\n",
            image("hello").display()
        ),
    );
    let s = d.wait_for("once stopped", LONG, |s| {
        s.services.iter().any(|x| x.name == "once" && x.state == State::Stopped)
    });
    assert_eq!(s.services[0].restarts, 0);
    assert!(s.services[0].last_error.as_deref().unwrap().contains("exit status 0"));
    assert!(
        d.log_text().contains("UNIKERNEL=once"),
        "console lines logged with the field"
    );
}

#[test]
fn systemd_hears_ready_status_and_watchdog() {
    let mut d = Daemon::new("notify");
    let socket_path = d.dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    d.start_with(&[
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let n = socket.recv(&mut buf).unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        let has = |m: &str| seen.iter().any(|s| s.contains(m));
        if has("READY=1") && has("STATUS=1 running") && seen.iter().filter(|s| s.contains("WATCHDOG=1")).count() >= 2 {
            break;
        }
    }
    let ready = seen.iter().position(|s| s.contains("READY=1"));
    let running = seen.iter().position(|s| s.contains("STATUS=1 running"));
    assert!(ready.is_some() && running.is_some(), "{seen:?}");
    assert!(
        seen.iter().filter(|s| s.contains("WATCHDOG=1")).count() >= 2,
        "watchdog pings at half of WATCHDOG_USEC: {seen:?}"
    );
    // READY=1 comes after the first reconcile was applied: the status published just
    // before it already counts the VM (booting or running), not an empty host.
    let before: Vec<&String> = seen[..ready.unwrap()]
        .iter()
        .filter(|s| s.contains("STATUS="))
        .collect();
    assert!(
        before
            .last()
            .is_some_and(|s| s.contains("1 booting") || s.contains("1 running")),
        "{seen:?}"
    );
}

#[test]
fn a_host_port_change_keeps_the_vm_and_the_resync_repairs_the_network() {
    let mut d = Daemon::new("drift");
    d.args = vec!["--resync".into(), "1".into()];
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    let web = d.running("web");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1");

    // A new host port is applied in place: same VM, its request counter goes on.
    d.declare("web.kdl", &http_decl("web", 8090, ""));
    d.wait_for("port moved", LONG, |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.exposed == vec![(8090, 80)])
    });
    assert_eq!(d.get(8090).unwrap().1.trim(), "web 2", "same guest");
    assert!(d.get(8080).is_err(), "old host port closed");
    assert_eq!(d.service("web").unwrap().pid, web.pid);
    assert!(d.log_text().contains("update in place: expose changed"));

    // The tap set down by hand (its route goes with it): wired again, same VM.
    d.ip(&["link", "set", "uk-web", "down"]);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(d.log_text().contains("wiring it again"), "{}", d.log_text());
    assert_eq!(d.get(8090).unwrap().1.trim(), "web 3", "same guest, reachable again");
    assert_eq!(d.service("web").unwrap().pid, web.pid);

    // The tap deleted by hand: the VMM's fd is dead; a new VM on a new tap.
    d.ip(&["link", "del", "uk-web"]);
    d.wait_for("web on a new VM", LONG, |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.state == State::Running && x.pid != web.pid)
    });
    assert!(!alive(web.pid.unwrap()));
    assert_eq!(d.taps(), vec!["uk-web".to_string()]);
    assert_eq!(d.get(8090).unwrap().1.trim(), "web 1", "a fresh guest serves");
}

#[test]
fn placeholders_spell_the_network_the_guests_way_and_app_arguments_stay_last() {
    let mut d = Daemon::new("placeholders");
    d.start();
    let decl = format!(
        "unikernel \"web\" {{\n    image \"{}\"\n    cmdline \"ip={{address}}/{{prefix}} gw={{gateway}} port=80 name={{name}} -- --app-flag\"\n    net {{ expose 8080 guest=80 }}\n}}\n",
        image("http").display()
    );
    d.declare("web.kdl", &decl);
    d.running("web");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1");
    let log = d.log_text();
    assert!(
        log.contains("http: web listening on port 80 (application arguments: --app-flag)"),
        "the guest found its NIC before ` -- ` and got its arguments after it: {log}"
    );
}

#[test]
fn a_vmm_left_unrecorded_by_a_killed_daemon_is_ended_by_the_next() {
    let mut d = Daemon::new("stray");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    let web = d.running("web");
    // As if the daemon had been killed between spawning the VMM and recording it.
    d.kill_daemon();
    std::fs::remove_file(d.state.join("services/web/vm.json")).unwrap();
    d.start();
    let s = d.wait_for("web on a new VM", LONG, |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.state == State::Running && x.pid != web.pid)
    });
    assert!(!alive(web.pid.unwrap()), "the unrecorded VMM was ended");
    assert!(d.log_text().contains("which no record explains"), "{}", d.log_text());
    assert_eq!(s.services.len(), 1);
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1", "one guest serves, a fresh one");
}

#[test]
fn a_config_dir_deleted_and_made_again_is_watched_again_at_once() {
    let mut d = Daemon::new("rewatch");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    let web = d.running("web");
    // `rm -rf` and `mkdir` (a redeploy): nothing is stopped while the directory is gone,
    // and what appears in the new one is applied long before the 30 s resync.
    std::fs::remove_dir_all(&d.conf).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.service("web").unwrap().pid,
        web.pid,
        "an unreadable directory removes nothing"
    );
    std::fs::create_dir(&d.conf).unwrap();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    d.declare("api.kdl", &http_decl("api", 8081, ""));
    let t = std::time::Instant::now();
    d.running("api");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(d.service("web").unwrap().pid, web.pid);
    // And the new directory's edits keep coming.
    d.undeclare("api.kdl");
    d.wait_for("api gone", Duration::from_secs(10), |s| s.services.len() == 1);
    assert!(d.log_text().contains("was replaced: watching it again"));
}

#[test]
fn what_a_guest_writes_while_no_daemon_runs_reaches_the_journal_once() {
    let mut d = Daemon::new("journal");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    let web = d.running("web");
    let guest = format!("{}:80", web.address.unwrap());
    let said = |d: &Daemon, what: &str| d.log_text().matches(&format!("http: said {what}")).count();
    let heard = d.ns.run({
        let guest = guest.clone();
        move || http_get_with(&guest, "X-Say: before\r\n")
    });
    assert_eq!(heard.unwrap().0, 200);
    d.wait_for("the first line logged", LONG, |_| said(&d, "before") == 1);
    d.stop_daemon();
    // No daemon runs: the guest writes, the VMM keeps it in its ring.
    let heard = d.ns.run(move || http_get_with(&guest, "X-Say: while-away\r\n"));
    assert_eq!(heard.unwrap().0, 200);
    d.start();
    assert_eq!(d.running("web").pid, web.pid, "adopted");
    d.wait_for("the line written meanwhile logged", LONG, |_| {
        said(&d, "while-away") == 1
    });
    // The replay also held the lines the first daemon logged: not logged again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(said(&d, "before"), 1, "{}", d.log_text());
    assert_eq!(said(&d, "while-away"), 1);
    assert_eq!(d.log_text().matches("listening on port").count(), 1);
    // The file is read once: a daemon killed later (no word left) logs no replay again.
    d.kill_daemon();
    d.start();
    d.running("web");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(said(&d, "while-away"), 1, "{}", d.log_text());
}

#[test]
fn a_vmm_stopped_with_sigstop_is_found_and_replaced() {
    let mut d = Daemon::new("sigstop");
    d.args = vec![
        "--resync".into(),
        "1".into(),
        "--metrics".into(),
        "127.0.0.1:9634".into(),
    ];
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    let web = d.running("web");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1");
    let checks = |by: &str| -> u64 {
        let (_, body) = d.ns.run(|| http_get("127.0.0.1:9634")).unwrap();
        let series = format!("unikerneld_liveness_checks_total{{by=\"{by}\"}} ");
        let line = body.lines().find_map(|l| l.strip_prefix(series.as_str()));
        line.unwrap_or_else(|| panic!("no {series} in {body}")).parse().unwrap()
    };
    // Its event loop's heartbeats (after 1, 2, 4 s) answer the checks of every resync: the
    // VMM is not pinged.
    std::thread::sleep(Duration::from_secs(3));
    let pinged = checks("ping");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(checks("ping"), pinged, "a VMM heard from lately was pinged");
    assert!(checks("heartbeat") >= 2);
    let pid = web.pid.unwrap();
    // SAFETY: kill(2) on the VMM this test's daemon started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    // Its heartbeats stop: after 20 s unheard it is pinged, misses two, and is replaced.
    let s = d.wait_for("a new VMM", LONG, |s| {
        s.services[0].state == State::Running && s.services[0].pid.is_some_and(|p| p != pid)
    });
    assert!(checks("ping") >= pinged + 2);
    let err = s.services[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("stopped answering"), "{err}");
    assert!(!alive(pid), "the stopped VMM was killed");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1", "a fresh guest serves");
}

#[test]
fn a_host_port_bound_to_loopback_is_not_served_elsewhere_and_can_move_in_place() {
    let mut d = Daemon::new("bind");
    d.start();
    let decl = |bind: &str| {
        format!(
            "unikernel \"web\" {{\n    image \"{}\"\n    cmdline \"name=web port=80\"\n    net {{ expose 8080 guest=80{bind} }}\n}}\n",
            image("http").display()
        )
    };
    d.declare("web.kdl", &decl(" bind=\"127.0.0.1\""));
    let web = d.running("web");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1");
    // The pool's gateway is an address of this host (on the tap): not served there.
    let gateway = "10.200.0.1:8080";
    let other = d.ns.run(move || http_get(gateway));
    assert!(other.is_err(), "served on {gateway}: {other:?}");
    // All addresses again: an update in place, the same VM.
    d.declare("web.kdl", &decl(""));
    let deadline = std::time::Instant::now() + LONG;
    let served = loop {
        if let Ok(r) = d.ns.run(move || http_get(gateway)) {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "never served on {gateway}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(served.1.trim(), "web 2");
    assert_eq!(d.service("web").unwrap().pid, web.pid);
}

#[test]
fn running_out_of_file_descriptors_is_survived_and_everything_recovers() {
    let mut d = Daemon::new("nofile");
    d.nofile = Some(96);
    d.args = vec!["--resync".into(), "1".into()];
    d.start();
    // A service whose guest never comes: its host port keeps connections waiting.
    d.declare(
        "web.kdl",
        "unikernel \"web\" {\n    image \"/nonexistent\"\n    restart \"never\"\n    net { expose 8080 }\n}\n",
    );
    d.wait_for("web failed", LONG, |s| {
        s.services.iter().any(|x| x.state == State::Failed)
    });
    // Remote clients pile up until the daemon has no descriptor left.
    let clients = d.ns.run(|| {
        (0..150)
            .filter_map(|_| std::net::TcpStream::connect("127.0.0.1:8080").ok())
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(500));
    // Meanwhile a new service is declared (no host port: its first console line is its
    // readiness, the case that used to hang in `booting` when the console could not be
    // connected).
    d.declare(
        "api.kdl",
        &format!(
            "unikernel \"api\" {{\n    image \"{}\"\n    cmdline \"name=api port=80\"\n    net {{ }}\n}}\n",
            image("http").display()
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    drop(clients);
    // The waiting connections end (their clients left, or the 10 s wait runs out), the
    // descriptors come back, and the daemon catches up on its own.
    let s = d.wait_for("api running after the exhaustion", Duration::from_secs(60), |s| {
        s.services.iter().any(|x| x.name == "api" && x.state == State::Running)
    });
    assert!(s.services.iter().any(|x| x.name == "web" && x.state == State::Failed));
    let log = d.log_text();
    assert!(log.contains("Too many open files"), "the exhaustion was said:\n{log}");
    // And it keeps converging: a removal is applied.
    d.undeclare("api.kdl");
    d.wait_for("api gone", LONG, |s| s.services.len() == 1);
}

#[test]
fn idle_connections_cannot_lock_a_service_out_for_longer_than_its_idle_timeout() {
    use std::io::Read;
    let mut d = Daemon::new("idleconn");
    d.start();
    d.declare(
        "web.kdl",
        &http_decl("web", 8080, "").replace(
            "net { expose 8080 guest=80 }",
            "net {\n        expose 8080 guest=80\n        connections max=2 idle=\"1s\"\n    }",
        ),
    );
    d.running("web");
    let (third_closed, idle_closed, after) = d.ns.run(|| {
        let connect = || {
            let s = std::net::TcpStream::connect("127.0.0.1:8080").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        };
        let mut idle: Vec<_> = (0..2).map(|_| connect()).collect();
        std::thread::sleep(Duration::from_millis(200));
        // At the cap: closed at once, not queued behind the quiet ones.
        let mut third = connect();
        let t = std::time::Instant::now();
        let third_closed = matches!(third.read(&mut [0u8; 1]), Ok(0)) && t.elapsed() < Duration::from_secs(1);
        // The quiet ones are closed after the idle timeout...
        let idle_closed = idle.iter_mut().all(|s| matches!(s.read(&mut [0u8; 1]), Ok(0)));
        // ...and a client is served again.
        (third_closed, idle_closed, http_get("127.0.0.1:8080"))
    });
    assert!(third_closed, "the connection over the cap was closed at once");
    assert!(idle_closed, "the idle connections were closed");
    assert_eq!(after.unwrap().0, 200);
}

#[test]
fn symlinked_declarations_are_followed_at_once_files_and_swapped_directories() {
    use std::os::unix::fs::symlink;
    let mut d = Daemon::new("symlinks");
    d.start();
    let decl = |name: &str, memory: &str| {
        let port = if name == "web" { 8080 } else { 8081 };
        http_decl(name, port, &format!("    memory \"{memory}\"\n"))
    };
    // A file whose target lives elsewhere (a checkout, /usr/share/...).
    let real = d.dir.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("web.kdl"), decl("web", "16M")).unwrap();
    symlink(real.join("web.kdl"), d.conf.join("web.kdl")).unwrap();
    // Kubernetes' ConfigMap layout: api.kdl -> ..data/api.kdl, ..data -> ..v1.
    let v1 = d.conf.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("api.kdl"), decl("api", "16M")).unwrap();
    symlink("..v1", d.conf.join("..data")).unwrap();
    symlink("..data/api.kdl", d.conf.join("api.kdl")).unwrap();
    let web = d.running("web");
    let api = d.running("api");

    // The target changes (written the safe way, next to it): noticed at once, not by the
    // 30 s resync.
    let t = std::time::Instant::now();
    std::fs::write(real.join(".web.kdl.tmp"), decl("web", "24M")).unwrap();
    std::fs::rename(real.join(".web.kdl.tmp"), real.join("web.kdl")).unwrap();
    d.wait_for("web replaced", Duration::from_secs(10), |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.pid != web.pid && x.state == State::Running)
    });
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(d.service("web").unwrap().memory_bytes, 24 << 20);

    // A new revision swapped in as one rename of ..data.
    let v2 = d.conf.join("..v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("api.kdl"), decl("api", "32M")).unwrap();
    symlink("..v2", d.conf.join("..data_tmp")).unwrap();
    std::fs::rename(d.conf.join("..data_tmp"), d.conf.join("..data")).unwrap();
    d.wait_for("api replaced", Duration::from_secs(10), |s| {
        s.services
            .iter()
            .any(|x| x.name == "api" && x.pid != api.pid && x.state == State::Running)
    });
    assert_eq!(d.service("api").unwrap().memory_bytes, 32 << 20);
}

/// A pids cgroup of the test's own (cgroup v1 here; v2 hosts have the controller in the
/// unified tree), removed when dropped.
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    fn new(tag: &str) -> PidsCgroup {
        let base = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.procs").exists() && (p.join("pids.max").exists() || p.ends_with("pids")))
            .expect("a pids cgroup controller");
        let dir = base.join(format!("ukt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        PidsCgroup(dir)
    }

    fn set_max(&self, max: &str) {
        std::fs::write(self.0.join("pids.max"), max).unwrap();
    }

    fn current(&self) -> u64 {
        std::fs::read_to_string(self.0.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_host_out_of_processes_puts_services_in_back_off_and_they_start_when_room_comes_back() {
    let cg = PidsCgroup::new("pids");
    let mut d = Daemon::new("pids");
    d.cgroup = Some(cg.0.clone());
    d.args = vec!["--resync".into(), "1".into()];
    d.start();
    d.declare("a.kdl", &http_decl("a", 8080, ""));
    d.running("a");
    // Room for what runs now and a little more: not for four more VMMs.
    cg.set_max(&(cg.current() + 3).to_string());
    for (i, n) in ["b", "c", "d", "e"].iter().enumerate() {
        d.declare(&format!("{n}.kdl"), &http_decl(n, 8081 + i as u16, ""));
    }
    let s = d.wait_for("a start refused for lack of processes", LONG, |s| {
        s.services.iter().any(|x| {
            x.last_error
                .as_deref()
                .is_some_and(|e| e.contains("out of resources") || e.contains("out of threads"))
        })
    });
    assert!(s.services.iter().all(|x| x.state != State::Failed), "{s:#?}");
    // Room again: everything starts, nothing was given up on.
    cg.set_max("max");
    d.wait_for("all five running", Duration::from_secs(60), |s| {
        s.services.len() == 5 && s.services.iter().all(|x| x.state == State::Running)
    });
    drop(d);
}

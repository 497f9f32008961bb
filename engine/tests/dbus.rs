//! The D-Bus API and `unikernelctl`, against a real daemon with real VMs on a private
//! dbus-daemon that runs Debian's system bus policy plus ours.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod support;

use std::process::{Command, Output};
use std::time::Duration;

use futures_util::StreamExt;
use support::bus::PrivateBus;
use support::*;
use unikerneld::dbus::client::{ManagerProxy, UnikernelProxy};
use unikerneld::status::State;

const LONG: Duration = Duration::from_secs(30);

fn with_bus(tag: &str) -> (Daemon, PrivateBus) {
    let mut d = Daemon::new(tag);
    let bus = PrivateBus::start(&d.dir);
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    d.declare("api.kdl", &http_decl("api-1.x", 8081, ""));
    d.start_with(&[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)]);
    d.running("web");
    d.running("api-1.x");
    (d, bus)
}

fn run(bus: &PrivateBus, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// `program ARGS` as the `nobody` user.
fn run_as_nobody(bus: &PrivateBus, program: &str, args: &[&str]) -> Output {
    let mut full = vec!["--reuid=nobody", "--regid=nogroup", "--clear-groups", program];
    full.extend_from_slice(args);
    run(bus, "setpriv", &full)
}

fn outcome(out: Output) -> (i32, String, String) {
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn ctl(bus: &PrivateBus, args: &[&str]) -> (i32, String, String) {
    outcome(run(bus, env!("CARGO_BIN_EXE_unikernelctl"), args))
}

fn ctl_as_nobody(bus: &PrivateBus, args: &[&str]) -> (i32, String, String) {
    outcome(run_as_nobody(bus, env!("CARGO_BIN_EXE_unikernelctl"), args))
}

/// `busctl get-property` of one property, as busctl prints it.
fn busctl_get(bus: &PrivateBus, path: &str, interface: &str, property: &str) -> String {
    text(
        &run(
            bus,
            "busctl",
            &["get-property", "org.unikerneld1", path, interface, property],
        )
        .stdout,
    )
}

#[test]
fn introspection_list_status_and_busctl_gdbus_match_the_real_vms() {
    let (d, bus) = with_bus("bus");
    let out = run(&bus, "busctl", &["introspect", "org.unikerneld1", "/org/unikerneld1"]);
    let intro = text(&out.stdout);
    for member in [
        ".ListUnikernels",
        ".GetUnikernel",
        ".Reload",
        ".Plan",
        ".DeclarationErrors",
        ".UnikernelNew",
        ".UnikernelRemoved",
        ".Version",
        ".ConfigDir",
        ".StateCounts",
    ] {
        assert!(
            intro.contains(member),
            "{member} missing:\n{intro}\n{}",
            text(&out.stderr)
        );
    }
    // The name escapes like systemd's: '-' -> _2d, '.' -> _2e.
    let out = run(
        &bus,
        "busctl",
        &[
            "introspect",
            "org.unikerneld1",
            "/org/unikerneld1/unikernel/api_2d1_2ex",
        ],
    );
    let intro = text(&out.stdout);
    for member in [
        ".Start",
        ".Stop",
        ".Restart",
        ".Logs",
        ".State",
        ".Pid",
        ".BootTimeUSec",
        ".SourceFile",
        ".SpecHash",
        ".ExposedPorts",
        ".MemoryBytes",
        ".Standby",
        ".Wake",
        ".Wakes",
        ".LastWakeUSec",
        ".SnapshotBytes",
        ".StandbySettings",
    ] {
        assert!(intro.contains(member), "{member} missing:\n{intro}");
    }
    // Introspection data documents the members.
    let xml = text(
        &run(
            &bus,
            "gdbus",
            &[
                "introspect",
                "--system",
                "--dest",
                "org.unikerneld1",
                "--object-path",
                "/org/unikerneld1/unikernel/web",
                "--xml",
            ],
        )
        .stdout,
    );
    assert!(
        xml.contains("holds the unikernel stopped until Start, Restart"),
        "{xml}"
    );

    // list over the bus = what the daemon observed.
    let status = d.snapshot().unwrap();
    let (code, out, err) = ctl(&bus, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 2);
    for s in &status.services {
        let row = list.iter().find(|r| r["name"] == s.name.as_str()).unwrap();
        assert_eq!(row["state"], "running");
        assert_eq!(row["pid"], s.pid.unwrap());
        assert_eq!(row["address"], s.address.unwrap().to_string());
    }
    let (code, out, _) = ctl(&bus, &["status", "web", "--json"]);
    assert_eq!(code, 0);
    let web: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = d.service("web").unwrap();
    assert_eq!(web["pid"], s.pid.unwrap());
    assert_eq!(web["source_line"], 1);
    assert!(web["boot_time_usec"].as_u64().unwrap() > 0);
    assert_eq!(web["exposed_ports"], serde_json::json!([[8080, 80]]));
    assert!(
        web["logs"][0].as_str().unwrap().contains("listening on port 80"),
        "{web}"
    );
    let (code, out, _) = ctl(&bus, &["status", "web"]);
    assert_eq!(code, 0);
    assert!(out.contains("State: running") && out.contains("web.kdl:1"), "{out}");
    let (code, out, _) = ctl(&bus, &["logs", "web", "-n", "1"]);
    assert_eq!((code, out.trim()), (0, "http: web listening on port 80"));
    let (code, _, err) = ctl(&bus, &["status", "nope"]);
    assert_eq!(code, 4, "{err}");

    // busctl and gdbus, as a user would call them.
    let out = busctl_get(
        &bus,
        "/org/unikerneld1/unikernel/web",
        "org.unikerneld1.Unikernel",
        "State",
    );
    assert_eq!(out.trim(), "s \"running\"");
    let out = text(
        &run(
            &bus,
            "gdbus",
            &[
                "call",
                "--system",
                "--dest",
                "org.unikerneld1",
                "--object-path",
                "/org/unikerneld1",
                "--method",
                "org.unikerneld1.Manager.GetUnikernel",
                "web",
            ],
        )
        .stdout,
    );
    assert_eq!(out.trim(), "(objectpath '/org/unikerneld1/unikernel/web',)");

    // Restart over the bus: a new VM.
    let (code, _, err) = ctl(&bus, &["restart", "web"]);
    assert_eq!(code, 0, "{err}");
    let old = s.pid;
    d.wait_for("web restarted", LONG, |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.state == State::Running && x.pid != old)
    });
    // Stop holds it stopped; Start brings it back.
    assert_eq!(ctl(&bus, &["stop", "web"]).0, 0);
    d.wait_for("web stopped", LONG, |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.state == State::Stopped && x.held && x.pid.is_none())
    });
    let (code, out, _) = ctl(&bus, &["status", "web"]);
    assert_eq!(code, 3, "not running: {out}");
    assert!(out.contains("stopped by an operator"), "{out}");
    assert_eq!(ctl(&bus, &["start", "web"]).0, 0);
    d.running("web");
    assert!(d.get(8080).unwrap().1.starts_with("web "));

    // A broken file shows in DeclarationErrors with its place.
    d.declare("bad.kdl", "unikernel \"x\" {\n    imag \"/x\"\n}\n");
    d.wait_for("an error", LONG, |s| !s.declaration_errors.is_empty());
    let (_, out, _) = ctl(&bus, &["status"]);
    assert!(out.contains("bad.kdl:2:5"), "{out}");
    let out = busctl_get(&bus, "/org/unikerneld1", "org.unikerneld1.Manager", "DeclarationErrors");
    assert!(out.contains("bad.kdl") && out.contains(" 2 5 "), "{out}");
}

#[test]
fn a_subscriber_receives_properties_changed_and_new_objects() {
    let (d, bus) = with_bus("busprops");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let address = bus.address.clone();
    let states = rt.block_on(async move {
        let conn = zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap();
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let path = manager.get_unikernel("web").await.unwrap();
        let web = UnikernelProxy::builder(&conn)
            .path(path.clone())
            .unwrap()
            .build()
            .await
            .unwrap();
        // The raw PropertiesChanged signals, each with the value it carried.
        let props = zbus::fdo::PropertiesProxy::builder(&conn)
            .destination("org.unikerneld1")
            .unwrap()
            .path(path)
            .unwrap()
            .build()
            .await
            .unwrap();
        let mut changes = props.receive_properties_changed().await.unwrap();
        let mut news = manager.receive_unikernel_new().await.unwrap();
        web.restart().await.unwrap();
        let mut seen: Vec<String> = Vec::new();
        while seen.last().map(String::as_str) != Some("running") {
            let signal = tokio::time::timeout(Duration::from_secs(20), changes.next())
                .await
                .unwrap()
                .unwrap();
            let args = signal.args().unwrap();
            assert_eq!(args.interface_name.as_str(), "org.unikerneld1.Unikernel");
            if let Some(v) = args.changed_properties.get("State") {
                seen.push(String::try_from(v.try_clone().unwrap()).unwrap());
            }
        }
        // A new declaration appears as a new object, announced by UnikernelNew.
        std::fs::write(d.conf.join("new.kdl"), http_decl("new", 8090, "")).unwrap();
        let signal = tokio::time::timeout(Duration::from_secs(20), news.next())
            .await
            .unwrap()
            .unwrap();
        let args = signal.args().unwrap();
        assert_eq!(args.name, "new");
        assert_eq!(args.path.as_str(), "/org/unikerneld1/unikernel/new");
        seen
    });
    assert_eq!(states, vec!["stopping", "booting", "running"]);
}

#[test]
fn nobody_can_read_but_not_change_or_own_the_name() {
    let (d, bus) = with_bus("busacl");
    let pid = d.service("web").unwrap().pid;
    let (code, out, err) = ctl_as_nobody(&bus, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web") && out.contains("running"), "{out}");
    // Consoles carry what guests print: root's and the unikerneld group's (the package
    // test shows a member reading them), not everyone's.
    let (code, _, err) = ctl_as_nobody(&bus, &["logs", "web"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("access denied"), "{err}");
    let (code, out, err) = ctl(&bus, &["logs", "web"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listening"), "{out}");
    // A new daemon adopts the VM and hands its VMM a console feed over the control
    // socket: the VMM replays its ring into it, so the console lines are there again.
    let mut d = d;
    d.kill_daemon();
    d.start_with(&[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)]);
    assert_eq!(d.running("web").pid, pid, "adopted");
    // The hand-over runs next to the adoption: give it a moment.
    let deadline = std::time::Instant::now() + LONG;
    let (code, out, err) = loop {
        let got = ctl(&bus, &["logs", "web"]);
        if got.1.contains("listening") || std::time::Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((code, out.trim()), (0, "http: web listening on port 80"), "{err}");
    assert!(!d.log_text().contains("takes no console feed"), "{}", d.log_text());
    // Status still works for them, without the console lines.
    let (code, out, err) = ctl_as_nobody(&bus, &["status", "web"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("State: running") && out.contains("unikerneld group only"),
        "{out}"
    );
    assert!(!out.contains("listening"), "{out}");
    let (code, _, err) = ctl_as_nobody(&bus, &["restart", "web"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("access denied"), "{err}");
    let (code, _, err) = ctl_as_nobody(&bus, &["reload"]);
    assert_eq!(code, 6, "{err}");
    let (code, _, err) = ctl_as_nobody(&bus, &["sync"]);
    assert_eq!(code, 6, "sync is root's: {err}");
    // Root may, but this daemon reads a plain directory: it says so.
    let (code, _, err) = ctl(&bus, &["sync"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not following a git repository"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.service("web").unwrap().pid, pid, "nothing was restarted");
    let out = run_as_nobody(
        &bus,
        "gdbus",
        &[
            "call",
            "--system",
            "--dest",
            "org.freedesktop.DBus",
            "--object-path",
            "/org/freedesktop/DBus",
            "--method",
            "org.freedesktop.DBus.RequestName",
            "org.unikerneld1",
            "0",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("AccessDenied"), "{}", text(&out.stderr));
}

#[test]
fn without_a_bus_the_daemon_runs_and_says_so_once_and_the_cli_says_why() {
    let mut d = Daemon::new("nobus");
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    let missing = format!("unix:path={}", d.dir.join("no-such-bus").display());
    d.start_with(&[("DBUS_SYSTEM_BUS_ADDRESS", &missing)]);
    d.running("web");
    assert_eq!(d.log_text().matches("D-Bus: no API").count(), 1, "{}", d.log_text());
    let out = Command::new(env!("CARGO_BIN_EXE_unikernelctl"))
        .arg("list")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stderr).contains("cannot reach the system bus"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn operators_put_a_service_on_standby_and_wake_it_over_the_bus() {
    let (d, bus) = with_bus("busstandby");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 1");
    let (code, _, err) = ctl_as_nobody(&bus, &["standby", "web"]);
    assert_eq!(code, 6, "only root: {err}");
    let (code, _, err) = ctl(&bus, &["wake", "web"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not on standby (state running)"), "{err}");

    let (code, _, err) = ctl(&bus, &["standby", "web"]);
    assert_eq!(code, 0, "{err}");
    let s = d.wait_for("web on standby", LONG, |s| {
        s.services.iter().any(|x| x.name == "web" && x.state == State::Standby)
    });
    assert!(s
        .services
        .iter()
        .any(|x| x.name == "api-1.x" && x.state == State::Running));
    let (code, out, _) = ctl(&bus, &["status", "web"]);
    assert_eq!(code, 0, "standby counts as up");
    assert!(out.contains("State: standby") && out.contains("Snapshot: "), "{out}");
    let bytes = busctl_get(
        &bus,
        "/org/unikerneld1/unikernel/web",
        "org.unikerneld1.Unikernel",
        "SnapshotBytes",
    );
    let bytes: u64 = bytes.trim().strip_prefix("t ").unwrap().parse().unwrap();
    assert!(bytes > 0, "{bytes}");

    // Woken by hand, then by a request after the next standby.
    let (code, _, err) = ctl(&bus, &["wake", "web"]);
    assert_eq!(code, 0, "{err}");
    d.running("web");
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 2", "the same guest");
    let (code, _, err) = ctl(&bus, &["standby", "web"]);
    assert_eq!(code, 0, "{err}");
    d.wait_for("web on standby again", LONG, |s| {
        s.services.iter().any(|x| x.name == "web" && x.state == State::Standby)
    });
    assert_eq!(d.get(8080).unwrap().1.trim(), "web 3");
    d.wait_for("two wakes", LONG, |s| {
        s.services.iter().any(|x| x.name == "web" && x.wakes == 2)
    });
    let wakes = busctl_get(
        &bus,
        "/org/unikerneld1/unikernel/web",
        "org.unikerneld1.Unikernel",
        "Wakes",
    );
    assert_eq!(wakes.trim(), "t 2");
    let last = busctl_get(
        &bus,
        "/org/unikerneld1/unikernel/web",
        "org.unikerneld1.Unikernel",
        "LastWakeUSec",
    );
    assert!(
        last.trim().strip_prefix("t ").unwrap().parse::<u64>().unwrap() > 0,
        "{last}"
    );
}

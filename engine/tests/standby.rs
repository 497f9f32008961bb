//! Scale to zero end to end: the real daemon, the http unikernel under /dev/kvm, its host
//! port in a namespace of the test's own. Idle -> snapshot -> no process; a connection ->
//! the same guest again, its request counter intact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use support::*;
use unikerneld::status::{State, Status};

const LONG: Duration = Duration::from_secs(30);

fn on_standby(d: &Daemon, name: &str) -> Status {
    let s = d.wait_for(&format!("{name} on standby"), LONG, |s| {
        s.services.iter().any(|x| x.name == name && x.state == State::Standby)
    });
    std::sync::Arc::unwrap_or_clone(s.services.into_iter().find(|x| x.name == name).unwrap())
}

fn body(d: &Daemon, port: u16) -> String {
    let (status, body) = d.get(port).expect("request");
    assert_eq!(status, 200);
    body.trim().to_string()
}

#[test]
fn an_idle_service_sleeps_without_a_process_and_the_next_request_wakes_the_same_guest() {
    let mut d = Daemon::new("standby");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, "    standby idle=\"1s\"\n"));
    let first = d.running("web");
    assert_eq!(body(&d, 8080), "web 1");

    let sleeping = on_standby(&d, "web");
    assert_eq!(sleeping.pid, None);
    assert!(!alive(first.pid.unwrap()), "the VMM is gone");
    assert!(sleeping.snapshot_bytes.unwrap_or(0) > 0);
    assert_eq!(d.taps(), vec!["uk-web".to_string()], "the tap stays");
    let snap = d.snapshots().join("web");
    assert!(snap.join("state").exists() && snap.join("memory").exists());

    // The counter survives: the same guest answers.
    assert_eq!(body(&d, 8080), "web 2");
    let awake = d.running("web");
    assert_eq!(awake.wakes, 1);
    assert!(awake.last_wake_ms.is_some_and(|ms| ms > 0.0));
    assert_eq!(awake.restarts, 0);

    // 20 connections at once wake it once, and every one is served.
    on_standby(&d, "web");
    let port = 8080;
    let ns = d.ns.name.clone();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let ns = Netns { name: ns.clone() };
            std::thread::spawn(move || {
                let r = ns.run(move || http_get(&format!("127.0.0.1:{port}")));
                std::mem::forget(ns); // the daemon's namespace: not ours to delete
                r
            })
        })
        .collect();
    let mut counters: Vec<u64> = clients
        .into_iter()
        .map(|c| {
            let (status, body) = c.join().unwrap().expect("a concurrent request");
            assert_eq!(status, 200);
            body.trim().strip_prefix("web ").unwrap().parse().unwrap()
        })
        .collect();
    counters.sort();
    assert_eq!(counters, (3..23).collect::<Vec<u64>>(), "one guest served them all");
    d.wait_for("the second wake counted", LONG, |s| s.services[0].wakes == 2);
}

#[test]
fn damaged_snapshots_boot_afresh_and_the_request_is_still_served() {
    let mut d = Daemon::new("badsnap");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, "    standby idle=\"1s\"\n"));
    d.running("web");
    assert_eq!(body(&d, 8080), "web 1");
    let state = d.snapshots().join("web/state");

    on_standby(&d, "web");
    let mut bytes = std::fs::read(&state).unwrap();
    let at = bytes.len() - 64;
    bytes[at] ^= 0x20;
    std::fs::write(&state, bytes).unwrap();
    assert_eq!(body(&d, 8080), "web 1", "a fresh guest: the counter starts again");
    let s = d.running("web");
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("corrupt"),
        "{:?}",
        s.last_error
    );

    on_standby(&d, "web");
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 3]).unwrap();
    assert_eq!(body(&d, 8080), "web 1");
    assert!(d
        .running("web")
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("truncated"));
}

#[test]
fn a_daemon_restart_during_standby_keeps_it_on_standby_and_wakes_it_correctly() {
    let mut d = Daemon::new("standbyadopt");
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, "    standby idle=\"1s\"\n"));
    d.running("web");
    assert_eq!(body(&d, 8080), "web 1");
    on_standby(&d, "web");
    d.kill_daemon();
    d.start();
    let s = on_standby(&d, "web");
    assert_eq!(s.pid, None);
    assert!(d.log_text().contains("on standby (adopted)"));
    assert_eq!(body(&d, 8080), "web 2");
}

#[test]
fn a_held_connection_sleeps_with_the_service_and_its_next_request_wakes_it() {
    let mut d = Daemon::new("hold");
    d.start();
    d.declare(
        "web.kdl",
        &http_decl("web", 8080, "    standby idle=\"1s\" connections=\"hold\"\n"),
    );
    d.running("web");
    let (first, second) = d.ns.run(|| {
        let stream = std::net::TcpStream::connect("127.0.0.1:8080").unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        let mut get = |w: &mut std::net::TcpStream| {
            w.write_all(b"GET / HTTP/1.1\r\nHost: guest\r\n\r\n").unwrap();
            let mut length = 0;
            let mut line = String::new();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            String::from_utf8(body).unwrap().trim().to_string()
        };
        let first = get(&mut w);
        // Quiet for longer than the idle time: the service sleeps, the connection stays.
        std::thread::sleep(Duration::from_millis(2500));
        let second = get(&mut w);
        (first, second)
    });
    assert_eq!(first, "web 1");
    assert_eq!(second, "web 2", "the same connection, after a wake");
    d.wait_for("the wake counted (it did sleep in between)", LONG, |s| {
        s.services[0].wakes == 1
    });
}

/// A small tmpfs at a path, unmounted when dropped.
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    fn mount(at: &std::path::Path) -> TinyDisk {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs at {}", at.display());
        TinyDisk(at.to_path_buf())
    }

    /// The same filesystem, with room: every namespace that has it sees the change.
    fn grow(&self) {
        let st = std::process::Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_snapshot_that_cannot_be_written_keeps_the_service_running_and_a_lost_tap_is_rebuilt_on_wake() {
    let mut d = Daemon::new("standbyfail");
    // Snapshots go to a disk that is full: saving fails. (A tmpfs of 16 KiB, mounted before
    // the daemon starts so that its mount namespace, and its jailed VMMs', have it too.)
    std::fs::create_dir_all(d.snapshots()).unwrap();
    let full = TinyDisk::mount(&d.snapshots());
    d.start();
    d.declare("web.kdl", &http_decl("web", 8080, "    standby idle=\"500ms\"\n"));
    let first = d.running("web");
    assert_eq!(body(&d, 8080), "web 1");
    let s = d.wait_for("a failed standby", LONG, |s| {
        s.services[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("standby failed"))
    });
    assert_eq!(s.services[0].state, State::Running);
    assert_eq!(s.services[0].pid, first.pid, "the same VM runs on");
    assert_eq!(body(&d, 8080), "web 2");

    // Room again: it goes to standby. Then its tap is deleted behind the daemon's back:
    // the wake sets the network up again instead of resuming on a tap without a route.
    full.grow();
    on_standby(&d, "web");
    d.ip(&["link", "del", "uk-web"]);
    assert_eq!(body(&d, 8080), "web 3", "the same guest, on a new tap");
    assert_eq!(d.taps(), vec!["uk-web".to_string()]);
}

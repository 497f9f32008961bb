//! The warm pool end to end: a real daemon in a test network namespace keeps a VMM with
//! its VM created for the shape it just started; the next start of that shape takes it
//! (its start line says so), serves, runs jailed like any other, and shows its service
//! on its command line; with `--warm-pool 0` nothing is kept.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod support;

use std::time::Duration;

use support::*;

fn wait_pooled(d: &Daemon, n: usize) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let p = d.pooled();
        if p.len() == n {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} pooled VMMs, want {n}",
            p.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_start_takes_a_pooled_vmm_of_its_shape_and_the_pool_refills() {
    let mut d = Daemon::new("warm");
    d.start();
    assert!(d.pooled().is_empty(), "no start yet: no pool");
    d.declare("a.kdl", &http_decl("a", 23_001, ""));
    d.running("a");
    // The shape just started gets a VMM ready for the next start.
    let first = wait_pooled(&d, 1);
    d.declare("b.kdl", &http_decl("b", 23_002, ""));
    let b = d.running("b");
    assert_eq!(b.pid, Some(first[0]), "b runs in the pooled VMM");
    assert_eq!(d.get(23_002).unwrap().1.trim(), "b 1");
    let log = d.log_text();
    let pooled_starts: Vec<&str> = log.lines().filter(|l| l.contains("from the warm pool")).collect();
    assert_eq!(pooled_starts.len(), 1, "{log}");
    assert!(pooled_starts[0].contains("running (booted in"), "{log}");
    assert!(pooled_starts[0].contains("hand-off "), "{log}");
    assert!(
        pooled_starts[0].contains("UNIKERNEL=b") || pooled_starts[0].contains("\"b\""),
        "{log}"
    );
    // Seen from outside it is b's VMM: its arguments name b's console (the sweep of a
    // later daemon finds it that way), and it is jailed like a cold-started one.
    let cmdline = String::from_utf8(std::fs::read(format!("/proc/{}/cmdline", first[0])).unwrap()).unwrap();
    assert!(cmdline.contains("/services/b/console.sock"), "{cmdline:?}");
    assert!(!cmdline.contains("--pool-fd"), "{cmdline:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", first[0])).unwrap();
    // (The tests run as root, as the daemon does: it jails.)
    assert!(status.lines().any(|l| l.starts_with("Seccomp:\t2")), "{status}");
    assert!(!status.lines().any(|l| l.starts_with("Uid:\t0")), "jailed: {status}");
    // And the pool refilled behind it, with a new VMM.
    let second = wait_pooled(&d, 1);
    assert_ne!(second, first);

    // Restarting the daemon: its pooled VMMs leave with it (their socket closed), and the
    // next daemon adopts a and b as usual.
    d.kill_daemon();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{}", second[0])).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", second[0]))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(std::time::Instant::now() < deadline, "a pooled VMM outlived its daemon");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.start();
    assert_eq!(d.running("b").pid, b.pid, "adopted, not restarted");
    assert_eq!(d.get(23_002).unwrap().1.trim(), "b 2");
}

#[test]
fn no_pool_is_kept_with_warm_pool_0() {
    let mut d = Daemon::new("warm0");
    d.args.extend(["--warm-pool".to_string(), "0".to_string()]);
    d.start();
    d.declare("a.kdl", &http_decl("a", 23_011, ""));
    d.running("a");
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.pooled().is_empty());
    let log = d.log_text();
    assert!(!log.contains("from the warm pool"));
    assert!(log.contains("fork and exec "), "{log}");
}

#[test]
fn a_wake_from_standby_resumes_in_a_pooled_vmm() {
    let mut d = Daemon::new("warmwake");
    d.start();
    d.declare("s.kdl", &http_decl("s", 23_021, "standby idle=\"500ms\"\n"));
    d.running("s");
    assert_eq!(d.get(23_021).unwrap().1.trim(), "s 1");
    d.wait_for("s on standby", Duration::from_secs(10), |st| {
        st.services
            .iter()
            .any(|x| x.name == "s" && x.state == unikerneld::status::State::Standby)
    });
    let waiting = wait_pooled(&d, 1);
    // The request wakes it: resumed in the pooled process, with its state.
    assert_eq!(d.get(23_021).unwrap().1.trim(), "s 2");
    let s = d.running("s");
    assert_eq!(s.pid, Some(waiting[0]), "woken in the pooled VMM");
    let log = d.log_text();
    let wake = log
        .lines()
        .find(|l| l.contains("woken from standby"))
        .unwrap_or_else(|| panic!("no wake line:\n{log}"));
    assert!(wake.contains("from the warm pool"), "{wake}");
}

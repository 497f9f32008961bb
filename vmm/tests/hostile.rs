//! A malicious guest against the real VMM: examples/unikernels' `hostile` hammers port I/O,
//! the virtio-mmio registers and unbacked MMIO, and hands the NIC rings and buffers outside
//! its memory, descriptor loops and lying lengths. Beside it, a well-behaved http guest on
//! its own VMM. The hostile guest's VMM survives (the guest reports all its rounds and
//! shuts down) or ends with one line and a VMM exit status — never a signal, never the
//! seccomp trap — and the neighbour serves before, during and after.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use contract::exit::{last_error, ExitStatus};

#[test]
fn a_hostile_guest_cannot_take_down_its_vmm_or_its_neighbour() {
    require_kvm();
    let ns = Netns::new("hostile");
    ns.persistent_tap("uk-good", "10.0.0.1/24");
    ns.persistent_tap("uk-bad", "10.0.1.1/24");
    let http = image("http");
    let _good = KillOnDrop(
        ns.command(&vmm_binary())
            .arg("--kernel")
            .arg(&http)
            .args([
                "--tap",
                "uk-good",
                "--cmdline",
                "ip=10.0.0.2/24 gw=10.0.0.1 port=80 name=good",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let get = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ns.run(|| http_get("10.0.0.2:80")) {
                Ok((200, body)) => return body,
                other if Instant::now() > deadline => panic!("the neighbour stopped serving: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    };
    assert_eq!(get().trim(), "good 1");

    let hostile = image("hostile");
    for seed in [1u64, 2, 3] {
        let mut bad = KillOnDrop(
            ns.command(&vmm_binary())
                .arg("--kernel")
                .arg(&hostile)
                .args(["--tap", "uk-bad", "--jail-uid", "71500", "--jail-gid", "71500"])
                .arg("--cmdline")
                .arg(format!("rounds=20000 seed={seed}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        let mut served = 0;
        let status = loop {
            if let Some(status) = bad.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "seed {seed}: the hostile VM did not end"
            );
            get();
            served += 1;
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        bad.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        bad.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let code = status
            .code()
            .unwrap_or_else(|| panic!("seed {seed}: the VMM was killed: {status:?}\n{err}"));
        assert_ne!(
            code,
            i32::from(ExitStatus::BadSyscall.code()),
            "seed {seed}: the guest reached a forbidden call\n{err}"
        );
        match ExitStatus::from_code(code) {
            Some(ExitStatus::Stopped) => {
                assert!(out.contains("hostile: survived 20000 rounds"), "seed {seed}: {out}")
            }
            Some(ExitStatus::GuestDied) => {
                assert!(last_error(&err).is_some(), "seed {seed}: died without a reason: {err}")
            }
            other => panic!("seed {seed}: exit {code} ({other:?})\n{err}"),
        }
        let warnings = err
            .lines()
            .filter(|l| l.starts_with(contract::exit::WARNING_PREFIX))
            .count();
        eprintln!(
            "hostile seed {seed}: exit {code} after {:?}, {warnings} warning lines, neighbour served {served} requests meanwhile; {}",
            t0.elapsed(),
            out.lines().last().unwrap_or("")
        );
        assert!(
            warnings <= 50,
            "seed {seed}: the VMM's log is flooded ({warnings} lines)"
        );
    }
    let body = get();
    assert!(body.starts_with("good "), "{body}");
}

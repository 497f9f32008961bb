//! The http unikernel on a real tap, in a network namespace of the test's own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const TAP: &str = "uk-t0";

/// Boots `http` in `ns` on a tap the VMM creates, gives the host side 10.0.0.1/24, and
/// waits for the guest's readiness line.
fn boot_http(ns: &Netns, name: &str) -> KillOnDrop {
    require_kvm();
    let mut child = KillOnDrop(
        ns.command(std::path::Path::new(env!("CARGO_BIN_EXE_unikernel-vmm")))
            .arg("--kernel")
            .arg(image("http"))
            .args(["--tap", TAP, "--mac", "52:54:00:00:00:02", "--memory", "32M"])
            .args(["--cmdline", &format!("ip=10.0.0.2/24 gw=10.0.0.1 port=80 name={name}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn unikernel-vmm"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.ip(&["link", "show", TAP]).is_err() {
        assert!(Instant::now() < deadline, "the VMM did not create {TAP}");
        std::thread::sleep(Duration::from_millis(5));
    }
    ns.ip(&["addr", "add", "10.0.0.1/24", "dev", TAP]).unwrap();
    ns.ip(&["link", "set", TAP, "up"]).unwrap();
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, format!("http: {name} listening on port 80\n"));
    child
}

fn counter(body: &str, name: &str) -> u64 {
    body.strip_prefix(name)
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("body {body:?}"))
}

#[test]
fn http_guest_serves_sequential_and_concurrent_requests_and_idles_for_free() {
    let ns = Netns::new("http");
    let vm = boot_http(&ns, "web");

    let (first, sequential) = ns.run(|| {
        let first = http_get("10.0.0.2:80").expect("first request");
        let mut last = 0;
        for i in 0..1000 {
            let (status, body) = http_get("10.0.0.2:80").unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(status, 200);
            let n = counter(&body, "web");
            assert!(n > last, "counter must grow: {n} after {last}");
            last = n;
        }
        (first, last)
    });
    assert_eq!(first, (200, "web 1\n".to_string()));
    assert_eq!(sequential, 1001);

    let concurrent: Vec<(u16, String)> = ns.run(|| {
        let threads: Vec<_> = (0..50)
            .map(|_| {
                std::thread::spawn(|| {
                    // Threads inherit the namespace of the thread that spawned them.
                    http_get("10.0.0.2:80").expect("concurrent request")
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(concurrent.iter().all(|(s, _)| *s == 200));
    let mut counters: Vec<u64> = concurrent.iter().map(|(_, b)| counter(b, "web")).collect();
    counters.sort();
    counters.dedup();
    assert_eq!(counters.len(), 50, "every concurrent request counted once");

    // Idle: no requests for 5 s; the VM must stay below 1% of a CPU. The 50 connections
    // just closed: let their last segments and the guest's timers for them pass first
    // (two seconds), then measure.
    std::thread::sleep(Duration::from_secs(2));
    // Measured in nanoseconds: clock ticks (10 ms) are too coarse for a 50 ms budget.
    let before = cpu_ns(vm.0.id());
    std::thread::sleep(Duration::from_secs(5));
    let used = cpu_ns(vm.0.id()) - before;
    eprintln!("idle VM: {:.1} ms of CPU in 5 s", used as f64 / 1e6);
    assert!(
        used < 50_000_000,
        "idle VM used {:.1} ms of CPU in 5 s (1% is 50 ms)",
        used as f64 / 1e6
    );

    drop(vm);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.ip(&["link", "show", TAP]).is_ok() {
        assert!(Instant::now() < deadline, "{TAP} outlived its VM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_tap_fd_can_be_handed_over() {
    // The engine's way: it opens the tap and passes the fd; the VMM opens nothing itself.
    let ns = Netns::new("fd");
    ns.ip(&["tuntap", "add", "dev", "uk-fd", "mode", "tap", "vnet_hdr"])
        .unwrap();
    ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "uk-fd"]).unwrap();
    ns.ip(&["link", "set", "uk-fd", "up"]).unwrap();
    let vmm_path = env!("CARGO_BIN_EXE_unikernel-vmm");
    let http = image("http");
    // Open the tap here, in a thread inside the namespace, and let the VMM inherit it.
    let fd = ns.run(|| open_tap_fd("uk-fd"));
    let mut child = std::process::Command::new(vmm_path);
    child
        .arg("--kernel")
        .arg(&http)
        // No --mac: derived from the tap's name. Application arguments after ` -- `: the
        // VMM's device parameter must go before them, or the guest never finds its NIC.
        .args(["--net-fd", &fd.to_string()])
        .args(["--cmdline", "ip=10.0.0.2/24 port=80 name=byfd -- --app-flag x"])
        .stdout(Stdio::piped());
    let mut vm = KillOnDrop(child.spawn().unwrap());
    // SAFETY: the child has its copy; ours is no longer needed.
    unsafe { libc::close(fd) };
    let mut line = String::new();
    BufReader::new(vm.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line,
        "http: byfd listening on port 80 (application arguments: --app-flag x)\n"
    );
    let (status, body) = ns.run(|| http_get("10.0.0.2:80").unwrap());
    assert_eq!((status, body.as_str()), (200, "byfd 1\n"));
    // The guest answered from the MAC derived from "uk-fd".
    let neigh = std::process::Command::new("ip")
        .args(["-n", &ns.name, "neigh", "show", "dev", "uk-fd"])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    let mac = contract::mac::MacAddr::derived("uk-fd").to_string();
    assert!(neigh.contains(&mac), "{mac} not in {neigh}");
}

/// Opens tap `name` with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, inheritable (no CLOEXEC).
fn open_tap_fd(name: &str) -> i32 {
    // SAFETY: plain open/ioctl on a struct we own.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR);
        assert!(fd >= 0);
        let mut req = [0u8; 40];
        req[..name.len()].copy_from_slice(name.as_bytes());
        req[16..18].copy_from_slice(&(0x0002i16 | 0x1000 | 0x4000).to_ne_bytes());
        assert_eq!(libc::ioctl(fd, 0x4004_54ca, req.as_mut_ptr()), 0, "TUNSETIFF");
        fd
    }
}

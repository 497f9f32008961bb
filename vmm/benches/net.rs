//! Network benchmark: spawn -> first HTTP 200 from the `http` unikernel, `unikernel-vmm`
//! against QEMU microvm (`-netdev tap`, virtio-net-device) on the same image and the same
//! tap, alternating A B A B; then requests/s against one running VM of each for 10 s.
//! Everything runs in a network namespace the benchmark creates and removes.
//! `BENCH_RUNS` (default 100) sets the boots per side.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
#[path = "../tests/common.rs"]
mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TAP: &str = "uk-bench";
const MAC: &str = "52:54:00:00:00:02";
const GUEST: &str = "10.0.0.2:80";

/// A command that enters the namespace between fork and exec (no extra process).
fn in_ns(ns: &Netns, program: &str) -> Command {
    let file = std::fs::File::open(Path::new("/var/run/netns").join(&ns.name)).unwrap();
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the fd stays open (moved into the closure).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

fn ours(ns: &Netns, kernel: &Path) -> Command {
    let mut cmd = in_ns(ns, env!("CARGO_BIN_EXE_unikernel-vmm"));
    cmd.arg("--kernel")
        .arg(kernel)
        .args(["--memory", "32M", "--tap", TAP, "--mac", MAC]);
    cmd.args(["--cmdline", "ip=10.0.0.2/24 gw=10.0.0.1 port=80 name=web"]);
    cmd
}

fn qemu(ns: &Netns, kernel: &Path) -> Command {
    let mut cmd = in_ns(ns, "qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "kvm",
        "-m",
        "32M",
        "-no-reboot",
        "-nodefaults",
    ])
    .args([
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-device",
        "i8042",
    ])
    .args([
        "-netdev",
        &format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vnet_hdr=on"),
    ])
    .args(["-device", &format!("virtio-net-device,netdev=n0,mac={MAC}"), "-kernel"])
    .arg(kernel)
    .args(["-append", "ip=10.0.0.2/24 gw=10.0.0.1 port=80 name=web"]);
    cmd
}

/// Polls with fresh connections until a 200 arrives; returns the time since `t0`.
fn first_200(ns: &Netns, t0: Instant) -> Duration {
    ns.run(move || loop {
        if let Ok((200, _)) = http_get_quick(GUEST) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no HTTP 200 within 10 s");
    })
}

/// Like `http_get`, but gives up on a connection after 2 ms so polling stays tight.
fn http_get_quick(addr: &str) -> std::io::Result<(u16, String)> {
    let s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(2))?;
    drop(s);
    http_get(addr)
}

fn boot_to_200(ns: &Netns, mut cmd: Command) -> f64 {
    let t0 = Instant::now();
    let child = KillOnDrop(cmd.spawn().expect("spawn"));
    let d = first_200(ns, t0);
    drop(child);
    d.as_secs_f64() * 1e3
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Requests per second over `secs`, each on a new connection.
fn throughput(ns: &Netns, mut cmd: Command, secs: u64) -> f64 {
    let child = KillOnDrop(cmd.spawn().expect("spawn"));
    first_200(ns, Instant::now());
    let n = ns.run(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        while Instant::now() < end {
            if let Ok((200, _)) = http_get(GUEST) {
                n += 1;
            }
        }
        n
    });
    drop(child);
    n as f64 / secs as f64
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    require_kvm();
    let kernel = image("http");
    let ns = Netns::new("bench");
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"])
        .unwrap();
    ns.ip(&["addr", "add", "10.0.0.1/24", "dev", TAP]).unwrap();
    ns.ip(&["link", "set", TAP, "up"]).unwrap();
    // No ARP round on every boot: the guest's MAC is fixed.
    ns.ip(&[
        "neigh",
        "replace",
        "10.0.0.2",
        "lladdr",
        MAC,
        "dev",
        TAP,
        "nud",
        "permanent",
    ])
    .unwrap();

    boot_to_200(&ns, ours(&ns, &kernel));
    boot_to_200(&ns, qemu(&ns, &kernel));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(boot_to_200(&ns, ours(&ns, &kernel)));
        b.push(boot_to_200(&ns, qemu(&ns, &kernel)));
    }
    let (a50, a90, b50, b90) = (pct(&mut a, 0.5), pct(&mut a, 0.9), pct(&mut b, 0.5), pct(&mut b, 0.9));
    println!(
        "net benchmark: {runs} boots per side, alternating, image {}",
        kernel.display()
    );
    println!("unikernel-vmm   spawn -> first HTTP 200: p50 {a50:8.2} ms  p90 {a90:8.2} ms");
    println!("qemu microvm    spawn -> first HTTP 200: p50 {b50:8.2} ms  p90 {b90:8.2} ms");
    println!("ratio qemu/unikernel-vmm p50: {:.1}x", b50 / a50);
    let secs = 10;
    let ta = throughput(&ns, ours(&ns, &kernel), secs);
    let tb = throughput(&ns, qemu(&ns, &kernel), secs);
    println!("requests/s over {secs} s, new connection each, one client: unikernel-vmm {ta:.0}, qemu microvm {tb:.0}");
}

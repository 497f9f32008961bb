//! Scale to zero, measured through the daemon's host port with real VMs in a namespace of
//! its own (needs the release VMM: `cargo build --release -p unikernel-vmm` first):
//! (a) wake latency, client connect -> first response byte, p50/p90/p99 over N wakes
//!     (UK_BENCH_WAKES, default 200), beside cold boots of the same service through the
//!     same port in the same run (its snapshot's state file removed first, every 10th
//!     round: the failed restore is part of that path, as it is in production), each
//!     UK_BENCH_GAP_MS (default 50) after the service went to standby;
//! (b) snapshot time and size, and the VMM's RSS right after a wake vs after a cold boot;
//! (c) M services on standby (UK_BENCH_STANDBY, default 1000): VMM processes, daemon RSS
//!     and fds, snapshot bytes on disk, and wakes of 50 of them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark code: a panic is a failed run"
)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::*;
use unikerneld::status::{State, Status};

fn decl(name: &str, port: u16, standby: &str) -> String {
    format!(
        "unikernel \"{name}\" {{\n    image \"{}\"\n    cmdline \"name={name} port=80\"\n    net {{ expose {port} guest=80 }}\n    standby {standby}\n}}\n",
        image("http").display()
    )
}

fn status(d: &Daemon, name: &str, state: State) -> Status {
    let s = d.wait_for(&format!("{name} {state}"), Duration::from_secs(60), |s| {
        s.services.iter().any(|x| x.name == name && x.state == state)
    });
    std::sync::Arc::unwrap_or_clone(s.services.into_iter().find(|x| x.name == name).unwrap())
}

/// connect -> first byte of the response, and the whole response, in ms.
fn timed_get(port: u16) -> (f64, f64) {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.starts_with(b"TTP/1.1 200"), "{:?}", String::from_utf8_lossy(&rest));
    (first_ms, t.elapsed().as_secs_f64() * 1e3)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            disk_bytes(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

fn main() {
    let wakes = env_or("UK_BENCH_WAKES", 200);
    let many = env_or("UK_BENCH_STANDBY", 1000);
    let gap_ms = env_or("UK_BENCH_GAP_MS", 50) as u64;
    let mut d = Daemon::new("sbench");
    d.start();
    println!(
        "standby benchmark: image {}, VMM {}",
        image("http").display(),
        vmm_binary().display()
    );

    // (a) + (b): one service, idle 100 ms; every 10th round a cold boot instead of a wake.
    d.declare("w.kdl", &decl("w", 9000, "idle=\"100ms\""));
    status(&d, "w", State::Running);
    let (mut wake_first, mut wake_full, mut cold_first, mut cold_full) = (vec![], vec![], vec![], vec![]);
    let (mut rss_wake, mut rss_cold) = (vec![], vec![]);
    let state_file = d.snapshots().join("w/state");
    let mut round = 0;
    while wake_first.len() < wakes {
        round += 1;
        status(&d, "w", State::Standby);
        // The VMM that just saved is still being torn down by the kernel (closing a VM
        // with an in-kernel irqchip takes 15-22 ms here): a real wake comes after an
        // idle time, not on its heels, so let that finish first.
        std::thread::sleep(Duration::from_millis(gap_ms));
        let cold = round % 10 == 0;
        if cold {
            std::fs::remove_file(&state_file).unwrap();
        }
        let (first, full) = d.ns.run(|| timed_get(9000));
        let pid = status(&d, "w", State::Running).pid.unwrap();
        let rss = rss_kib(pid) as f64 / 1024.0;
        if cold {
            cold_first.push(first);
            cold_full.push(full);
            rss_cold.push(rss);
        } else {
            wake_first.push(first);
            wake_full.push(full);
            rss_wake.push(rss);
        }
    }
    let line = |what: &str, first: &[f64], full: &[f64]| {
        println!(
            "{what} ({} runs): connect -> first byte p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms; whole response p50 {:.2} ms",
            first.len(),
            pct(first, 0.5),
            pct(first, 0.9),
            pct(first, 0.99),
            pct(full, 0.5)
        );
    };
    line("(a) wake from standby", &wake_first, &wake_full);
    line("    cold boot, same port", &cold_first, &cold_full);
    println!(
        "    ratio cold/wake (p50 first byte): {:.1}x",
        pct(&cold_first, 0.5) / pct(&wake_first, 0.5)
    );
    let saves: Vec<(f64, f64)> = d
        .log_text()
        .lines()
        .filter(|l| l.contains("snapshot written:") && l.contains("UNIKERNEL=w"))
        .filter_map(|l| {
            let rest = l.split("snapshot written: ").nth(1)?;
            let kib: f64 = rest.split(' ').next()?.parse().ok()?;
            let ms: f64 = rest.split(" in ").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((kib, ms))
        })
        .collect();
    let kib: Vec<f64> = saves.iter().map(|s| s.0).collect();
    let ms: Vec<f64> = saves.iter().map(|s| s.1).collect();
    println!(
        "(b) snapshots ({}): guest memory written p50 {:.0} KiB, time p50 {:.0} ms p99 {:.0} ms (16M guest)",
        saves.len(),
        pct(&kib, 0.5),
        pct(&ms, 0.5),
        pct(&ms, 0.99)
    );
    println!(
        "    VMM RSS right after the request: woken p50 {:.2} MiB, cold-booted p50 {:.2} MiB",
        pct(&rss_wake, 0.5),
        pct(&rss_cold, 0.5)
    );
    d.undeclare("w.kdl");
    d.wait_for("empty", Duration::from_secs(30), |s| s.services.is_empty());

    // (c) many services on standby: prewarmed, so each booted once and went to sleep.
    let t0 = Instant::now();
    for batch in (0..many).collect::<Vec<_>>().chunks(100) {
        for &i in batch {
            let port = 20_000 + i as u16;
            d.declare(
                &format!("s{i}.kdl"),
                &decl(&format!("s{i}"), port, "idle=\"1h\" prewarm=#true"),
            );
        }
        let n = batch.last().unwrap() + 1;
        d.wait_for(&format!("{n} on standby"), Duration::from_secs(600), |s| {
            s.services.len() == n && s.services.iter().all(|x| x.state == State::Standby)
        });
    }
    let filled = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let pid = d.daemon_pid();
    println!(
        "(c) {many} services on standby after {:.1} s (each booted once, then saved): {} VMM processes; daemon RSS {:.1} MiB, {} fds; snapshots on disk {:.1} MiB ({:.0} KiB each)",
        filled.as_secs_f64(),
        d.vmm_processes().len(),
        rss_kib(pid) as f64 / 1024.0,
        fds(pid),
        disk_bytes(&d.snapshots()) as f64 / (1 << 20) as f64,
        disk_bytes(&d.snapshots()) as f64 / 1024.0 / many as f64
    );
    let mut first = Vec::new();
    for k in 0..50 {
        let i = (k * 7919) % many;
        let (f, _) = d.ns.run(move || timed_get(20_000 + i as u16));
        first.push(f);
    }
    println!(
        "    wakes of 50 of them (one at a time, the others asleep): connect -> first byte p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms",
        pct(&first, 0.5),
        pct(&first, 0.9),
        pct(&first, 0.99)
    );
}

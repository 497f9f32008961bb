//! The start path through the daemon, with and without the warm pool, in one run: two
//! daemons, each in a network namespace of its own, one with `--warm-pool 0` and one with
//! the default pool, measured alternately (A B A B) so both see the same machine state.
//! Needs the release VMM (`cargo build --release -p unikernel-vmm` first).
//! (a) a new declaration written -> first HTTP 200 through its host port (the client
//!     retries the connection every 0.2 ms until the daemon listens; the request then
//!     waits in the daemon's proxy for the guest): UK_BENCH_STARTS rounds (default 50);
//! (c) a wake from standby, connect -> first response byte: UK_BENCH_WAKES (default 50).
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
use unikerneld::status::State;

fn decl(name: &str, port: u16, extra: &str) -> String {
    format!(
        "unikernel \"{name}\" {{\n    image \"{}\"\n    cmdline \"name={name} port=80\"\n    net {{ expose {port} guest=80 }}\n{extra}}}\n",
        image("http").display()
    )
}

/// One GET to 127.0.0.1:`port`, connecting again until something listens; returns the
/// time from `t0` to the response's first byte, in ms.
fn first_200(port: u16, t0: Instant) -> f64 {
    let deadline = t0 + Duration::from_secs(30);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_nodelay(true).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut first = [0u8; 1];
                s.read_exact(&mut first).unwrap();
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                assert!(rest.starts_with(b"TTP/1.1 200"), "{:?}", String::from_utf8_lossy(&rest));
                return ms;
            }
            Err(_) => {
                assert!(Instant::now() < deadline, "nothing listened on {port}");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

fn wait_state(d: &Daemon, name: &str, state: State) {
    d.wait_for(&format!("{name} {state}"), Duration::from_secs(60), |s| {
        s.services.iter().any(|x| x.name == name && x.state == state)
    });
}

fn summary(what: &str, v: &[f64]) -> f64 {
    // A run past half a second waited for a retransmission (TCP's first is at 1 s): a
    // lost frame, not a slow start. The median hides them; say how many.
    let retransmitted = v.iter().filter(|ms| **ms > 500.0).count();
    println!(
        "  {what:<28} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  ({} runs, {retransmitted} over 500 ms)",
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        v.len()
    );
    pct(v, 0.5)
}

fn main() {
    let starts = env_or("UK_BENCH_STARTS", 50);
    let wakes = env_or("UK_BENCH_WAKES", 50);
    let mut cold = Daemon::new("startcold");
    cold.args.extend(["--warm-pool".to_string(), "0".to_string()]);
    let mut warm = Daemon::new("startwarm");
    for d in [&mut cold, &mut warm] {
        d.start();
        // A first start of the shape: the pooled daemon keeps a VMM of it from then on.
        d.declare("first.kdl", &decl("first", 9100, ""));
        wait_state(d, "first", State::Running);
        d.declare("w.kdl", &decl("w", 9200, "    standby idle=\"100ms\"\n"));
        wait_state(d, "w", State::Running);
    }
    println!(
        "start benchmark: image {}, VMM {}",
        image("http").display(),
        vmm_binary().display()
    );

    // (a) declaration written -> first HTTP 200, a new service each round.
    let (mut a_cold, mut a_warm) = (Vec::new(), Vec::new());
    for i in 0..starts {
        for (d, out) in [(&cold, &mut a_cold), (&warm, &mut a_warm)] {
            let name = format!("s{i}");
            let port = 10_000 + i as u16;
            // The pool refills off the start path; give it the time a real host would
            // have between two deployments.
            std::thread::sleep(Duration::from_millis(30));
            let t0 = Instant::now();
            d.declare(&format!("{name}.kdl"), &decl(&name, port, ""));
            let ms = d.ns.run(move || first_200(port, t0));
            out.push(ms);
            d.undeclare(&format!("{name}.kdl"));
        }
    }

    // (c) wake from standby -> first response byte.
    let (mut c_cold, mut c_warm) = (Vec::new(), Vec::new());
    for _ in 0..wakes {
        for (d, out) in [(&cold, &mut c_cold), (&warm, &mut c_warm)] {
            wait_state(d, "w", State::Standby);
            // Closing the saved VM takes the kernel 15-22 ms here: a real wake comes
            // after an idle time, not on its heels.
            std::thread::sleep(Duration::from_millis(50));
            let t0 = Instant::now();
            out.push(d.ns.run(move || first_200(9200, t0)));
        }
    }
    let pooled_starts = warm.log_text().matches("from the warm pool").count();
    // Where a start's time went, as each daemon logs it (the last of each kind).
    for (what, d) in [("no pool", &cold), ("pool", &warm)] {
        let log = d.log_text();
        for kind in ["running (booted in", "running (woken from standby in"] {
            if let Some(line) = log.lines().rev().find(|l| l.contains(kind)) {
                let at = line.find(kind).unwrap_or(0);
                println!("  {what}, last {kind}: {}", &line[at..]);
            }
        }
    }
    println!("(a) declaration written -> first HTTP 200 through the host port:");
    let a0 = summary("no pool (--warm-pool 0)", &a_cold);
    let a1 = summary("warm pool (default)", &a_warm);
    println!("  ratio no pool / pool: p50 {:.2}x", a0 / a1);
    println!("(c) wake from standby, connect -> first response byte:");
    let c0 = summary("no pool (--warm-pool 0)", &c_cold);
    let c1 = summary("warm pool (default)", &c_warm);
    println!("  ratio no pool / pool: p50 {:.2}x", c0 / c1);
    println!(
        "starts and wakes from the pool in the pooled daemon: {pooled_starts} of {}",
        starts + wakes + 1
    );
    assert!(
        !cold.log_text().contains("from the warm pool"),
        "the daemon without a pool took from one"
    );
}

//! The daemon at scale, with real VMs in a namespace of its own:
//! (b) N new services from empty (default 200): wall time, and p50/p99 of file write -> running;
//! (c) with M VMs running (default 1000), the next VM's start vs the first's (median of 15 each);
//! (d) daemon CPU over 30 s idle with M VMs, daemon RSS, fds and threads, VM RSS, and
//! the host memory per VM (MemTotal - MemAvailable, as `free` counts used, before the
//! daemon starts and with M VMs).
//! Needs the release VMM: `cargo build --release -p unikernel-vmm` first.
//! UK_BENCH_BURST, UK_BENCH_VMS and UK_BENCH_IDLE_SECS change the sizes;
//! UK_BENCH_FILL_PORTS=0 fills with services without a host port (all but v0).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, SystemTime};

use support::*;
use unikerneld::status::{State, Status};

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

/// Host ports: bursts and fills from 10000, single starts from 30000.
fn decl(name: &str) -> String {
    decl_with(name, true)
}

/// A service with or without a host port. A port to probe makes "running" mean "answers
/// TCP", as for any served service; without one, its guest's first console line does.
fn decl_with(name: &str, host_port: bool) -> String {
    let n: u32 = name[1..].parse().unwrap();
    let port = if name.starts_with(['p', 'q']) {
        30_000 + n
    } else {
        10_000 + n
    };
    let net = if host_port {
        format!("net {{ expose {port} guest=80 }}")
    } else {
        "net { }".to_string()
    };
    format!(
        "unikernel \"{name}\" {{\n    image \"{}\"\n    cmdline \"name={name} port=80\"\n    {net}\n}}\n",
        image("http").display()
    )
}

/// Write -> running for `name`, from the status the daemon wrote.
fn write_to_running(s: &Status, written_ms: f64) -> f64 {
    s.started_unix_ms.unwrap() as f64 + s.boot_ms.unwrap() - written_ms
}

fn running(d: &Daemon, n: usize, limit: Duration) -> Vec<std::sync::Arc<Status>> {
    d.wait_for(&format!("{n} running"), limit, |s| {
        s.services.len() == n && s.services.iter().all(|x| x.state == State::Running)
    })
    .services
}

/// Declares one service, waits until it runs, undeclares it: (write->running, spawn->running).
fn one_start(d: &Daemon, name: &str, n_before: usize) -> (f64, f64) {
    let t = now_ms();
    d.declare(&format!("{name}.kdl"), &decl(name));
    let all = running(d, n_before + 1, Duration::from_secs(60));
    let s = all.iter().find(|x| x.name == name).unwrap();
    let r = (write_to_running(s, t), s.boot_ms.unwrap());
    d.undeclare(&format!("{name}.kdl"));
    d.wait_for("probe gone", Duration::from_secs(60), |s| s.services.len() == n_before);
    r
}

/// The phases of the start lines ("running (booted in 10.3 ms: network 0.35 ms, spawn ...;
/// in the VMM: loaded 0.52 ms, ...") of the services whose tag starts with `tag`: each
/// phase's name and values, in the order they first appear.
fn phases(log: &str, tag: &str) -> Vec<(String, Vec<f64>)> {
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    for line in log.lines().filter(|l| l.contains("running (booted in")) {
        let Some(at) = line.rfind(' ').filter(|at| line[at + 1..].starts_with(tag)) else {
            continue;
        };
        let text = &line[line.find("running (booted in").unwrap() + "running (".len()..at];
        for piece in text.split([',', ';', ':', '(', ')']) {
            let piece = piece.trim();
            // "12.3 ms after the change was noticed, 2.10 ms of it before the start".
            let named = [
                (" ms after the change was noticed", "change noticed -> running"),
                (" ms of it before the start", "change noticed -> start"),
            ]
            .into_iter()
            .find_map(|(tail, name)| piece.strip_suffix(tail).map(|v| (name, v)));
            let Some((name, value)) = named.or_else(|| piece.strip_suffix(" ms")?.rsplit_once(' ')) else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else { continue };
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(value),
                None => out.push((name.to_string(), vec![value])),
            }
        }
    }
    out
}

fn main() {
    let burst = env_or("UK_BENCH_BURST", 200);
    let vms = env_or("UK_BENCH_VMS", 1000);
    let idle = env_or("UK_BENCH_IDLE_SECS", 30) as u64;
    // The daemon holds 1 fd per VM (its pidfd) and 1 more per host port: without host
    // ports, room for ~19,900 VMs under a hard RLIMIT_NOFILE of 20,000.
    let fill_ports = env_or("UK_BENCH_FILL_PORTS", 1) != 0;
    let mut d = Daemon::new("dbench");
    // A few fds per VM: raise the limit as the unit's LimitNOFILE= does for the packaged
    // daemon, where this process may (it needs CAP_SYS_RESOURCE past its hard limit).
    let nofile = raise_nofile(1 << 20);
    println!("RLIMIT_NOFILE for the daemon: {nofile} (1 per VM, 2 with a host port)");
    let used_before = host_used_mib();
    d.start();

    // (c) the first VM, on an empty, quiet host.
    let first: Vec<(f64, f64)> = (0..15).map(|i| one_start(&d, &format!("p{i}"), 0)).collect();

    // (b) a burst of new services.
    let mut written = Vec::new();
    for i in 0..burst {
        written.push(now_ms());
        d.declare(&format!("b{i}.kdl"), &decl(&format!("b{i}")));
    }
    let all = running(&d, burst, Duration::from_secs(600));
    let lat: Vec<f64> = all
        .iter()
        .map(|s| write_to_running(s, written[s.name[1..].parse::<usize>().unwrap()]))
        .collect();
    let boot: Vec<f64> = all.iter().map(|s| s.boot_ms.unwrap()).collect();
    let wall = all
        .iter()
        .map(|s| s.started_unix_ms.unwrap() as f64 + s.boot_ms.unwrap())
        .fold(0.0, f64::max)
        - written[0];
    println!("daemon benchmark: image {}", image("http").display());
    println!(
        "(b) {burst} new services from empty: wall {wall:.0} ms; write->running p50 {:.1} ms p99 {:.1} ms; spawn->running p50 {:.1} ms p99 {:.1} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&boot, 0.5),
        pct(&boot, 0.99)
    );
    for i in 0..burst {
        d.undeclare(&format!("b{i}.kdl"));
    }
    d.wait_for("empty", Duration::from_secs(600), |s| s.services.is_empty());

    // (c) continued: fill up, then the next VM.
    let t0 = std::time::Instant::now();
    let mut fill_written = vec![0.0; vms];
    let mut last = Vec::new();
    for batch in (0..vms).collect::<Vec<_>>().chunks(100) {
        for i in batch {
            fill_written[*i] = now_ms();
            // v0 keeps its port: the proxy is measured through it.
            d.declare(
                &format!("v{i}.kdl"),
                &decl_with(&format!("v{i}"), fill_ports || *i == 0),
            );
        }
        last = running(&d, batch.last().unwrap() + 1, Duration::from_secs(600));
    }
    println!("filled to {vms} running VMs in {:.1} s", t0.elapsed().as_secs_f64());
    // The k-th VM's write -> running and spawn -> running, against k (batches of 100).
    let mut fill: Vec<(usize, f64, f64)> = last
        .iter()
        .map(|s| {
            let k: usize = s.name[1..].parse().unwrap();
            (k, write_to_running(s, fill_written[k]), s.boot_ms.unwrap())
        })
        .collect();
    fill.sort_by_key(|x| x.0);
    let tenth = (vms / 10).max(1);
    for block in fill.chunks(tenth) {
        let w: Vec<f64> = block.iter().map(|x| x.1).collect();
        let b: Vec<f64> = block.iter().map(|x| x.2).collect();
        println!(
            "    VMs {:>5}-{:<5}: write->running p50 {:.1} ms p99 {:.1} ms; spawn->running p50 {:.1} ms",
            block[0].0,
            block[block.len() - 1].0,
            pct(&w, 0.5),
            pct(&w, 0.99),
            pct(&b, 0.5)
        );
    }
    let svg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-daemon-fill.svg");
    std::fs::write(&svg, plot(&fill)).unwrap();
    println!("    plot of the k-th VM's start: {}", svg.display());
    let next: Vec<(f64, f64)> = (0..15).map(|i| one_start(&d, &format!("q{i}"), vms)).collect();
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| pct(&v.iter().map(f).collect::<Vec<_>>(), 0.5);
    let (fw, fb) = (med(&first, |x| x.0), med(&first, |x| x.1));
    let (nw, nb) = (med(&next, |x| x.0), med(&next, |x| x.1));
    println!("(c) first VM:           write->running p50 {fw:.1} ms, spawn->running p50 {fb:.1} ms");
    println!("    next with {vms} running: write->running p50 {nw:.1} ms, spawn->running p50 {nb:.1} ms");
    println!(
        "    ratio next/first: write->running {:.2}x, spawn->running {:.2}x",
        nw / fw,
        nb / fb
    );

    // Where the single starts spent their time, from the daemon's own start lines:
    // each phase's median over the 15 first VMs and the 15 next ones.
    let log = d.log_text();
    let (first_phases, next_phases) = (phases(&log, "UNIKERNEL=p"), phases(&log, "UNIKERNEL=q"));
    println!("    phases of a start (p50 of 15, ms)    first  next with {vms}");
    for (name, first) in &first_phases {
        let next = next_phases.iter().find(|(n, _)| n == name).map(|(_, v)| pct(v, 0.5));
        println!(
            "      {name:<34} {:>6.2}  {}",
            pct(first, 0.5),
            next.map(|v| format!("{v:>6.2}")).unwrap_or_else(|| "-".into())
        );
    }

    // Host port (the daemon's proxy) vs the guest's own address, one VM, new connection
    // per request: what the proxy costs.
    let v0 = d.service("v0").unwrap();
    let direct_addr = format!("{}:80", v0.address.unwrap());
    let (direct_ms, proxied_ms) = d.ns.run(move || {
        let time = |addr: &str| {
            let mut v = Vec::new();
            for _ in 0..300 {
                let t = std::time::Instant::now();
                let (code, _) = http_get(addr).unwrap();
                assert_eq!(code, 200);
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
            v
        };
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        for _ in 0..3 {
            direct.extend(time(&direct_addr));
            proxied.extend(time("127.0.0.1:10000"));
        }
        (direct, proxied)
    });
    println!(
        "host port through the daemon's proxy: GET p50 {:.3} ms p99 {:.3} ms; direct to the guest: p50 {:.3} ms p99 {:.3} ms (900 each, alternating blocks of 300)",
        pct(&proxied_ms, 0.5),
        pct(&proxied_ms, 0.99),
        pct(&direct_ms, 0.5),
        pct(&direct_ms, 0.99)
    );

    // (d) idle cost.
    let pid = d.daemon_pid();
    let snap = d.snapshot().unwrap();
    let vm_pids: Vec<u32> = snap.services.iter().filter_map(|s| s.pid).collect();
    // A VM may end in the window (then it is left out, and counted).
    let ticks = |p: u32| std::fs::metadata(format!("/proc/{p}")).is_ok().then(|| cpu_ticks(p));
    let before: Vec<Option<u64>> = vm_pids.iter().map(|p| ticks(*p)).collect();
    let d0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(idle));
    let d1 = cpu_ticks(pid);
    let after: Vec<Option<u64>> = vm_pids.iter().map(|p| ticks(*p)).collect();
    let both: Vec<(u64, u64)> = before.iter().zip(&after).filter_map(|(b, a)| b.zip(*a)).collect();
    let (v0, v1) = both.iter().fold((0, 0), |(b, a), (x, y)| (b + x, a + y));
    if both.len() < vm_pids.len() {
        println!(
            "    {} of {} VMs ended during the idle window",
            vm_pids.len() - both.len(),
            vm_pids.len()
        );
    }
    let vm_pids: Vec<u32> = vm_pids
        .into_iter()
        .filter(|p| std::fs::metadata(format!("/proc/{p}")).is_ok())
        .collect();
    let hz = 100.0; // USER_HZ
    let mut vm_rss: Vec<f64> = vm_pids.iter().map(|p| rss_kib(*p) as f64 / 1024.0).collect();
    vm_rss.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "(d) {idle} s idle with {} VMs: daemon CPU {:.2} s ({:.3}% of a core), all VMs together {:.2} s; daemon RSS {:.1} MiB; VMM RSS p50 {:.2} MiB",
        vm_pids.len(),
        (d1 - d0) as f64 / hz,
        (d1 - d0) as f64 / hz / idle as f64 * 100.0,
        (v1 - v0) as f64 / hz,
        rss_kib(pid) as f64 / 1024.0,
        pct(&vm_rss, 0.5)
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|t| t.trim().to_string()))
        .unwrap_or_default();
    let used = host_used_mib();
    println!(
        "    daemon fds {fds} ({:.2} per VM), threads {threads}; host memory used {used_before:.0} MiB before, {used:.0} MiB with {} VMs: {:.2} MiB per VM",
        fds as f64 / vm_pids.len().max(1) as f64,
        vm_pids.len(),
        (used - used_before) / vm_pids.len().max(1) as f64
    );
}

/// What `free` shows as used: MemTotal - MemAvailable, in MiB.
fn host_used_mib() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> f64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("MemTotal:") - field("MemAvailable:")) / 1024.0
}

/// Raises this process's RLIMIT_NOFILE (inherited by the daemon) towards `want`; returns
/// the limit in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// An SVG of spawn -> running (and write -> running) of the k-th VM against k.
fn plot(fill: &[(usize, f64, f64)]) -> String {
    let (w, h, left, bottom) = (900.0, 420.0, 60.0, 40.0);
    let n = fill.len().max(1) as f64;
    let ymax = fill.iter().map(|x| x.2).fold(1.0, f64::max) * 1.1;
    let x = |k: usize| left + (k as f64 / n) * (w - left - 20.0);
    let y = |v: f64| (h - bottom) - (v / ymax) * (h - bottom - 20.0);
    let dots: String = fill
        .iter()
        .map(|p| format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1\"/>", x(p.0), y(p.2)))
        .collect();
    let mut ticks = String::new();
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        ticks.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            left - 6.0,
            y(v) + 4.0
        ));
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
<text x=\"{left}\" y=\"14\">unikerneld: spawn -> running (ms) of the k-th VM, {} VMs</text>\
<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\
<line x1=\"{left}\" y1=\"20\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\
{ticks}<text x=\"{}\" y=\"{}\" text-anchor=\"end\">k = {}</text>\
<g fill=\"steelblue\">{dots}</g></svg>\n",
        fill.len(),
        h - bottom,
        w - 20.0,
        h - bottom,
        h - bottom,
        w - 20.0,
        h - 10.0,
        fill.len()
    )
}

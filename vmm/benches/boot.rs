//! Boot benchmark: `unikernel-vmm` against QEMU microvm on the same `hello` image, run
//! alternately (A B A B) so both see the same machine state.
//!
//! For each run: process spawn -> first console byte, spawn -> exit (status collected),
//! and the process's peak RSS (from wait4). Prints p50/p90 and the ratios.
//! Beside them, in the same alternation: ours jailed (`--jail-uid`), and ours without its
//! seccomp filters, for what isolation costs a start.
//! And a pooled VMM (`--pool-fd`, the warm pool): hand-off -> first byte, its spawn ->
//! ready (the refill, off the start path) and its RSS while it waits.
//! `BENCH_RUNS` (default 200) sets the runs per side. QEMU (Debian's qemu-system-x86) is
//! required: a benchmark without its peer is not a result.
//!
//! Then, per boot protocol (PVH, 64-bit Linux, bzImage, multiboot ELF32), the same `hello`
//! program: spawn -> first byte p50 for both VMMs where QEMU can boot that form (it cannot
//! enter a plain ELF64 the Linux way, and enters a bzImage at the 32-bit entry our
//! `hello-bz` lacks), and the VM exits of one boot of ours
//! (`--trace-boot`). `BENCH_PROTO_RUNS` (default 40) sets the runs per protocol and side.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
#[path = "../tests/common.rs"]
mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

struct Sample {
    first_byte_us: f64,
    exit_us: f64,
    peak_rss_kib: i64,
}

// The child is reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn measure(mut cmd: Command, expect: &str) -> Sample {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    assert_eq!(out.read(&mut first).expect("read console"), 1, "no console output");
    let first_byte = t0.elapsed();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the pid is our child's and is reaped exactly once here.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let exit = t0.elapsed();
    assert_eq!(pid, child.id() as i32);
    assert_eq!(
        std::process::ExitStatus::from_raw(status).code(),
        Some(0),
        "guest did not exit cleanly"
    );
    let mut console = vec![first[0]];
    console.extend_from_slice(&rest);
    assert!(
        String::from_utf8_lossy(&console).contains(expect),
        "unexpected console {console:?}"
    );
    Sample {
        first_byte_us: first_byte.as_secs_f64() * 1e6,
        exit_us: exit.as_secs_f64() * 1e6,
        peak_rss_kib: usage.ru_maxrss,
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[((values.len() - 1) as f64 * p).round() as usize]
}

struct Summary {
    first_p50: f64,
    first_p90: f64,
    exit_p50: f64,
    exit_p90: f64,
    rss_p50_mib: f64,
    rss_max_mib: f64,
}

fn summarize(samples: &[Sample]) -> Summary {
    let mut first: Vec<f64> = samples.iter().map(|s| s.first_byte_us).collect();
    let mut exit: Vec<f64> = samples.iter().map(|s| s.exit_us).collect();
    let mut rss: Vec<f64> = samples.iter().map(|s| s.peak_rss_kib as f64 / 1024.0).collect();
    Summary {
        first_p50: percentile(&mut first, 0.5),
        first_p90: percentile(&mut first, 0.9),
        exit_p50: percentile(&mut exit, 0.5),
        exit_p90: percentile(&mut exit, 0.9),
        rss_p50_mib: percentile(&mut rss, 0.5),
        rss_max_mib: percentile(&mut rss, 1.0),
    }
}

fn print_row(name: &str, s: &Summary) {
    println!(
        "{name:<22} first byte p50 {:>8.2} ms p90 {:>8.2} ms | exit p50 {:>8.2} ms p90 {:>8.2} ms | peak RSS p50 {:>6.2} MiB max {:>6.2} MiB",
        s.first_p50 / 1e3,
        s.first_p90 / 1e3,
        s.exit_p50 / 1e3,
        s.exit_p90 / 1e3,
        s.rss_p50_mib,
        s.rss_max_mib
    );
}

fn qemu(kernel: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-m",
        "16M",
        "-no-reboot",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-display", "none", "-serial", "stdio", "-device", "i8042", "-kernel"])
    .arg(kernel)
    .args(["-append", cmdline]);
    cmd
}

fn ours(kernel: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unikernel-vmm"));
    cmd.arg("--kernel")
        .arg(kernel)
        .args(["--memory", "16M", "--cmdline", cmdline]);
    cmd
}

/// A pooled VMM (`--pool-fd`) made ready outside the clock, then hand-off -> first console
/// byte; also spawn -> ready (what a refill costs, off the start path) and the waiting
/// VMM's RSS.
struct Pooled {
    first_byte_us: f64,
    ready_us: f64,
    idle_rss_kib: f64,
    /// The VMM's own phases after the hand-off (`--trace-boot`'s start line), in ms.
    phases: Vec<(String, f64)>,
}

/// "loaded 0.33 ms, devices 0.05 ms, ..., in the guest at 1.20 ms" -> [(loaded, 0.33), ...]
fn parse_phases(line: &str) -> Vec<(String, f64)> {
    line.split(", ")
        .filter_map(|part| {
            let part = part.trim().strip_suffix(" ms")?;
            let (name, value) = part.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn measure_pooled(kernel: &Path, cmdline: &str, expect: &str) -> Pooled {
    use contract::pool;
    use std::os::fd::{AsFd, AsRawFd};
    let (daemon, vmm_end) = pool::socket_pair().unwrap();
    // SAFETY: F_SETFD on an fd we own: the VMM inherits it.
    assert_eq!(unsafe { libc::fcntl(vmm_end.as_raw_fd(), libc::F_SETFD, 0) }, 0);
    let t0 = Instant::now();
    let mut child = Command::new(common::vmm_binary())
        .args(["--pool-fd", &vmm_end.as_raw_fd().to_string(), "--pool-room"])
        .arg(" ".repeat(pool::ROOM))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    drop(vmm_end);
    assert!(pool::read_ready(&daemon).unwrap(), "the pooled VMM says ready");
    let ready = t0.elapsed();
    let idle_rss_kib = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let log_path = std::env::temp_dir().join(format!("uk-bench-pool-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let args = contract::args::VmmArgs {
        cmdline: cmdline.to_string(),
        trace_boot: true,
        ..contract::args::VmmArgs::new(kernel.to_path_buf())
    };
    let mut out = child.stdout.take().unwrap();
    let t1 = Instant::now();
    pool::send(&daemon, &args, log.as_fd(), &[]).unwrap();
    let mut first = [0u8; 1];
    assert_eq!(out.read(&mut first).expect("read console"), 1, "no console output");
    let first_byte = t1.elapsed();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let mut console = vec![first[0]];
    console.extend_from_slice(&rest);
    assert!(
        String::from_utf8_lossy(&console).contains(expect),
        "unexpected console {console:?}"
    );
    let handed = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    let phases = handed
        .lines()
        .find_map(|l| l.strip_prefix(contract::exit::STARTED_PREFIX))
        .map(parse_phases)
        .unwrap_or_default();
    Pooled {
        first_byte_us: first_byte.as_secs_f64() * 1e6,
        ready_us: ready.as_secs_f64() * 1e6,
        idle_rss_kib,
        phases,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run anyway.
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    common::require_kvm();
    let kernel = common::image("hello");
    let cmdline = "name=bench";
    let expect = "hello from unikernel, cmdline: name=bench";
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        panic!("qemu-system-x86_64 not found: install Debian's qemu-system-x86 to measure the peer");
    }

    // Warm the page cache and KVM once for both.
    measure(ours(&kernel, cmdline), expect);
    measure(qemu(&kernel, cmdline), expect);

    let mut a = Vec::with_capacity(runs);
    let mut b = Vec::with_capacity(runs);
    let mut echo = Vec::with_capacity(runs);
    let mut jailed = Vec::with_capacity(runs);
    let mut unfiltered = Vec::with_capacity(runs);
    let mut pooled = Vec::with_capacity(runs);
    let snapshots = std::env::temp_dir().join(format!("uk-bench-jail-{}", std::process::id()));
    for _ in 0..runs {
        a.push(measure(ours(&kernel, cmdline), expect));
        b.push(measure(qemu(&kernel, cmdline), expect));
        let mut j = ours(&kernel, cmdline);
        j.args(["--jail-uid", "71999", "--jail-gid", "71999", "--snapshot-dir"])
            .arg(&snapshots);
        jailed.push(measure(j, expect));
        let mut n = ours(&kernel, cmdline);
        n.arg("--no-seccomp");
        unfiltered.push(measure(n, expect));
        pooled.push(measure_pooled(&kernel, cmdline, expect));
        let mut e = Command::new("/bin/echo");
        e.arg(expect);
        echo.push(measure(e, expect));
    }
    let (sa, sb, se) = (summarize(&a), summarize(&b), summarize(&echo));
    println!(
        "boot benchmark: {runs} runs per side, alternating, image {}",
        kernel.display()
    );
    print_row("unikernel-vmm", &sa);
    print_row("qemu microvm", &sb);
    print_row("/bin/echo (spawn floor)", &se);
    let mut hand_off: Vec<f64> = pooled.iter().map(|p| p.first_byte_us).collect();
    let mut ready: Vec<f64> = pooled.iter().map(|p| p.ready_us).collect();
    let mut idle: Vec<f64> = pooled.iter().map(|p| p.idle_rss_kib).collect();
    println!(
        "{:<22} first byte p50 {:>8.2} ms p90 {:>8.2} ms (from the hand-off) | spawn -> ready p50 {:.2} ms | waiting RSS p50 {:.2} MiB",
        "unikernel-vmm pooled",
        percentile(&mut hand_off, 0.5) / 1e3,
        percentile(&mut hand_off, 0.9) / 1e3,
        percentile(&mut ready, 0.5) / 1e3,
        percentile(&mut idle, 0.5) / 1024.0
    );
    if let Some(first) = pooled.first() {
        let medians: Vec<String> = first
            .phases
            .iter()
            .map(|(name, _)| {
                let mut v: Vec<f64> = pooled
                    .iter()
                    .filter_map(|p| p.phases.iter().find(|(n, _)| n == name).map(|(_, ms)| *ms))
                    .collect();
                format!("{name} {:.3}", percentile(&mut v, 0.5))
            })
            .collect();
        println!(
            "  pooled, the VMM's phases after the hand-off (p50, ms): {}",
            medians.join(", ")
        );
    }
    println!(
        "ratio cold/pooled: first byte p50 {:.1}x",
        sa.first_p50 / percentile(&mut hand_off, 0.5)
    );
    let (sj, sn) = (summarize(&jailed), summarize(&unfiltered));
    print_row("unikernel-vmm jailed", &sj);
    print_row("unikernel-vmm --no-seccomp", &sn);
    println!(
        "isolation costs, first byte p50: seccomp filters {:+.3} ms, the jail on top {:+.3} ms; peak RSS p50 {:+.2} MiB",
        (sa.first_p50 - sn.first_p50) / 1e3,
        (sj.first_p50 - sa.first_p50) / 1e3,
        sj.rss_p50_mib - sn.rss_p50_mib
    );
    // The jail's own phase, as the VMM times it (--trace-boot): what a start pays for it.
    // The first-byte difference above also holds the previous jailed VMM's namespace
    // teardown, which the kernel finishes after that VMM has exited.
    let mut jail_us: Vec<f64> = (0..runs.min(60))
        .filter_map(|_| {
            let mut j = ours(&kernel, cmdline);
            j.args([
                "--jail-uid",
                "71999",
                "--jail-gid",
                "71999",
                "--trace-boot",
                "--snapshot-dir",
            ])
            .arg(&snapshots);
            let out = j.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            err.split("jail: +").nth(1)?.split("us").next()?.parse().ok()
        })
        .collect();
    assert!(!jail_us.is_empty(), "no jail phase in --trace-boot");
    println!(
        "the jail phase itself (--trace-boot, {} runs): p50 {:.3} ms, p90 {:.3} ms",
        jail_us.len(),
        percentile(&mut jail_us, 0.5) / 1e3,
        percentile(&mut jail_us, 0.9) / 1e3
    );
    let _ = std::fs::remove_dir_all(&snapshots);
    println!(
        "ratio qemu/unikernel-vmm: first byte p50 {:.1}x, exit p50 {:.1}x, peak RSS p50 {:.1}x",
        sb.first_p50 / sa.first_p50,
        sb.exit_p50 / sa.exit_p50,
        sb.rss_p50_mib / sa.rss_p50_mib
    );
    protocols();
}

/// VM exits of one boot of ours, from `--trace-boot`.
fn exits_of_one_boot(kernel: &Path, cmdline: &str) -> String {
    let out = ours(kernel, cmdline).arg("--trace-boot").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    err.split("exits: ")
        .nth(1)
        .and_then(|s| s.split(" stop:").next())
        .unwrap_or("?")
        .to_string()
}

fn protocols() {
    let runs: usize = std::env::var("BENCH_PROTO_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let dir = std::env::temp_dir().join(format!("ukvmm-bench-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bz = dir.join("bzImage");
    std::fs::write(
        &bz,
        common::make_bzimage(&std::fs::read(common::image("hello-bz")).unwrap()),
    )
    .unwrap();
    let mb32 = dir.join("hello-mb32");
    let st = Command::new("objcopy")
        .args(["-O", "elf32-i386"])
        .arg(common::image("hello-mb"))
        .arg(&mb32)
        .status()
        .expect("objcopy (binutils)");
    assert!(st.success());
    let forms: [(&str, std::path::PathBuf, bool); 4] = [
        ("PVH (hello)", common::image("hello"), true),
        ("64-bit Linux (hello-lx)", common::image("hello-lx"), false),
        // QEMU enters a bzImage at its 32-bit entry, which hello-bz does not have.
        ("bzImage (hello-bz)", bz, false),
        ("multiboot ELF32 (hello-mb)", mb32, true),
    ];
    let cmdline = "name=bench";
    println!("per protocol, {runs} runs per side, alternating:");
    for (label, kernel, qemu_boots_it) in &forms {
        let expect = "hello from unikernel, cmdline: ";
        let mut a = Vec::with_capacity(runs);
        let mut b = Vec::with_capacity(runs);
        for _ in 0..runs {
            a.push(measure(ours(kernel, cmdline), expect));
            if *qemu_boots_it {
                b.push(measure(qemu(kernel, cmdline), expect));
            }
        }
        let sa = summarize(&a);
        let peer = if b.is_empty() {
            "qemu microvm: cannot boot this form".to_string()
        } else {
            let sb = summarize(&b);
            format!(
                "qemu microvm {:.2} ms ({:.1}x)",
                sb.first_p50 / 1e3,
                sb.first_p50 / sa.first_p50
            )
        };
        println!(
            "  {label:<28} first byte p50: unikernel-vmm {:.2} ms, {peer}; {}",
            sa.first_p50 / 1e3,
            exits_of_one_boot(kernel, cmdline)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The metrics endpoint of a real daemon with real VMs: the figures follow what happens
//! (boots, restarts, wakes, memory), and the text is well-formed for a Prometheus scraper.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{http_decl, http_get, Daemon};

/// `name{labels}` -> value, checking every line on the way.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(rest.starts_with("HELP ") || rest.starts_with("TYPE "), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("unikerneld_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "a series twice: {line}"
        );
    }
    out
}

#[test]
fn metrics_follow_boots_restarts_wakes_and_memory() {
    let mut d = Daemon::new("metrics");
    d.args = vec!["--metrics".into(), "127.0.0.1:9633".into()];
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    d.declare("api.kdl", &http_decl("api", 8081, "standby idle=\"500ms\"\n"));
    d.start();
    d.running("web");
    d.running("api");
    let scrape = || {
        let (status, body) = d.ns.run(|| http_get("127.0.0.1:9633")).unwrap();
        assert_eq!(status, 200);
        parse(&body)
    };
    let m = scrape();
    assert_eq!(m["unikerneld_services{state=\"running\"}"], 2.0);
    assert_eq!(m["unikerneld_boot_seconds_count"], 2.0);
    assert_eq!(m["unikerneld_start_host_seconds_count"], 2.0, "one per start");
    assert_eq!(m["unikerneld_boot_seconds_bucket{le=\"+Inf\"}"], 2.0);
    assert!(m["unikerneld_boot_seconds_sum"] > 0.0);
    let web_memory = m["unikerneld_service_memory_bytes{service=\"web\"}"];
    assert!(
        web_memory > 1024.0 * 1024.0 && web_memory < 64.0 * 1024.0 * 1024.0,
        "{web_memory}"
    );
    assert!(m["unikerneld_open_fds"] >= 5.0);
    assert!(m["unikerneld_threads"] >= 1.0);
    assert!(m["unikerneld_resident_memory_bytes"] > 0.0);
    assert_eq!(m["unikerneld_service_restarts_total{service=\"web\"}"], 0.0);
    // One pidfd per VM (a second copy per VM once cost 5,000 fds at 5,000 VMs), and one
    // per VMM of the warm pool (at most --warm-pool, 2 by default), counted together
    // until the pool holds still.
    let pidfds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.daemon_pid()))
            .unwrap()
            .filter(|e| {
                std::fs::read_link(e.as_ref().unwrap().path())
                    .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[pidfd]")
            })
            .count()
    };
    let pooled = || d.pooled().len();
    let mut seen = Vec::new();
    let settled = (0..100).any(|_| {
        let (before, fds, after) = (pooled(), pidfds(), pooled());
        seen.push((fds, before));
        std::thread::sleep(Duration::from_millis(20));
        before == after && fds == 2 + before
    });
    assert!(
        settled,
        "one pidfd per VM and per pooled VMM: (pidfds, pooled) {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, pooled)| *pooled <= 2),
        "the pool's bound: {seen:?}"
    );

    // A crash: the restart counts, and the new VM's boot too.
    let pid = d.service("web").unwrap().pid.unwrap();
    // SAFETY: kill(2) on the test's own VM.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    d.wait_for("web restarted", Duration::from_secs(10), |s| {
        s.services.iter().any(|x| {
            x.name == "web" && x.restarts == 1 && x.pid != Some(pid) && x.state == unikerneld::status::State::Running
        })
    });
    // api goes to standby after 500 ms quiet; a request wakes it.
    d.wait_for("api on standby", Duration::from_secs(10), |s| {
        s.services
            .iter()
            .any(|x| x.name == "api" && x.state == unikerneld::status::State::Standby)
    });
    assert_eq!(d.get(8081).unwrap().0, 200);
    d.wait_for("api woken", Duration::from_secs(10), |s| {
        s.services.iter().any(|x| x.name == "api" && x.wakes == 1)
    });
    std::thread::sleep(Duration::from_millis(200));
    let m = scrape();
    assert_eq!(m["unikerneld_service_restarts_total{service=\"web\"}"], 1.0);
    assert_eq!(m["unikerneld_boot_seconds_count"], 3.0);
    assert_eq!(m["unikerneld_service_wakes_total{service=\"api\"}"], 1.0);
    assert_eq!(m["unikerneld_wake_seconds_count"], 1.0);
    // The restart and the wake found a pooled VMM of their shape (the first two starts
    // left one); the gauge is read when scraped: the pool refilled 100 ms after them.
    assert!(
        m["unikerneld_warm_pool_starts_total"] >= 1.0,
        "{}",
        m["unikerneld_warm_pool_starts_total"]
    );
    assert!(m["unikerneld_warm_pool_starts_total"] <= 2.0);
    let ready = m["unikerneld_warm_pool_ready"];
    assert!((1.0..=2.0).contains(&ready), "{ready}");

    // Anything but GET /metrics is refused politely.
    let out =
        d.ns.run(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect("127.0.0.1:9633")?;
            s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok::<_, std::io::Error>(text)
        })
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

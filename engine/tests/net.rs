//! Host networking through real netlink, in a network namespace of the test's own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
#[path = "../../vmm/tests/common.rs"]
mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Instant;

use common::Netns;
use unikerneld::net::{AddressPool, HostNetwork, Mode};

/// Runs `f` on a thread inside `ns`, with a Tokio runtime of its own.
fn run_async<T: Send + 'static, F: std::future::Future<Output = T>>(
    ns: &Netns,
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
}

/// `ip -n <ns> ARGS`, its output.
fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").arg("-n").arg(ns).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count_lines(s: &str, needle: &str) -> usize {
    s.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn eleven_hundred_routed_taps_are_created_attached_and_deleted() {
    const N: usize = 1100;
    let ns = Netns::new("taps");
    let name = ns.name.clone();
    let (created, deleted) = run_async(&ns, move || async move {
        let ip = |args: &[&str]| ip_in(&name, args);
        let mut net = HostNetwork::new(Mode::Routed, AddressPool::default()).await.unwrap();
        let t = Instant::now();
        let mut addresses = Vec::new();
        for i in 0..N {
            let a = net.attach(&format!("svc{i}"), None).await.unwrap();
            addresses.push(a.address);
            drop(a.tap_fd); // persistent: the tap stays until detach
        }
        let created = t.elapsed();
        assert_eq!(
            count_lines(&ip(&["-o", "link", "show"]), ": uk-"),
            N,
            "one tap per service"
        );
        let routes = ip(&["-4", "route", "show"]);
        assert_eq!(count_lines(&routes, "dev uk-"), N, "one /32 route per guest");
        let seven = format!("{} dev uk-svc7 ", addresses[7]);
        assert!(routes.contains(&seven), "route {seven:?} missing");
        assert!(ip(&["-o", "link", "show", "uk-svc7"]).contains(",UP"), "tap is up");
        assert!(
            ip(&["-4", "-o", "addr", "show", "dev", "lo"]).contains("10.200.0.1/32"),
            "the gateway once, on the loopback link"
        );
        assert!(
            !ip(&["-4", "-o", "addr", "show", "dev", "uk-svc7"]).contains("10.200.0.1"),
            "not on every tap"
        );
        let line = routes.lines().find(|l| l.starts_with(&seven)).unwrap_or_default();
        assert!(
            line.contains(" src 10.200.0.1"),
            "the gateway is the host's source: {line}"
        );
        let t = Instant::now();
        for i in 0..N {
            net.detach(&format!("svc{i}")).await.unwrap();
        }
        let deleted = t.elapsed();
        assert_eq!(
            count_lines(&ip(&["-o", "link", "show"]), ": uk-"),
            0,
            "every tap deleted"
        );
        assert_eq!(
            count_lines(&ip(&["-4", "route", "show"]), "dev uk-"),
            0,
            "routes went with them"
        );
        (created, deleted)
    });
    println!("{N} taps: created and routed in {created:?}, deleted in {deleted:?}");
}

#[test]
fn bridged_taps_join_the_bridge_which_holds_the_gateway() {
    let ns = Netns::new("bridge");
    let name = ns.name.clone();
    run_async(&ns, move || async move {
        let mut net = HostNetwork::new(Mode::Bridged { bridge: "ukbr0".into() }, AddressPool::default())
            .await
            .unwrap();
        let mut taps = Vec::new();
        for s in ["web", "api", "db"] {
            taps.push(net.attach(s, None).await.unwrap());
        }
        // Idempotent: a second daemon start finds bridge and address in place.
        let again = HostNetwork::new(Mode::Bridged { bridge: "ukbr0".into() }, AddressPool::default()).await;
        assert!(again.is_ok());
        let ip = |args: &[&str]| ip_in(&name, args);
        assert_eq!(count_lines(&ip(&["-o", "link", "show", "master", "ukbr0"]), ": uk-"), 3);
        assert!(ip(&["-4", "-o", "addr", "show", "dev", "ukbr0"]).contains("10.200.0.1/16"));
        let g = taps[0].guest_net();
        assert_eq!((g.prefix, g.gateway.to_string()), (16, "10.200.0.1".to_string()));
        assert_eq!(g.netmask().to_string(), "255.255.0.0");
        assert_ne!(taps[0].address, taps[1].address);
        net.detach("api").await.unwrap();
        assert_eq!(count_lines(&ip(&["-o", "link", "show", "master", "ukbr0"]), ": uk-"), 2);
        // Detaching what is already gone is not an error (deletion always works).
        net.detach("api").await.unwrap();
    });
}

#[test]
fn explicit_addresses_that_collide_are_refused() {
    let ns = Netns::new("collide");
    run_async(&ns, || async {
        let mut net = HostNetwork::new(Mode::Routed, AddressPool::default()).await.unwrap();
        let addr = Ipv4Addr::new(10, 200, 3, 4);
        let a = net.attach("one", Some(addr)).await.unwrap();
        assert_eq!(a.address, addr);
        let err = net.attach("two", Some(addr)).await.unwrap_err();
        assert_eq!(err.to_string(), "address 10.200.3.4 is declared by both one and two");
    });
}

#[test]
fn sysctls_are_raised_once_and_logged_as_changes() {
    use unikerneld::net::sysctl;
    let ns = Netns::new("sysctl");
    let host_before = sysctl::read("net.core.somaxconn");
    let (first, second, now) = run_async(&ns, || async {
        // Only keys this namespace has; the neighbour-table keys exist in the host's
        // initial namespace only, which proves /proc/sys is the namespace's here.
        assert_eq!(
            sysctl::read("net.ipv4.neigh.default.gc_thresh3"),
            None,
            "not inside the test namespace"
        );
        let current: u64 = sysctl::read("net.core.somaxconn").unwrap().parse().unwrap();
        let wanted = [("net.core.somaxconn", current + 1000)];
        let first = sysctl::apply(&wanted);
        let second = sysctl::apply(&wanted);
        (first, second, sysctl::read("net.core.somaxconn").unwrap())
    });
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].key, "net.core.somaxconn");
    assert_eq!(first[0].new, now);
    assert!(second.is_empty(), "already tuned: nothing to change");
    assert_eq!(
        sysctl::read("net.core.somaxconn"),
        host_before,
        "the host's own value is untouched"
    );
}

#[test]
fn a_tap_opened_again_carries_frames_once_it_runs() {
    // A wake opens its service's tap again; the kernel brings the link's queue back
    // asynchronously, and what the host sends before that is dropped (an ARP request,
    // then a connection waits 1 s for the retry). After `wait_running`, nothing is.
    let ns = Netns::new("reattach");
    let (lost, waited) = ns.run(|| {
        use std::os::fd::AsRawFd;
        use unikerneld::net::tap;
        const TAP: &str = "uk-reattach";
        let fd = tap::create(TAP).unwrap();
        for args in [
            vec!["addr", "add", "10.9.0.1/24", "dev", TAP],
            vec!["link", "set", TAP, "up"],
            vec![
                "neigh",
                "replace",
                "10.9.0.2",
                "lladdr",
                "52:54:00:00:00:02",
                "dev",
                TAP,
                "nud",
                "permanent",
            ],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}");
        }
        drop(fd);
        let socket = std::net::UdpSocket::bind("10.9.0.1:0").unwrap();
        let (mut lost, mut waited) = (0, Vec::new());
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let fd = tap::create(TAP).unwrap();
            // SAFETY: F_SETFL on an fd we own.
            let set = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            assert_eq!(set, 0);
            let took = tap::wait_running(TAP, std::time::Duration::from_millis(100)).unwrap();
            waited.push(took.expect("the tap runs again"));
            socket.send_to(b"to the guest", "10.9.0.2:9").unwrap();
            // The datagram as a frame on the tap (after its virtio-net header).
            let deadline = Instant::now() + std::time::Duration::from_millis(200);
            let mut got = false;
            let mut frame = [0u8; 2048];
            while !got && Instant::now() < deadline {
                // SAFETY: reads into a buffer of the length given; the fd is open.
                let n = unsafe { libc::read(fd.as_raw_fd(), frame.as_mut_ptr().cast(), frame.len()) };
                if n > 0 {
                    got = frame[..n as usize].windows(12).any(|w| w == b"to the guest");
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            }
            lost += usize::from(!got);
        }
        (lost, waited)
    });
    assert_eq!(lost, 0, "datagrams lost after the tap ran again");
    assert!(waited.iter().all(|d| *d < std::time::Duration::from_millis(100)));
}

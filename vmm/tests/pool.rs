//! The warm pool from the VMM's side: a real `unikernel-vmm --pool-fd` creates its VM,
//! says ready, and boots whatever one hand-off gives it (every boot protocol, a command
//! line from a memfd, two vCPUs), with its stderr moved to the handed log; it leaves
//! quietly when the daemon's end closes, and refuses a hand-off that does not fit its VM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod common;

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use contract::args::VmmArgs;
use contract::exit::ExitStatus;
use contract::pool;

/// A pooled VMM of `memory` and `vcpus`, its console on a pipe; returns it and the
/// daemon's end of its socket once it said ready.
fn pooled(memory: &str, vcpus: u8) -> (Child, UnixStream) {
    pooled_in(None, memory, vcpus)
}

fn pooled_in(ns: Option<&Netns>, memory: &str, vcpus: u8) -> (Child, UnixStream) {
    require_kvm();
    let (daemon, vmm_end) = pool::socket_pair().unwrap();
    // The VMM's end is inherited under its own number.
    // SAFETY: F_SETFD on an fd we own.
    assert_eq!(unsafe { libc::fcntl(vmm_end.as_raw_fd(), libc::F_SETFD, 0) }, 0);
    let mut cmd = match ns {
        Some(ns) => ns.command(&vmm_binary()),
        None => vmm(),
    };
    let child = cmd
        .args(["--pool-fd", &vmm_end.as_raw_fd().to_string(), "--memory", memory])
        .args(["--vcpus", &vcpus.to_string(), "--pool-of", "/nonexistent/services"])
        .args(["--pool-room", &" ".repeat(pool::ROOM)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(vmm_end);
    daemon.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(pool::read_ready(&daemon).unwrap(), "the pooled VMM says ready");
    (child, daemon)
}

fn memfd(text: &str) -> std::fs::File {
    // SAFETY: a fresh anonymous file; the name is a NUL-terminated string.
    let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd we own.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(text.as_bytes()).unwrap();
    file.rewind().unwrap();
    file
}

fn wait(mut child: Child) -> (std::process::ExitStatus, String, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status, out, err);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the pooled VMM did not stop");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_pooled_vmm_boots_what_it_is_handed() {
    for (image_name, vcpus) in [("hello", 1), ("hello-lx", 1), ("hello-mb", 1), ("hello", 2)] {
        let (child, daemon) = pooled("16M", vcpus);
        let log = memfd("");
        let cmdline = memfd(&format!("pooled {image_name}"));
        let args = VmmArgs {
            cmdline: String::new(),
            cmdline_fd: Some(0),
            vcpus,
            trace_boot: true,
            ..VmmArgs::new(image(image_name))
        };
        pool::send(&daemon, &args, log.as_fd(), &[cmdline.as_fd()]).unwrap();
        let (status, out, err) = wait(child);
        assert!(status.success(), "{image_name}: {status}: {err}");
        assert!(
            // A multiboot guest's command line starts with its file name.
            out.ends_with(&format!(" pooled {image_name}\n")),
            "{image_name} x{vcpus}: {out:?}"
        );
        assert!(err.is_empty(), "nothing on the pool's stderr after the hand-off: {err}");
        let mut handed = String::new();
        let mut log = log;
        log.rewind().unwrap();
        log.read_to_string(&mut handed).unwrap();
        assert!(
            handed.contains(contract::exit::STARTED_PREFIX) && handed.contains("boot trace"),
            "the VMM's words go to the handed stderr: {handed}"
        );
        // No VM creation on a pooled start: the VM was made before the hand-off.
        let started = handed
            .lines()
            .find_map(|l| l.strip_prefix(contract::exit::STARTED_PREFIX))
            .unwrap();
        assert!(!started.contains("vm ") && !started.contains("cpuid"), "{started}");
    }
}

#[test]
fn a_pooled_vmm_leaves_quietly_when_the_daemon_closes_its_end() {
    let (child, daemon) = pooled("16M", 1);
    drop(daemon);
    let (status, out, err) = wait(child);
    assert!(status.success(), "{status}: {err}");
    assert!(out.is_empty() && err.is_empty(), "{out} {err}");
}

#[test]
fn a_hand_off_that_does_not_fit_the_pooled_vm_is_refused() {
    let (child, daemon) = pooled("16M", 1);
    let log = memfd("");
    let args = VmmArgs {
        memory: "32M".parse().unwrap(),
        ..VmmArgs::new(image("hello"))
    };
    pool::send(&daemon, &args, log.as_fd(), &[]).unwrap();
    let (status, out, _) = wait(child);
    assert_eq!(status.code(), Some(i32::from(ExitStatus::Usage.code())));
    assert!(out.is_empty());
    let mut handed = String::new();
    let mut log = log;
    log.rewind().unwrap();
    log.read_to_string(&mut handed).unwrap();
    assert!(handed.contains("the hand-off asks for 32M"), "{handed}");

    // A bad image is refused like a cold start's (exit 3), after the VM was created.
    let (child, daemon) = pooled("16M", 1);
    let log = memfd("");
    pool::send(&daemon, &VmmArgs::new("/nonexistent/image".into()), log.as_fd(), &[]).unwrap();
    let (status, _, _) = wait(child);
    assert_eq!(status.code(), Some(i32::from(ExitStatus::Refused.code())));
}

#[test]
fn a_pooled_vmm_shows_what_it_was_handed_on_its_command_line() {
    // A guest that lives about a second (until the VMM's watchdog finds it dead).
    let (child, daemon) = pooled("16M", 1);
    let log = memfd("");
    let args = VmmArgs {
        console: contract::console::ConsoleTarget::Off,
        ..VmmArgs::new(image("deadhalt"))
    };
    pool::send(&daemon, &args, log.as_fd(), &[]).unwrap();
    // Seen from outside (ps, the daemon's sweep), it is the VMM it was handed.
    let want = format!("--kernel {}", image("deadhalt").display());
    let mut shown = String::new();
    for _ in 0..200 {
        let bytes = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        shown = String::from_utf8_lossy(&bytes).replace('\0', " ");
        if shown.contains(&want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let handed = {
        let mut log = log;
        let mut text = String::new();
        log.rewind().unwrap();
        log.read_to_string(&mut text).unwrap();
        text
    };
    assert!(shown.contains("unikernel-vmm --kernel"), "{shown}\n{handed}");
    assert!(
        shown.contains("--console off") && !shown.contains("--pool-fd"),
        "{shown}"
    );
    let (status, _, _) = wait(child);
    assert_eq!(status.code(), Some(1), "the watchdog ends it");
}

#[test]
fn a_pooled_vmm_resumes_a_snapshot_into_its_vm() {
    use contract::control::Request;
    const TAP: &str = "uk-p0";
    let ns = Netns::new("pool");
    ns.persistent_tap(TAP, "10.0.0.1/24");
    let dir = std::env::temp_dir().join(format!("uk-pool-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (sock, snap) = (dir.join("control.sock"), dir.join("snapshot"));
    // A guest booted from the pool, saved, and resumed by another pooled VMM.
    let (child, daemon) = pooled_in(Some(&ns), "16M", 1);
    let log = memfd("");
    let boot = VmmArgs {
        cmdline: "ip=10.0.0.2/24 gw=10.0.0.1 port=80 name=web".into(),
        tap: Some(TAP.into()),
        control: Some(sock.clone()),
        console: contract::console::ConsoleTarget::Off,
        ..VmmArgs::new(image("http"))
    };
    pool::send(&daemon, &boot, log.as_fd(), &[]).unwrap();
    let _first = KillOnDrop(child);
    assert_eq!(control(&sock, &Request::Ping), contract::control::Reply::Ok(vec![]));
    assert_eq!(ns.get(), "web 1");
    save_and_exit(&sock, &snap);

    // A hand-off of another size than the snapshot's is refused once it is read.
    let (child, daemon) = pooled_in(Some(&ns), "32M", 1);
    let log = memfd("");
    let restore = VmmArgs {
        kernel: None,
        restore: Some(snap.clone()),
        tap: Some(TAP.into()),
        control: Some(sock.clone()),
        console: contract::console::ConsoleTarget::Off,
        ..VmmArgs::new(PathBuf::new())
    };
    pool::send(&daemon, &restore, log.as_fd(), &[]).unwrap();
    let (status, _, _) = wait(child);
    assert_eq!(status.code(), Some(i32::from(ExitStatus::Refused.code())));
    let mut handed = String::new();
    let mut log = log;
    log.rewind().unwrap();
    log.read_to_string(&mut handed).unwrap();
    assert!(handed.contains("the snapshot 16M and 1"), "{handed}");

    // As the daemon hands a wake off: the control socket bound and listening already
    // (`--control-fd`), so a ping can be on its way before the VMM has it.
    let (child, daemon) = pooled_in(Some(&ns), "16M", 1);
    let log = memfd("");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut early = UnixStream::connect(&sock).unwrap();
    early.write_all(b"uk1 ping\n").unwrap();
    let by_fd = VmmArgs {
        control: None,
        control_fd: Some(0),
        ..restore.clone()
    };
    pool::send(&daemon, &by_fd, log.as_fd(), &[listener.as_fd()]).unwrap();
    drop(listener);
    let _second = KillOnDrop(child);
    early.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(early), &mut reply).unwrap();
    assert_eq!(
        contract::control::Reply::parse(&reply),
        contract::control::Reply::Ok(vec![])
    );
    assert_eq!(ns.get(), "web 2", "resumed with its state");
    assert_eq!(ns.get(), "web 3");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Snapshot and restore of a real guest: the http unikernel on a persistent tap in a
//! network namespace of the test's own, saved through the control socket, ended, and
//! resumed by a new VMM process with its request counter intact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use contract::control::{AfterSnapshot, Reply, Request};
use contract::exit::{last_error, ExitStatus};

const TAP: &str = "uk-s0";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("uk-snap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spawn(ns: &Netns, args: &[&std::ffi::OsStr]) -> Child {
    require_kvm();
    ns.command(&vmm_binary())
        .args(args)
        .args(["--tap", TAP])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unikernel-vmm")
}

fn wait_exit(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        assert!(Instant::now() < deadline, "the VMM did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_guest_saved_to_disk_resumes_in_a_new_process_with_its_state() {
    let ns = Netns::new("snap");
    ns.persistent_tap(TAP, "10.0.0.1/24");
    let dir = scratch("state");
    let sock = dir.join("control.sock");
    let snap = dir.join("snapshot");
    let http = image("http");
    let mut vm = KillOnDrop(spawn(
        &ns,
        &[
            "--kernel".as_ref(),
            http.as_os_str(),
            "--memory".as_ref(),
            "32M".as_ref(),
            "--cmdline".as_ref(),
            "ip=10.0.0.2/24 gw=10.0.0.1 port=80 name=web".as_ref(),
            "--control".as_ref(),
            sock.as_os_str(),
        ],
    ));
    let mut line = String::new();
    BufReader::new(vm.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "http: web listening on port 80\n");
    assert_eq!(ns.get(), "web 1");
    assert_eq!(control(&sock, &Request::Ping), Reply::Ok(vec![]));
    // A snapshot that cannot be written (here: under a file) is an error, and the guest
    // runs on as if nothing was asked.
    let blocked = dir.join("a-file");
    std::fs::write(&blocked, b"").unwrap();
    let Reply::Err(why) = control(
        &sock,
        &Request::Snapshot {
            dir: blocked.join("snap"),
            then: AfterSnapshot::Exit,
        },
    ) else {
        panic!("a snapshot under a file succeeded");
    };
    assert!(why.contains("a-file/snap"), "{why}");
    assert!(vm.0.try_wait().unwrap().is_none(), "the VMM did not exit");
    assert_eq!(ns.get(), "web 2", "the guest runs on");
    let Reply::Err(other_version) = control_line(&sock, "uk9 ping\n") else {
        panic!("another protocol version was served");
    };
    assert!(other_version.contains("uk9"), "{other_version}");

    // Save and end: the process exits with "saved", and the snapshot is sparse.
    let saved = save_and_exit(&sock, &snap);
    let child = std::mem::replace(&mut vm.0, std::process::Command::new("true").spawn().unwrap());
    let (code, err) = wait_exit(child);
    assert_eq!(code, Some(i32::from(ExitStatus::Saved.code())), "stderr: {err}");
    let memory = std::fs::metadata(snap.join("memory")).unwrap();
    assert_eq!(memory.len(), 32 << 20);
    // Guest memory holds the guest's secrets: the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&snap), 0o700);
    assert_eq!(mode(&snap.join("memory")), 0o600);
    assert_eq!(mode(&snap.join("state")), 0o600);
    assert_eq!(std::fs::read_dir(&snap).unwrap().count(), 2, "no temporary files left");
    let on_disk = memory.blocks() * 512;
    assert!(on_disk < 8 << 20, "{on_disk} bytes on disk for a 32M guest");
    assert!(
        saved.memory_bytes > 0 && saved.memory_bytes <= on_disk,
        "{saved:?} vs {on_disk}"
    );
    eprintln!(
        "snapshot: {} KiB of guest memory written in {} ms; {} KiB on disk",
        saved.memory_bytes / 1024,
        saved.millis,
        on_disk / 1024
    );

    // A new process resumes it: same counter, same MAC, same address.
    let start = Instant::now();
    let mut restored = KillOnDrop(spawn(
        &ns,
        &[
            "--restore".as_ref(),
            snap.as_os_str(),
            "--control".as_ref(),
            sock.as_os_str(),
        ],
    ));
    // The control socket answers once the VM runs again: then the tap has its carrier.
    assert_eq!(control(&sock, &Request::Ping), Reply::Ok(vec![]));
    let running = start.elapsed();
    assert_eq!(ns.get(), "web 3", "the counter survived");
    eprintln!(
        "restore: running after {running:?}, first response after {:?}",
        start.elapsed()
    );
    assert_eq!(ns.get(), "web 4");

    // A checkpoint of the restored VM (memory mapped from the first snapshot) keeps
    // everything, including pages the guest only ever read from that file.
    let again = dir.join("again");
    control(
        &sock,
        &Request::Snapshot {
            dir: again.clone(),
            then: AfterSnapshot::Resume,
        },
    )
    .saved()
    .expect("checkpoint");
    assert_eq!(ns.get(), "web 5", "still running after a checkpoint");
    assert_eq!(control(&sock, &Request::Pause), Reply::Ok(vec![]));
    assert_eq!(control(&sock, &Request::Resume), Reply::Ok(vec![]));
    assert_eq!(ns.get(), "web 6");
    let _ = restored.0.kill();
    let _ = restored.0.wait();
    let _restored2 = KillOnDrop(spawn(&ns, &["--restore".as_ref(), again.as_os_str()]));
    assert_eq!(ns.get(), "web 5", "the checkpoint was taken after request 4");
}

#[test]
fn damaged_snapshots_are_refused_with_one_line_before_anything_runs() {
    let ns = Netns::new("snapbad");
    ns.persistent_tap(TAP, "10.0.0.1/24");
    let dir = scratch("bad");
    let sock = dir.join("control.sock");
    let snap = dir.join("snapshot");
    let http = image("http");
    let _vm = KillOnDrop(spawn(
        &ns,
        &[
            "--kernel".as_ref(),
            http.as_os_str(),
            "--cmdline".as_ref(),
            "ip=10.0.0.2/24 gw=10.0.0.1 port=80 name=bad".as_ref(),
            "--control".as_ref(),
            sock.as_os_str(),
        ],
    ));
    assert_eq!(ns.get(), "bad 1");
    save_and_exit(&sock, &snap);
    let state = std::fs::read(snap.join("state")).unwrap();
    let refuse = |tag: &str, damage: &dyn Fn(&Path), expect: &str| {
        let copy = dir.join(tag);
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join("state"), &state).unwrap();
        // A hard link keeps the inode the state file names.
        let _ = std::fs::remove_file(copy.join("memory"));
        std::fs::hard_link(snap.join("memory"), copy.join("memory")).unwrap();
        damage(&copy);
        let (code, err) = wait_exit(spawn(&ns, &["--restore".as_ref(), copy.as_os_str()]));
        assert_eq!(code, Some(i32::from(ExitStatus::Refused.code())), "{tag}: {err}");
        let line = last_error(&err).unwrap_or_else(|| panic!("{tag}: no error line in {err:?}"));
        assert!(line.contains(expect), "{tag}: {line:?} does not say {expect:?}");
        assert_eq!(err.lines().count(), 1, "{tag}: one line: {err:?}");
    };
    refuse(
        "truncated",
        &|d| std::fs::write(d.join("state"), &state[..state.len() / 2]).unwrap(),
        "truncated",
    );
    refuse(
        "corrupt",
        &|d| {
            let mut s = state.clone();
            let at = s.len() - 100;
            s[at] ^= 0x01;
            std::fs::write(d.join("state"), s).unwrap()
        },
        "corrupt",
    );
    refuse(
        "foreign",
        &|d| std::fs::write(d.join("state"), b"#!/bin/sh\necho hi\n").unwrap(),
        "not a unikernel-vmm snapshot",
    );
    refuse(
        "version",
        &|d| {
            let mut s = state.clone();
            s[8] = 9;
            std::fs::write(d.join("state"), s).unwrap()
        },
        "format version 9",
    );
    refuse(
        "memory-swapped",
        &|d| {
            std::fs::remove_file(d.join("memory")).unwrap();
            std::fs::copy(snap.join("memory"), d.join("memory")).unwrap();
        },
        "not written with this state",
    );
    refuse(
        "memory-missing",
        &|d| std::fs::remove_file(d.join("memory")).unwrap(),
        "memory",
    );
    refuse("no-snapshot", &|d| std::fs::remove_dir_all(d).unwrap(), "state");
    // And the good one still restores (the damage went to copies).
    let _vm = KillOnDrop(spawn(&ns, &["--restore".as_ref(), snap.as_os_str()]));
    assert_eq!(ns.get(), "bad 2");
}

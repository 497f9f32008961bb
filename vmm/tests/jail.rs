//! The jailed VMM, seen from outside as an attacker on the host would see it: the http
//! unikernel with --jail-uid on a tap in a network namespace of the test's own. Its
//! threads run as the given uid with no capabilities, no_new_privs and their seccomp
//! filters; its root holds nothing of the host's; its command line secret is not in
//! /proc; and it still saves to its snapshot directory and resumes under another uid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod common;

use std::io::{BufRead, BufReader, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::*;
use contract::control::{AfterSnapshot, Reply, Request};
use contract::exit::ExitStatus;

const TAP: &str = "uk-j0";
const UID: u32 = 71_001;
const UID2: u32 = 71_002;
const SECRET: &str = "token=hunter2";

/// A memfd holding `text`, inheritable (no close-on-exec), at offset 0.
fn memfd(text: &str) -> std::fs::File {
    // SAFETY: a fresh anonymous file; the name is a NUL-terminated string.
    let fd = unsafe { libc::memfd_create(c"cmdline".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd we own.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(text.as_bytes()).unwrap();
    file.rewind().unwrap();
    file
}

fn spawn(ns: &Netns, uid: u32, args: &[&std::ffi::OsStr]) -> Child {
    require_kvm();
    ns.command(&vmm_binary())
        .args(args)
        .args([
            "--tap",
            TAP,
            "--jail-uid",
            &uid.to_string(),
            "--jail-gid",
            &uid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unikernel-vmm")
}

/// `Field:` of /proc/<pid>/task/<tid>/status, for every thread.
fn per_thread(pid: u32, field: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .unwrap_or_else(|| panic!("no {field} in {status}"))
                .trim()
                .to_string()
        })
        .collect()
}

fn assert_jailed(pid: u32, uid: u32, snapshot: &Path) {
    let threads = per_thread(pid, "Uid");
    assert!(threads.len() >= 2, "a vCPU and the event loop: {threads:?}");
    let uid_text = uid.to_string();
    for ids in per_thread(pid, "Uid").iter().chain(&per_thread(pid, "Gid")) {
        assert_eq!(
            ids.split_whitespace().collect::<Vec<_>>(),
            [uid_text.as_str(); 4],
            "real, effective, saved, fs"
        );
    }
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        for caps in per_thread(pid, field) {
            assert_eq!(caps, "0000000000000000", "{field}");
        }
    }
    assert!(per_thread(pid, "NoNewPrivs").iter().all(|v| v == "1"));
    assert!(
        per_thread(pid, "Seccomp").iter().all(|v| v == "2"),
        "every thread filtered"
    );
    assert_eq!(per_thread(pid, "Groups"), vec![String::new(); threads.len()]);
    // Its root: an empty tmpfs but for the path to its snapshot directory.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let top: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let first = snapshot.components().nth(1).unwrap().as_os_str().to_owned();
    assert_eq!(top, vec![first], "nothing else of the host in the jail");
    assert!(!root.join("etc/passwd").exists());
    assert!(!root.join("dev/kvm").exists());
    let inside = root.join(snapshot.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::metadata(&inside).unwrap().uid(),
        uid,
        "its snapshot directory is its own"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("hunter2"),
        "the secret is not in /proc"
    );
}

#[test]
fn a_jailed_vmm_serves_saves_and_resumes_with_nothing_of_the_host() {
    let ns = Netns::new("jail");
    ns.persistent_tap(TAP, "10.0.0.1/24");
    let dir = std::env::temp_dir().join(format!("uk-jail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("control.sock");
    let snap = dir.join("snapshot");
    let http = image("http");
    let cmdline = memfd(&format!("ip=10.0.0.2/24 gw=10.0.0.1 port=80 name=web {SECRET}"));
    let fd = cmdline.as_raw_fd().to_string();
    let mut vm = KillOnDrop(spawn(
        &ns,
        UID,
        &[
            "--kernel".as_ref(),
            http.as_os_str(),
            "--memory".as_ref(),
            "32M".as_ref(),
            "--cmdline-fd".as_ref(),
            fd.as_ref(),
            "--control".as_ref(),
            sock.as_os_str(),
            "--snapshot-dir".as_ref(),
            snap.as_os_str(),
        ],
    ));
    drop(cmdline);
    let mut line = String::new();
    BufReader::new(vm.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line, "http: web listening on port 80\n",
        "the command line came through the fd"
    );
    assert_eq!(ns.get(), "web 1");
    assert_jailed(vm.0.id(), UID, &snap);

    // Anywhere but its snapshot directory, there is nothing to write to: an error, and
    // the guest runs on.
    let Reply::Err(why) = control(
        &sock,
        &Request::Snapshot {
            dir: dir.join("elsewhere"),
            then: AfterSnapshot::Exit,
        },
    ) else {
        panic!("a jailed VMM wrote outside its snapshot directory");
    };
    assert!(why.contains("elsewhere"), "{why}");
    assert!(!dir.join("elsewhere").exists());
    assert_eq!(ns.get(), "web 2");

    save_and_exit(&sock, &snap);
    let status = vm.0.wait().unwrap();
    assert_eq!(status.code(), Some(i32::from(ExitStatus::Saved.code())));
    assert_eq!(std::fs::metadata(snap.join("memory")).unwrap().uid(), UID);

    // Another VMM, another uid, the same directory: handed over, resumed.
    let restored = KillOnDrop(spawn(
        &ns,
        UID2,
        &[
            "--restore".as_ref(),
            snap.as_os_str(),
            "--control".as_ref(),
            sock.as_os_str(),
            "--snapshot-dir".as_ref(),
            snap.as_os_str(),
        ],
    ));
    assert_eq!(control(&sock, &Request::Ping), Reply::Ok(vec![]));
    assert_eq!(ns.get(), "web 3", "resumed where it was saved");
    assert_jailed(restored.0.id(), UID2, &snap);
    control(
        &sock,
        &Request::Snapshot {
            dir: snap.clone(),
            then: AfterSnapshot::Resume,
        },
    )
    .saved()
    .expect("a checkpoint over the first uid's files");
    assert_eq!(ns.get(), "web 4");
    drop(restored);

    // A state file the last VMM could have written anything into: a jailed restore reads
    // it only once jailed, and refuses it with its one line.
    let state = snap.join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();
    let out = spawn(&ns, UID2, &["--restore".as_ref(), snap.as_os_str()])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(ExitStatus::Refused.code())));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        contract::exit::last_error(&err).is_some_and(|l| l.contains("corrupt")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

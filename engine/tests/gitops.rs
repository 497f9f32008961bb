//! GitOps end to end: daemons following a local bare repository (`--git file://...`), real
//! VMs, real git. A revision is applied whole or refused whole; each host runs its own
//! folder; `unikernelctl sync` applies a push at once; a plain config directory that is a
//! git work tree reports its HEAD.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::bus::PrivateBus;
use support::{http_decl, Daemon};
use unikerneld::status::{Snapshot, State};

/// A bare repository (the remote) and a work tree that commits and pushes to it.
struct Repo {
    bare: PathBuf,
    work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git (package git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Repo {
    fn new(dir: &Path) -> Repo {
        let bare = dir.join("origin.git");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(dir, &["init", "--quiet", "--bare", bare.to_str().unwrap()]);
        git(&work, &["init", "--quiet"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Repo { bare, work }
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Commits everything and pushes it to main; returns the commit id.
    fn push(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

fn follower(tag: &str, repo: &Repo, path: &str, poll: &str) -> Daemon {
    let mut d = Daemon::new(tag);
    let git_dir = d.dir.join("git").display().to_string();
    d.args = [
        "--git",
        &repo.url(),
        "--git-ref",
        "main",
        "--git-path",
        path,
        "--git-poll",
        poll,
        "--git-dir",
        &git_dir,
    ]
    .map(String::from)
    .to_vec();
    d
}

fn applied(s: &Snapshot) -> Option<&str> {
    s.source.applied_revision.as_ref().map(|r| r.commit.as_str())
}

/// `unikernelctl COMMAND` against the private bus.
fn ctl(bus: &PrivateBus, command: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unikernelctl"))
        .arg(command)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_followed_repository_is_applied_whole_or_refused_whole() {
    let base = std::env::temp_dir().join(format!("uk-git-whole-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let repo = Repo::new(&base);
    // This host's folder is hosts/<its name> (--git-path hosts/%H); others are not ours.
    let mine = format!("hosts/{}", host_name());
    repo.write(&format!("{mine}/web.kdl"), &http_decl("web", 8080, ""));
    repo.write("hosts/elsewhere/other.kdl", &http_decl("other", 8081, ""));
    let c1 = repo.push("web on 8080");

    let mut d = follower("gitwhole", &repo, "hosts/%H", "1s");
    d.start();
    let s = d.wait_for("revision 1 applied", Duration::from_secs(20), |s| {
        applied(s) == Some(c1.as_str())
    });
    assert_eq!(s.source.applied_revision.as_ref().unwrap().subject, "web on 8080");
    let web = d.running("web");
    assert!(d.service("other").is_none(), "another host's folder is not ours");
    assert_eq!(d.get(8080).unwrap().0, 200);

    // A memory change: the VM is replaced, the new commit shows in status.json.
    repo.write(&format!("{mine}/web.kdl"), &http_decl("web", 8080, "memory \"24M\"\n"));
    let c2 = repo.push("web gets 24M");
    d.wait_for("revision 2 applied", Duration::from_secs(20), |s| {
        applied(s) == Some(c2.as_str())
    });
    let web2 = d.wait_for("web replaced", Duration::from_secs(20), |s| {
        s.services
            .iter()
            .any(|x| x.name == "web" && x.state == State::Running && x.memory_bytes == 24 << 20)
    });
    let web2 = web2.services.into_iter().find(|x| x.name == "web").unwrap();
    assert_ne!(web2.pid, web.pid, "a new VM");

    // A broken revision: one bad file, one good new one. Nothing of it is applied.
    repo.write(&format!("{mine}/web.kdl"), &http_decl("web", 8080, "memroy \"32M\"\n"));
    repo.write(&format!("{mine}/api.kdl"), &http_decl("api", 8082, ""));
    let c3 = repo.push("broken: memroy");
    let s = d.wait_for("revision 3 refused", Duration::from_secs(20), |s| {
        s.source.failed_revision.as_ref().is_some_and(|f| f.commit == c3)
    });
    let failed = s.source.failed_revision.as_ref().unwrap();
    assert_eq!(applied(&s), Some(c2.as_str()), "the last good revision stays");
    assert!(
        failed
            .errors
            .iter()
            .any(|e| e.starts_with(&format!("{mine}/web.kdl:")) && e.contains("memroy")),
        "{failed:?}"
    );
    assert_eq!(failed.subject, "broken: memroy");
    std::thread::sleep(Duration::from_millis(1500));
    let s = d.snapshot().unwrap();
    assert!(
        s.services.iter().all(|x| x.name != "api"),
        "the good file of a refused revision is not applied either"
    );
    let now = d.service("web").unwrap();
    assert_eq!(
        (now.pid, now.state),
        (web2.pid, State::Running),
        "running services undisturbed"
    );
    assert!(d.log_text().contains(&format!("revision {} refused", &c3[..12])));

    // The next good revision is applied normally.
    repo.write(&format!("{mine}/web.kdl"), &http_decl("web", 8080, "memory \"24M\"\n"));
    let c4 = repo.push("fixed");
    let s = d.wait_for("revision 4 applied", Duration::from_secs(20), |s| {
        applied(s) == Some(c4.as_str())
    });
    assert!(
        s.source.failed_revision.is_none(),
        "a good revision clears the refused one"
    );
    d.running("api");
    assert_eq!(
        d.service("web").unwrap().pid,
        web2.pid,
        "web did not change in revision 4"
    );

    // A declaration may not be a symlink out of the repository (a host file).
    std::os::unix::fs::symlink("/etc/hostname", repo.work.join(&mine).join("host.kdl")).unwrap();
    let c5 = repo.push("a link out");
    let s = d.wait_for("revision 5 refused", Duration::from_secs(20), |s| {
        s.source.failed_revision.as_ref().is_some_and(|f| f.commit == c5)
    });
    let errors = &s.source.failed_revision.as_ref().unwrap().errors;
    assert!(
        errors[0].contains("host.kdl: a symlink that leaves the repository"),
        "{errors:?}"
    );
    assert_eq!(applied(&s), Some(c4.as_str()));
    std::fs::remove_file(repo.work.join(&mine).join("host.kdl")).unwrap();
    let c6 = repo.push("no link out");
    d.wait_for("revision 6 applied", Duration::from_secs(20), |s| {
        applied(s) == Some(c6.as_str())
    });

    // A daemon restart starts on the revision it applied, with the remote gone.
    d.kill_daemon();
    std::fs::rename(&repo.bare, base.join("gone.git")).unwrap();
    d.start();
    let s = d.wait_for("adopted on revision 6", Duration::from_secs(20), |s| {
        applied(s) == Some(c6.as_str()) && s.source.fetch_error.is_some()
    });
    assert!(
        s.source.fetch_error.as_ref().unwrap().contains("fetching main"),
        "{:?}",
        s.source.fetch_error
    );
    assert_eq!(d.running("web").pid, web2.pid);
    assert!(s.services.iter().any(|x| x.name == "api"));
    assert_eq!(applied(&s), Some(c6.as_str()));
    drop(d);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn three_hosts_follow_one_repository_each_to_its_own_folder_and_sync_applies_at_once() {
    let base = std::env::temp_dir().join(format!("uk-git-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let repo = Repo::new(&base);
    for (host, port) in [("h1", 8080), ("h2", 8081), ("h3", 8082)] {
        repo.write(
            &format!("hosts/{host}/{host}.kdl"),
            &http_decl(&format!("svc-{host}"), port, ""),
        );
    }
    let c1 = repo.push("three hosts");
    // Slow polls: after the first round, only `sync` makes them fetch.
    let mut fleet: Vec<Daemon> = ["h1", "h2", "h3"]
        .into_iter()
        .map(|h| follower(&format!("git{h}"), &repo, &format!("hosts/{h}"), "1h"))
        .collect();
    let bus = PrivateBus::start(&fleet[0].dir);
    fleet[0].start_with(&[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)]);
    fleet[1].start();
    fleet[2].start();
    for (d, host) in fleet.iter().zip(["h1", "h2", "h3"]) {
        let s = d.wait_for("revision 1", Duration::from_secs(20), |s| {
            applied(s) == Some(c1.as_str())
        });
        d.running(&format!("svc-{host}"));
        let names: Vec<&str> = s.services.iter().map(|x| x.name.as_str()).collect();
        assert!(
            names.iter().all(|n| *n == format!("svc-{host}")),
            "{host} runs only its own: {names:?}"
        );
    }

    // A push, then `unikernelctl sync` on h1: applied at once (the poll is an hour away).
    repo.write("hosts/h1/extra.kdl", &http_decl("extra", 8090, ""));
    let c2 = repo.push("h1 gets extra");
    let out = ctl(&bus, "sync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("applied: revision {}", &c2[..12]));
    let s = fleet[0].snapshot().unwrap();
    assert_eq!(applied(&s), Some(c2.as_str()), "applied before sync returned");
    assert!(s.services.iter().any(|x| x.name == "extra"));
    fleet[0].running("extra");
    // The others did not fetch yet.
    assert_eq!(applied(&fleet[1].snapshot().unwrap()), Some(c1.as_str()));

    // `unikernelctl status` shows the revision; a second sync finds nothing new.
    let out = ctl(&bus, "status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Revision: {} \"h1 gets extra\"", &c2[..12])),
        "{text}"
    );
    assert!(
        text.contains(&format!("revision {}", &c2[..12])),
        "STATUS= mentions it: {text}"
    );
    let out = ctl(&bus, "sync");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("unchanged: revision {}", &c2[..12])
    );

    // A refused revision makes sync fail with the errors.
    repo.write("hosts/h1/extra.kdl", "unikernel \"extra\" {\n    imag \"/x\"\n}\n");
    repo.push("typo");
    let out = ctl(&bus, "sync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hosts/h1/extra.kdl:2:5"), "{stderr}");
    fleet[0].running("extra");
    drop(fleet);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_config_directory_in_a_git_work_tree_reports_its_head_and_dirty() {
    let mut d = Daemon::new("gitworktree");
    git(&d.conf, &["init", "--quiet"]);
    d.declare("web.kdl", &http_decl("web", 8080, ""));
    git(&d.conf, &["add", "-A"]);
    git(&d.conf, &["commit", "--quiet", "-m", "first"]);
    let head = git(&d.conf, &["rev-parse", "HEAD"]);
    d.start();
    d.running("web");
    let s = d.wait_for("HEAD reported", Duration::from_secs(10), |s| {
        applied(s) == Some(head.as_str())
    });
    let r = s.source.applied_revision.unwrap();
    assert_eq!((r.subject.as_str(), r.dirty), ("first", false));
    // An edit not committed: the same HEAD, dirty.
    d.declare("web.kdl", &http_decl("web", 8080, "memory \"24M\"\n"));
    d.wait_for("dirty", Duration::from_secs(10), |s| {
        s.source
            .applied_revision
            .as_ref()
            .is_some_and(|r| r.dirty && r.commit == head)
    });
}

#[test]
fn with_allowed_signers_only_signed_commits_are_applied() {
    let base = std::env::temp_dir().join(format!("uk-git-signed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let repo = Repo::new(&base);
    let key = base.join("key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "release", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (package openssh-client)");
    assert!(st.success());
    let public = std::fs::read_to_string(base.join("key.pub")).unwrap();
    let signers = base.join("allowed_signers");
    std::fs::write(&signers, format!("release@example.org {public}")).unwrap();
    let signing = [
        "-c",
        "gpg.format=ssh",
        "-c",
        &format!("user.signingkey={}", key.display()),
    ];

    repo.write("web.kdl", &http_decl("web", 8080, ""));
    git(&repo.work, &["add", "-A"]);
    git(
        &repo.work,
        &[&signing[..], &["commit", "--quiet", "-S", "-m", "signed"]].concat(),
    );
    git(&repo.work, &["push", "--quiet", "origin", "HEAD:main"]);
    let c1 = git(&repo.work, &["rev-parse", "HEAD"]);

    let mut d = follower("gitsigned", &repo, "", "1s");
    d.args
        .extend(["--git-allowed-signers".to_string(), signers.display().to_string()]);
    d.start();
    d.wait_for("the signed revision applied", Duration::from_secs(20), |s| {
        applied(s) == Some(c1.as_str())
    });
    d.running("web");

    // Someone who can push but holds no listed key changes nothing.
    repo.write("web.kdl", &http_decl("web", 8080, "memory \"32M\"\n"));
    let c2 = repo.push("unsigned");
    let s = d.wait_for("the unsigned revision refused", Duration::from_secs(20), |s| {
        s.source.failed_revision.as_ref().is_some_and(|f| f.commit == c2)
    });
    let errors = &s.source.failed_revision.as_ref().unwrap().errors;
    assert!(errors[0].contains("is not signed by a key in"), "{errors:?}");
    assert_eq!(applied(&s), Some(c1.as_str()));
    assert_eq!(d.service("web").unwrap().memory_bytes, 16 << 20);
    drop(d);
    let _ = std::fs::remove_dir_all(&base);
}

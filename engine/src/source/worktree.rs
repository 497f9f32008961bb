//! A plain config directory that is (inside) a git work tree: the revision in force is its
//! HEAD, "dirty" when the declarations there differ from it. Read with the git CLI, off
//! the control loop; a directory that is not in a work tree (or no git) has no revision.
use std::path::Path;
use std::process::{Command, Stdio};

use super::Revision;

/// HEAD of the work tree `dir` is in, or `None`.
pub fn head(dir: &Path) -> Option<Revision> {
    let out = git(dir, &["log", "-1", "--format=%H%x00%ct%x00%s", "HEAD"])?;
    let mut parts = out.trim_end_matches('\n').splitn(3, '\0');
    let commit = parts.next()?.to_string();
    let time = parts.next()?.parse().ok()?;
    let subject = parts.next().unwrap_or("").to_string();
    // Only this directory's files count (a change elsewhere in the repository is not a
    // change of what runs here).
    let dirty =
        git(dir, &["status", "--porcelain", "--untracked-files=normal", "--", "."]).is_some_and(|s| !s.is_empty());
    Some(Revision {
        commit,
        time,
        subject,
        dirty,
    })
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

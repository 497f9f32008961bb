//! Following a git remote (`unikerneld --git URL`): fetch the followed ref into a bare
//! mirror, export each new commit into a directory of its own, check every file of the
//! host's folder in it with a fresh loader, and only if all of it is valid switch the
//! declarations directory (a symlink, `current`) to it in one rename. A refused revision
//! changes nothing; the next good one is applied normally.
//!
//! The git CLI does the work: it speaks every transport an operator already has set up
//! (file://, https:// with credential helpers, ssh:// with the host's keys and
//! known_hosts), verifies signatures (`verify-commit`) the same way, and a fetch of a
//! small repository costs nothing next to the poll interval. Everything here blocks: the
//! daemon runs it on a blocking thread, never on its control loop.
//!
//! Layout of `--git-dir` (default /var/lib/unikerneld/git, kept across reboots so that a
//! host boots into the revision it last applied, even with the remote unreachable):
//! `mirror.git/` (bare), `revisions/<commit>/` (the commit's tree, its `.git` excepted;
//! this host's folder in it holds `.revision`, the commit's metadata), `current` ->
//! `revisions/<commit>/<path>`.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{FailedRevision, Revision};
use crate::decl::Loader;

pub const CURRENT: &str = "current";
const METADATA: &str = ".revision";
/// Where the followed ref is fetched to in the mirror.
const FOLLOWED: &str = "refs/unikerneld/followed";

#[derive(Clone, Debug)]
pub struct GitConfig {
    pub url: String,
    /// A branch or tag of the remote.
    pub reference: String,
    /// This host's folder in the repository (`%H` already expanded); empty: the root.
    pub path: String,
    pub poll: Duration,
    pub dir: PathBuf,
    /// Refuse commits not signed by a key in this file (git's gpg.ssh.allowedSignersFile
    /// format; ssh signatures).
    pub allowed_signers: Option<PathBuf>,
}

impl GitConfig {
    /// The declarations directory the controller reads: the symlink to the revision in
    /// force (absent until the first revision is applied).
    pub fn declarations_dir(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }
}

/// `%H` -> this host's name, `%%` -> `%` (systemd's specifier style); leading and
/// trailing slashes dropped.
pub fn expand_path(template: &str, host: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('H') => out.push_str(host),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "unknown specifier %{} in --git-path {template:?} (use %H for the host name, %% for %)",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    let trimmed = out.trim_matches('/').to_string();
    if trimmed.split('/').any(|part| part == "..") {
        return Err(format!("--git-path {template:?} leaves the repository (..)"));
    }
    Ok(trimmed)
}

/// This host's name, as `%H` means it (the kernel's nodename, like systemd's %H).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// What one round of following did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The followed ref is at the revision in force (or at the one last refused).
    Unchanged,
    /// A new revision is in force: the controller reloads.
    Applied(Revision),
    /// A new revision was refused whole; the one in force stays.
    Refused(FailedRevision),
    /// The remote could not be reached or read: nothing changed; tried again next poll.
    FetchFailed(String),
}

pub struct Follower {
    cfg: GitConfig,
    /// The commit in force, and the one refused last (not checked again until it moves).
    applied: Option<Revision>,
    refused: Option<String>,
}

impl Follower {
    /// Picks up the revision a previous daemon applied (the `current` link).
    pub fn new(cfg: GitConfig) -> Follower {
        let applied = std::fs::read_to_string(cfg.declarations_dir().join(METADATA))
            .ok()
            .and_then(|text| serde_json::from_str::<Revision>(&text).ok());
        Follower {
            cfg,
            applied,
            refused: None,
        }
    }

    pub fn applied(&self) -> Option<&Revision> {
        self.applied.as_ref()
    }

    /// One round: fetch, and if the followed ref moved, check and apply the new commit.
    pub fn sync(&mut self) -> Outcome {
        if let Err(e) = self.fetch() {
            return Outcome::FetchFailed(e);
        }
        let commit = match self.git(&["rev-parse", "--verify", &format!("{FOLLOWED}^{{commit}}")]) {
            Ok(c) => c.trim().to_string(),
            Err(e) => return Outcome::FetchFailed(e),
        };
        if self.applied.as_ref().is_some_and(|r| r.commit == commit) || self.refused.as_deref() == Some(&commit) {
            return Outcome::Unchanged;
        }
        let revision = match self.describe(&commit) {
            Ok(r) => r,
            Err(e) => return Outcome::FetchFailed(e),
        };
        match self.check_out(&revision) {
            Ok(()) => {
                self.refused = None;
                self.applied = Some(revision.clone());
                Outcome::Applied(revision)
            }
            Err(errors) => {
                self.refused = Some(commit.clone());
                Outcome::Refused(FailedRevision {
                    commit,
                    subject: revision.subject,
                    errors,
                })
            }
        }
    }

    fn mirror(&self) -> PathBuf {
        self.cfg.dir.join("mirror.git")
    }

    fn git(&self, args: &[&str]) -> Result<String, String> {
        run_git(Some(&self.mirror()), args)
    }

    fn fetch(&self) -> Result<(), String> {
        let mirror = self.mirror();
        if !mirror.join("HEAD").exists() {
            std::fs::create_dir_all(&self.cfg.dir).map_err(|e| format!("{}: {e}", self.cfg.dir.display()))?;
            run_git(None, &["init", "--quiet", "--bare", &mirror.to_string_lossy()])?;
        }
        let refspec = format!("+{}:{FOLLOWED}", self.cfg.reference);
        self.git(&[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            &self.cfg.url,
            &refspec,
        ])
        .map_err(|e| format!("fetching {} from {}: {e}", self.cfg.reference, self.cfg.url))?;
        Ok(())
    }

    fn describe(&self, commit: &str) -> Result<Revision, String> {
        let out = self.git(&["log", "-1", "--format=%ct%x00%s", commit])?;
        let (time, subject) = out.trim_end_matches('\n').split_once('\0').unwrap_or(("0", ""));
        Ok(Revision {
            commit: commit.to_string(),
            time: time.parse().unwrap_or(0),
            subject: subject.to_string(),
            dirty: false,
        })
    }

    /// Exports `revision`, checks all of this host's folder of it, and switches `current`
    /// to it. Errors: one line each, for the refused revision's report.
    fn check_out(&self, revision: &Revision) -> Result<(), Vec<String>> {
        let commit = &revision.commit;
        if let Some(signers) = &self.cfg.allowed_signers {
            let config = format!("gpg.ssh.allowedSignersFile={}", signers.display());
            self.git(&["-c", &config, "verify-commit", commit]).map_err(|e| {
                vec![format!(
                    "commit {commit} is not signed by a key in {}: {e}",
                    signers.display()
                )]
            })?;
        }
        let revisions = self.cfg.dir.join("revisions");
        let staging = revisions.join(format!(".staging-{commit}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| vec![format!("{}: {e}", staging.display())])?;
        let result = self
            .export(commit, &staging)
            .and_then(|()| self.validate(revision, &staging));
        if let Err(errors) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(errors);
        }
        let done = revisions.join(commit);
        let _ = std::fs::remove_dir_all(&done);
        std::fs::rename(&staging, &done).map_err(|e| vec![format!("{}: {e}", done.display())])?;
        // One rename switches the directory: the controller sees the old revision or the
        // new one, never a mix.
        let link = self.cfg.dir.join(format!(".{CURRENT}.tmp"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new("revisions").join(commit).join(&self.cfg.path), &link)
            .and_then(|()| std::fs::rename(&link, self.cfg.declarations_dir()))
            .map_err(|e| {
                vec![format!(
                    "switching {} to {commit}: {e}",
                    self.cfg.declarations_dir().display()
                )]
            })?;
        self.prune(commit);
        Ok(())
    }

    /// `git archive <commit> | tar -x`: the whole tree (a host's file may be a symlink to
    /// a shared one elsewhere in the repository), nothing of .git.
    fn export(&self, commit: &str, into: &Path) -> Result<(), Vec<String>> {
        if !self.cfg.path.is_empty() {
            let kind = self.git(&["cat-file", "-t", &format!("{commit}:{}", self.cfg.path)]);
            if kind.as_deref().map(str::trim) != Ok("tree") {
                return Err(vec![format!(
                    "{} is not a folder in commit {commit}: this host's declarations must be there (--git-path)",
                    self.cfg.path
                )]);
            }
        }
        let mut archive = git_command(Some(&self.mirror()), &["archive", "--format=tar", commit])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| vec![format!("git archive: {e}")])?;
        let stdout = archive
            .stdout
            .take()
            .ok_or_else(|| vec!["git archive: no output".to_string()])?;
        let tar = Command::new("tar")
            .arg("-x")
            .arg("--no-same-owner")
            .arg("-C")
            .arg(into)
            .stdin(stdout)
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| vec![format!("tar: {e}")])?;
        let mut err = String::new();
        if let Some(mut s) = archive.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let status = archive.wait().map_err(|e| vec![format!("git archive: {e}")])?;
        if !status.success() {
            return Err(vec![format!("git archive {commit}: {}", last_line(&err))]);
        }
        if !tar.status.success() {
            return Err(vec![format!(
                "tar: {}",
                last_line(&String::from_utf8_lossy(&tar.stderr))
            )]);
        }
        Ok(())
    }

    /// Every file of this host's folder, loaded by a fresh loader: any error refuses it
    /// all. A declaration that is a symlink must stay inside the repository: a commit
    /// cannot make the daemon read host files.
    fn validate(&self, revision: &Revision, staging: &Path) -> Result<(), Vec<String>> {
        let folder = staging.join(&self.cfg.path);
        let prefix = format!("{}/", staging.display());
        let root = staging
            .canonicalize()
            .map_err(|e| vec![format!("{}: {e}", staging.display())])?;
        let mut errors = Vec::new();
        for file in
            crate::decl::load::declaration_files(&folder).map_err(|e| vec![format!("{}: {e}", self.cfg.path)])?
        {
            let inside = file.canonicalize().is_ok_and(|real| real.starts_with(&root));
            if !inside {
                let shown = file.display().to_string().replace(&prefix, "");
                errors.push(format!(
                    "{shown}: a symlink that leaves the repository (point it at a file of the repository)"
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let loaded = Loader::default().load_dir(&folder);
        let errors: Vec<String> = loaded.errors().map(|e| e.one_line().replace(&prefix, "")).collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        let metadata = serde_json::to_string(revision).map_err(|e| vec![e.to_string()])?;
        std::fs::write(folder.join(METADATA), metadata).map_err(|e| vec![format!("{}: {e}", folder.display())])
    }

    /// Keeps the revision in force and the one before it (what `current` pointed at a
    /// moment ago may still be read by a reload in flight).
    fn prune(&self, keep: &str) {
        let revisions = self.cfg.dir.join("revisions");
        let previous = self.applied.as_ref().map(|r| r.commit.clone());
        let Ok(entries) = std::fs::read_dir(&revisions) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != keep && Some(&name) != previous.as_ref() && !name.starts_with(".staging-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn git_command(dir: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("--git-dir").arg(dir);
    }
    cmd.args(args)
        .env("LC_ALL", "C")
        // Never wait for a password on a terminal nobody watches.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(Stdio::null());
    cmd
}

pub(super) fn run_git(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let out = git_command(dir, args)
        .output()
        .map_err(|e| format!("cannot run git: {e} (install git to follow a repository)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(last_line(&String::from_utf8_lossy(&out.stderr)).to_string())
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed")
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_path_specifiers() {
        assert_eq!(expand_path("hosts/%H", "h1").unwrap(), "hosts/h1");
        assert_eq!(expand_path("/hosts/%H/", "h1").unwrap(), "hosts/h1");
        assert_eq!(expand_path("100%%/x", "h1").unwrap(), "100%/x");
        assert_eq!(expand_path("", "h1").unwrap(), "");
        assert!(expand_path("hosts/%h", "h1")
            .unwrap_err()
            .contains("unknown specifier %h"));
        assert!(expand_path("hosts/%", "h1").unwrap_err().contains("unknown specifier"));
        assert!(expand_path("../etc", "h1")
            .unwrap_err()
            .contains("leaves the repository"));
    }
}

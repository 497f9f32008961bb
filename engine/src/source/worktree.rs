//! A plain config directory that is (inside) a git work tree: the revision in force is its
//! HEAD, "dirty" when the declarations there differ from it. Read with the git CLI, off
//! the control loop; a directory that is not in a work tree (or no git) has no revision.
use std::path::Path;

use super::git::run_git;
use super::Revision;

/// HEAD of the work tree `dir` is in, or `None`. Most config directories are in none:
/// a walk up for `.git` (a few stats) spares them two git processes per reload.
pub fn head(dir: &Path) -> Option<Revision> {
    dir.ancestors().find(|d| d.join(".git").exists())?;
    let git = |args: &[&str]| {
        let dir = dir.to_string_lossy();
        let mut all = vec!["-C", &dir];
        all.extend_from_slice(args);
        run_git(None, &all).ok()
    };
    let out = git(&["log", "-1", "--format=%H%x00%ct%x00%s", "HEAD"])?;
    let mut parts = out.trim_end_matches('\n').splitn(3, '\0');
    let commit = parts.next()?.to_string();
    let time = parts.next()?.parse().ok()?;
    let subject = parts.next().unwrap_or("").to_string();
    // Only this directory's files count (a change elsewhere in the repository is not a
    // change of what runs here).
    let dirty = git(&["status", "--porcelain", "--untracked-files=normal", "--", "."]).is_some_and(|s| !s.is_empty());
    Some(Revision {
        commit,
        time,
        subject,
        dirty,
    })
}

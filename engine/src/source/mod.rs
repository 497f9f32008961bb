//! Where declarations come from. The controller always reads a directory; this module says
//! which revision that directory holds: a plain directory (edited in place, perhaps a git
//! work tree: `worktree.rs`), or a git remote the daemon follows (`git.rs`), whose
//! revisions are checked whole before the directory is switched to them.
pub mod git;
pub mod worktree;

use serde::{Deserialize, Serialize};

/// A revision of the declarations in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// The commit id (full hex).
    pub commit: String,
    /// Commit time, seconds since the epoch.
    pub time: i64,
    /// The commit message's first line.
    pub subject: String,
    /// A work tree with changes that are not committed (directory mode only).
    #[serde(default)]
    pub dirty: bool,
}

/// A commit id as it is shown: its first 12 hex digits.
pub fn short_id(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

impl Revision {
    pub fn short(&self) -> &str {
        short_id(&self.commit)
    }
}

/// A revision that was refused: nothing of it was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRevision {
    pub commit: String,
    pub subject: String,
    /// One line each, `file:line:col: message (help)`, files named as in the repository.
    pub errors: Vec<String>,
}

impl FailedRevision {
    pub fn short(&self) -> &str {
        short_id(&self.commit)
    }
}

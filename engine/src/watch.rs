//! Notices edits in the declaration directory (inotify through `notify`). Events are only
//! a hint to reload soon: the loop debounces them, so an editor's save (temporary file +
//! rename, or truncate + write) or a `git pull` of many files gives one reconcile, and a
//! periodic resync catches anything missed.
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

/// Quiet time after the last change before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Longest a steady stream of changes can delay a reload.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

/// What changed: these paths, or (after a lost event) anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Paths(Vec<PathBuf>),
    Unknown,
}

/// Watches `dir` (not recursively) and sends each change. Keep the returned watcher alive
/// for as long as events are wanted.
pub fn watch(dir: &Path, changed: UnboundedSender<Change>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let change = match event {
            Ok(e) if e.kind.is_access() => return,
            Ok(e) if e.need_rescan() || e.paths.is_empty() => Change::Unknown,
            Ok(e) => Change::Paths(e.paths),
            Err(_) => Change::Unknown,
        };
        let _ = changed.send(change);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rename_into_the_directory_is_seen() {
        let dir = std::env::temp_dir().join(format!("uk-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = watch(&dir, tx).unwrap();
        std::fs::write(dir.join(".tmp"), "x").unwrap();
        std::fs::rename(dir.join(".tmp"), dir.join("a.kdl")).unwrap();
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Notices edits in the declaration directory (inotify through `notify`). Events are only
//! a hint to reload soon: the loop debounces them, so an editor's save (temporary file +
//! rename, or truncate + write) or a `git pull` of many files gives one reconcile, and a
//! periodic resync catches anything missed.
use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

/// Quiet time after the last change before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Longest a steady stream of changes can delay a reload.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

/// Watches `dir` (not recursively) and sends `()` for each change. Keep the returned
/// watcher alive for as long as events are wanted.
pub fn watch(dir: &Path, changed: UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access() {
                let _ = changed.send(());
            }
        }
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

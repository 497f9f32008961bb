//! Notices edits in the declaration directory (inotify through `notify`). Events are only
//! a hint to reload soon: the loop debounces them, so an editor's save (temporary file +
//! rename, or truncate + write) or a `git pull` of many files gives one reconcile, and a
//! periodic resync catches anything missed. An event that says a file is whole (closed
//! after writing, renamed into place, removed) only needs [`SETTLE`] of quiet: a saved
//! declaration starts its service without waiting out the full [`DEBOUNCE`].
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

/// Quiet time after the last change before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Quiet time after an event that leaves the named files whole, when no other file is
/// still being written: long enough to gather a tool's burst of files (a checkout writes
/// them microseconds apart), short beside a start.
pub const SETTLE: Duration = Duration::from_millis(1);
/// Longest a steady stream of changes can delay a reload.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

/// What changed: these paths, or (after a lost event) anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Entries of the directory; `whole` when the event leaves them complete (written and
    /// closed, renamed into place, removed), not when they may still be being written.
    Paths {
        paths: Vec<PathBuf>,
        whole: bool,
    },
    Unknown,
    /// The directory itself was created, removed or renamed (a `rm -rf` and `mkdir`, a
    /// `mv new conf`): the watch on it is stale and must be made again.
    Replaced,
    /// Something a declaration file points to changed (a symlink's target, or a
    /// symlinked directory swapped, as Kubernetes does with `..data`): compare every
    /// file's stamp.
    Stamps,
}

/// Where the `*.kdl` files of `dir` that are symlinks point (resolved), so that their
/// targets can be watched too.
pub fn symlink_targets(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "kdl"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter_map(|e| std::fs::canonicalize(e.path()).ok())
        .collect()
}

/// Watches the directories holding `targets` and sends [`Change::Stamps`] when one of
/// the targets changes (other entries of those directories are ignored).
pub fn watch_targets(
    targets: &std::collections::BTreeSet<PathBuf>,
    changed: UnboundedSender<Change>,
) -> notify::Result<notify::RecommendedWatcher> {
    let wanted = targets.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(e) if e.kind.is_access() => false,
            Ok(e) => e.need_rescan() || e.paths.iter().any(|p| wanted.contains(p)),
            Err(_) => true,
        };
        if relevant {
            let _ = changed.send(Change::Stamps);
        }
    })?;
    let dirs: std::collections::BTreeSet<&Path> = targets.iter().filter_map(|t| t.parent()).collect();
    for dir in dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Watches `dir` (not recursively) and sends each change; also watches `dir`'s parent for
/// `dir` itself coming and going, so a replaced directory is noticed at once instead of
/// at the next resync. Works while `dir` does not exist yet. Keep the returned watcher
/// alive for as long as events are wanted.
pub fn watch(dir: &Path, changed: UnboundedSender<Change>) -> notify::Result<notify::RecommendedWatcher> {
    let own = dir.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let change = match event {
            Ok(e) if e.kind.is_access() && !closed_after_writing(&e.kind) => return,
            Ok(e) if e.need_rescan() || e.paths.is_empty() => Change::Unknown,
            Ok(e) if e.paths.contains(&own) => Change::Replaced,
            // The parent's other entries are none of our business.
            Ok(e) if !e.paths.iter().any(|p| p.parent() == Some(own.as_path())) => return,
            Ok(e) => Change::Paths {
                whole: leaves_whole(&e.kind),
                paths: e.paths,
            },
            Err(_) => Change::Unknown,
        };
        let _ = changed.send(change);
    })?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
    }
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => {}
        // Not there (yet): its creation shows in the parent's watch.
        Err(_) if parent.is_some() && !dir.exists() => {}
        Err(e) => return Err(e),
    }
    Ok(watcher)
}

fn closed_after_writing(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(AccessKind::Close(AccessMode::Write)))
}

/// Whether after this event the paths it names are complete: closed after writing
/// (IN_CLOSE_WRITE), renamed in or out (IN_MOVED_TO/FROM), or removed. A creation or a
/// write (IN_CREATE, IN_MODIFY) may be followed by more writes.
fn leaves_whole(kind: &notify::EventKind) -> bool {
    use notify::event::ModifyKind;
    use notify::EventKind;
    closed_after_writing(kind) || matches!(kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)))
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

    #[tokio::test]
    async fn a_file_written_in_place_is_whole_once_closed() {
        let dir = std::env::temp_dir().join(format!("uk-watchw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = watch(&dir, tx).unwrap();
        let mut f = std::fs::File::create(dir.join("a.kdl")).unwrap();
        std::io::Write::write_all(&mut f, b"unikernel").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut open = Vec::new();
        while let Ok(c) = rx.try_recv() {
            open.push(c);
        }
        assert!(!open.is_empty());
        assert!(
            open.iter().all(|c| matches!(c, Change::Paths { whole: false, .. })),
            "created and written, still open: {open:?}"
        );
        drop(f);
        let closed = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&closed, Change::Paths { whole: true, paths } if paths.iter().any(|p| p.ends_with("a.kdl"))),
            "{closed:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_replaced_directory_is_reported_and_its_parent_is_otherwise_ignored() {
        let parent = std::env::temp_dir().join(format!("uk-watchp-{}", std::process::id()));
        let dir = parent.join("conf");
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = watch(&dir, tx).unwrap();
        std::fs::write(parent.join("unrelated"), "x").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            seen.push(c);
        }
        assert!(seen.contains(&Change::Replaced), "{seen:?}");
        assert!(
            !seen
                .iter()
                .any(|c| matches!(c, Change::Paths { paths, .. } if paths.iter().any(|p| p.ends_with("unrelated")))),
            "{seen:?}"
        );
        std::fs::remove_dir_all(&parent).unwrap();
    }
}

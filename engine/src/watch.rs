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

/// Where the `*.kdl` files of a directory that are symlinks point (resolved), so that
/// their targets can be watched too. A reload that named its files looks at those alone:
/// listing 10,000 files after every edit cost the daemon ~1 ms per start at that scale.
#[derive(Default, Debug)]
pub struct SymlinkTargets {
    /// Symlinked declaration file -> its resolved target.
    by_file: std::collections::BTreeMap<PathBuf, PathBuf>,
}

impl SymlinkTargets {
    /// Looks at every file of `dir`; whether the targets changed.
    pub fn rescan(&mut self, dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return self.replace(Default::default());
        };
        let by_file = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "kdl"))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
            .filter_map(|e| std::fs::canonicalize(e.path()).ok().map(|t| (e.path(), t)))
            .collect();
        self.replace(by_file)
    }

    /// Looks at the files of `dir` named in `names` alone; whether the targets changed.
    pub fn update(&mut self, dir: &Path, names: &std::collections::HashSet<std::ffi::OsString>) -> bool {
        let mut by_file = self.by_file.clone();
        for name in names {
            let path = dir.join(name);
            let symlink = path.extension().is_some_and(|x| x == "kdl")
                && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            match symlink.then(|| std::fs::canonicalize(&path).ok()).flatten() {
                Some(target) => by_file.insert(path, target),
                None => by_file.remove(&path),
            };
        }
        self.replace(by_file)
    }

    fn replace(&mut self, by_file: std::collections::BTreeMap<PathBuf, PathBuf>) -> bool {
        let before = self.targets();
        self.by_file = by_file;
        self.targets() != before
    }

    pub fn targets(&self) -> std::collections::BTreeSet<PathBuf> {
        self.by_file.values().cloned().collect()
    }
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

    #[test]
    fn symlink_targets_follow_the_named_files_and_a_full_look() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("uk-symlinks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (conf, real) = (dir.join("conf"), dir.join("real"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("a.kdl"), "").unwrap();
        std::fs::write(conf.join("plain.kdl"), "").unwrap();
        symlink(real.join("a.kdl"), conf.join("web.kdl")).unwrap();
        let mut t = SymlinkTargets::default();
        assert!(t.rescan(&conf));
        assert_eq!(t.targets(), [real.join("a.kdl")].into());
        assert!(!t.rescan(&conf), "nothing changed");
        let names = |n: &[&str]| n.iter().map(std::ffi::OsString::from).collect();
        // A named plain file changes nothing; a new symlink among the names is found.
        assert!(!t.update(&conf, &names(&["plain.kdl"])));
        std::fs::write(real.join("b.kdl"), "").unwrap();
        symlink(real.join("b.kdl"), conf.join("api.kdl")).unwrap();
        assert!(t.update(&conf, &names(&["api.kdl"])));
        assert_eq!(t.targets(), [real.join("a.kdl"), real.join("b.kdl")].into());
        // A symlink replaced by a plain file, and one removed.
        std::fs::remove_file(conf.join("web.kdl")).unwrap();
        std::fs::write(conf.join("web.kdl"), "").unwrap();
        std::fs::remove_file(conf.join("api.kdl")).unwrap();
        assert!(t.update(&conf, &names(&["web.kdl", "api.kdl"])));
        assert!(t.targets().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

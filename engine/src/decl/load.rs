//! A directory of declarations -> the desired state. Per file: a file that fails to
//! parse or validate keeps its last good specs, and nothing else is affected. Across
//! files ([`super::merge`]): a service name, an explicit address or a host port declared
//! twice is reported at both places, and the declaration already in force stays in force.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::SourceSpan;

use super::diagnostic::{DeclError, Reporter};
use super::merge::{Changed, Files, Merged};
use super::parse::parse_file;
use super::spec::Spec;

/// The outcome of one load.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Desired state: service name -> spec (shared with the loader: drop it before the
    /// next load, or that load copies it).
    pub specs: Arc<BTreeMap<String, Spec>>,
    /// `Some`: only these services can differ from the previous load's `specs` (appeared,
    /// gone or changed); `None`: any may.
    pub touched: Option<BTreeSet<String>>,
    /// Everything worth telling (errors and warnings), in file order.
    pub diagnostics: Vec<DeclError>,
    /// Files whose new content was refused (their last good specs are in `specs`).
    pub failed_files: Vec<PathBuf>,
    /// Files whose content was accepted in this load (new or changed): what the caller
    /// keeps so that a restarted daemon knows each file's last good content.
    pub accepted: Vec<(PathBuf, Arc<String>)>,
    /// Files that had good content before this load and are gone from the directory.
    pub gone: Vec<PathBuf>,
    /// The directory could not be listed: nothing may be taken as removed.
    pub unreadable: bool,
}

impl Loaded {
    pub fn errors(&self) -> impl Iterator<Item = &DeclError> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// What identifies a file's content without reading it: a reload skips files whose
/// stamp is unchanged (parsing is the expensive part: ~0.1 ms per declaration). The change
/// time is in it because nobody can set it: `cp -p` or `rsync -t` keep size, mtime and
/// even the inode, but every write moves ctime.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    changed: (i64, i64),
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| stamp_of(&m))
}

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        changed: (m.ctime(), m.ctime_nsec()),
        inode: m.ino(),
    }
}

/// The text of `file`, read into a buffer sized from the stat just taken: mostly one read.
/// `fs::read_to_string` also asks for the size (statx) and the position (lseek), and reads
/// until a read returns nothing: three more syscalls per file of a cold load of 10,000.
fn read_text(mut file: std::fs::File, len: Option<u64>) -> std::io::Result<String> {
    use std::io::Read;
    let len = len.and_then(|l| usize::try_from(l).ok());
    // One more byte than the file holds: a file that grew since its stat shows it.
    let room = len.unwrap_or(0).saturating_add(1);
    let mut bytes = vec![0u8; room.min(1 << 20)];
    let mut got = 0;
    loop {
        if got == bytes.len() {
            bytes.resize(bytes.len() * 2, 0);
        }
        let n = match file.read(&mut bytes[got..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        got += n;
        // A regular file's read comes back short only at its end: a short read that
        // ends where the stat said spares the read that would return 0 (one syscall of
        // four per file, at 10,000 files).
        if n == 0 || (Some(got) == len && got < bytes.len()) {
            break;
        }
    }
    bytes.truncate(got);
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is not UTF-8 text (byte {at} is not); save it as UTF-8"),
        )
    })
}

/// Opens `path` and reads it, with its stamp. A file seen before is stamped first (by
/// path) and not opened at all when its stamp is unchanged; a file never seen (every file
/// of a cold load) is opened first and stamped through its descriptor, which walks no
/// path. `Ok(None)`: unchanged.
fn read_if_changed(path: &Path, seen: Option<&Stamp>) -> std::io::Result<Option<(Option<Stamp>, String)>> {
    let before = match seen {
        Some(seen) => {
            let now = stamp(path);
            if now.as_ref() == Some(seen) {
                return Ok(None);
            }
            Some(now)
        }
        None => None,
    };
    let file = std::fs::File::open(path)?;
    let now = match before {
        Some(now) => now,
        None => file.metadata().ok().map(|m| stamp_of(&m)),
    };
    let text = read_text(file, now.as_ref().map(|s| s.len))?;
    Ok(Some((now, text)))
}

/// Below this many files to read, a load reads them on its own thread.
const READ_IN_PARALLEL_FROM: usize = 32;
/// Most threads a load reads files on.
const MAX_READERS: usize = 4;

/// What one file holds now, against what was last seen of it.
enum Look {
    /// Same stamp as when last parsed.
    Unchanged,
    Unreadable(DeclError),
    /// A new stamp, but the content of its last good parse.
    SameContent(Option<Stamp>),
    Parsed {
        now: Option<Stamp>,
        text: String,
        hash: u64,
        specs: Vec<Spec>,
        diags: Vec<DeclError>,
    },
}

/// What a file's last look found to say: its diagnostics, and whether its content was
/// refused. Only files with something to say have one, so a load gathers them without a
/// pass over every file.
type Report = (Vec<DeclError>, bool);

/// Keeps the last good specs of every file between loads.
#[derive(Default)]
pub struct Loader {
    files: Files,
    merged: Merged,
    /// Stamp of each file when it was last parsed.
    seen: HashMap<PathBuf, Stamp>,
    reports: BTreeMap<PathBuf, Report>,
    /// FNV-1a of each file's text when it was last parsed (an explicit reload re-reads
    /// every file, and re-parses only those whose content differs).
    content: HashMap<PathBuf, u64>,
}

fn is_declaration(name: &str) -> bool {
    name.ends_with(".kdl") && !name.starts_with('.')
}

/// Declaration files: `*.kdl`, not hidden (editors' temporary files start with a dot).
pub fn declaration_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            // The entry's type comes with the listing; only symlinks (a GitOps checkout
            // linked in) cost a stat to see what they point at.
            let is_file = match e.file_type() {
                Ok(t) if t.is_symlink() => e.path().is_file(),
                Ok(t) => t.is_file(),
                Err(_) => false,
            };
            is_declaration(name.to_str().unwrap_or("")) && is_file
        })
        .map(|e| e.path())
        .collect();
    // One directory: byte order is name order, without `Path`'s component-wise compare.
    files.sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(files)
}

impl Loader {
    /// Reads the directory: every file whose stamp (size, mtime, inode) changed is parsed
    /// again. Level-triggered: what inotify said does not matter here.
    pub fn load_dir(&mut self, dir: &Path) -> Loaded {
        self.load(dir, None)
    }

    /// Like [`Loader::load_dir`], but trusts that only the files named in `changed` may
    /// differ from last time (be new, changed or gone): the directory is not listed and
    /// the other files cost nothing, so on a host with thousands of declarations an edit
    /// costs what its own file costs. For reloads driven by inotify, which names every
    /// file it sees change (a lost event makes the caller use [`Loader::load_all`]); the
    /// periodic resync uses [`Loader::load_dir`].
    pub fn load_changed(&mut self, dir: &Path, changed: &HashSet<OsString>) -> Loaded {
        self.load(dir, Some(changed))
    }

    /// What an operator's reload (SIGHUP, `unikernelctl reload`) does: every file is read
    /// again whatever its stamp says, and parsed again if its content differs.
    pub fn load_all(&mut self, dir: &Path) -> Loaded {
        self.seen.clear();
        self.load(dir, None)
    }

    /// Seeds the last good content of files (kept by an earlier daemon): a file that fails
    /// now keeps the services it declared then, across the daemon's restart.
    pub fn seed(&mut self, dir: &Path, files: Vec<(OsString, String)>) {
        let parsed = in_parallel(&files, |(name, text)| parse_file(&dir.join(name), text));
        for ((name, text), (specs, diags)) in files.into_iter().zip(parsed) {
            let path = dir.join(&name);
            if !diags.iter().any(DeclError::is_error) {
                self.content.insert(path.clone(), contract::fnv1a(text.as_bytes()));
                self.files.insert(path, (specs, Arc::new(text)));
            }
        }
        self.merged.invalidate();
    }

    /// A load that read nothing: an error, and everything kept as it was.
    fn unreadable(&mut self, dir: &Path, message: String) -> Loaded {
        let r = Reporter::new(dir, Arc::new(String::new()));
        let mut loaded = Loaded {
            diagnostics: vec![r.error(SourceSpan::from(0..0), message, "here", None)],
            failed_files: vec![dir.to_path_buf()],
            unreadable: true,
            ..Loaded::default()
        };
        self.finish(&mut loaded, &[]);
        loaded
    }

    /// The files to look at, and the known files that are gone.
    fn candidates(
        &self,
        dir: &Path,
        changed: Option<&HashSet<OsString>>,
    ) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let known =
            |p: &PathBuf| self.files.contains_key(p) || self.seen.contains_key(p) || self.reports.contains_key(p);
        let Some(changed) = changed else {
            let files = declaration_files(dir)?;
            if self.files.is_empty() && self.seen.is_empty() && self.reports.is_empty() {
                // A cold load: nothing known can be gone (and 10,000 paths need no set).
                return Ok((files, Vec::new()));
            }
            let present: HashSet<&PathBuf> = files.iter().collect();
            let mut gone: BTreeSet<&PathBuf> = self.files.keys().filter(|p| !present.contains(p)).collect();
            gone.extend(self.seen.keys().filter(|p| !present.contains(p)));
            gone.extend(self.reports.keys().filter(|p| !present.contains(p)));
            let gone = gone.into_iter().cloned().collect();
            return Ok((files, gone));
        };
        let (mut files, mut gone) = (Vec::new(), Vec::new());
        for name in changed {
            if !is_declaration(name.to_str().unwrap_or("")) {
                continue;
            }
            let path = dir.join(name);
            if path.is_file() {
                files.push(path);
            } else if known(&path) {
                gone.push(path);
            }
        }
        files.sort();
        gone.sort();
        Ok((files, gone))
    }

    fn load(&mut self, dir: &Path, changed: Option<&HashSet<OsString>>) -> Loaded {
        let (files, gone) = match self.candidates(dir, changed) {
            Ok(c) => c,
            // An unreadable directory changes nothing: keep everything as it was.
            Err(e) => return self.unreadable(dir, format!("cannot read {}: {e}", dir.display())),
        };
        let mut loaded = Loaded::default();
        let mut changes = Vec::new();
        for path in gone {
            self.seen.remove(&path);
            self.content.remove(&path);
            self.reports.remove(&path);
            if let Some((before, _)) = self.files.remove(&path) {
                changes.push(Changed {
                    file: path.clone(),
                    before,
                });
                loaded.gone.push(path);
            }
        }
        let looks = self.look_all(&files);
        if self.seen.is_empty() {
            // A cold load: the maps are grown once, not by doubling through 10,000 files.
            self.seen.reserve(files.len());
            self.content.reserve(files.len());
            self.files.reserve(files.len());
        }
        for (path, look) in files.into_iter().zip(looks) {
            match look {
                Look::Unchanged => {}
                Look::Unreadable(error) => {
                    self.seen.remove(&path);
                    self.reports.insert(path, (vec![error], true));
                }
                Look::SameContent(now) => {
                    // Same content as its last good parse (a touch, or an explicit
                    // reload): a report of refused content is about other content.
                    if let Some(now) = now {
                        self.seen.insert(path.clone(), now);
                    }
                    if self.reports.get(&path).is_some_and(|(_, failed)| *failed) {
                        self.reports.remove(&path);
                    }
                }
                Look::Parsed {
                    now,
                    text,
                    hash,
                    specs,
                    diags,
                } => {
                    let failed = diags.iter().any(DeclError::is_error);
                    match now {
                        Some(now) => self.seen.insert(path.clone(), now),
                        None => self.seen.remove(&path),
                    };
                    if diags.is_empty() {
                        self.reports.remove(&path);
                    } else {
                        self.reports.insert(path.clone(), (diags, failed));
                    }
                    if !failed {
                        let text = Arc::new(text);
                        self.content.insert(path.clone(), hash);
                        loaded.accepted.push((path.clone(), text.clone()));
                        let before = self.files.insert(path.clone(), (specs, text));
                        changes.push(Changed {
                            file: path,
                            before: before.map(|(specs, _)| specs).unwrap_or_default(),
                        });
                    }
                }
            }
        }
        self.finish(&mut loaded, &changes);
        loaded
    }

    /// What each of `files` holds now, in order: read and parsed on a few threads when
    /// there are many (a cold start reads every file: 10,000 took ~140 ms on one thread
    /// here), on this one when there are few (a reload after an edit names one).
    fn look_all(&self, files: &[PathBuf]) -> Vec<Look> {
        in_parallel(files, |path| self.look(path))
    }

    /// What `path` holds now, compared with what was last seen of it.
    fn look(&self, path: &Path) -> Look {
        let (now, text) = match read_if_changed(path, self.seen.get(path)) {
            Ok(Some(read)) => read,
            Ok(None) => return Look::Unchanged,
            Err(e) => {
                let r = Reporter::new(path, Arc::new(String::new()));
                return Look::Unreadable(r.error(
                    SourceSpan::from(0..0),
                    format!("cannot read the file: {e}"),
                    "here",
                    None,
                ));
            }
        };
        let hash = contract::fnv1a(text.as_bytes());
        if self.content.get(path) == Some(&hash) && self.files.contains_key(path) {
            return Look::SameContent(now);
        }
        let (specs, diags) = parse_file(path, &text);
        Look::Parsed {
            now,
            text,
            hash,
            specs,
            diags,
        }
    }

    /// Merges the files' specs (in place when it can) and gathers what to tell.
    fn finish(&mut self, loaded: &mut Loaded, changes: &[Changed]) {
        loaded.touched = self.merged.apply(&self.files, changes);
        let clashes = match loaded.touched {
            Some(_) => Vec::new(),
            None => self.merged.full(&self.files),
        };
        for (path, (diags, failed)) in &self.reports {
            loaded.diagnostics.extend(diags.iter().cloned());
            if *failed {
                loaded.failed_files.push(path.clone());
            }
        }
        loaded.diagnostics.extend(clashes);
        loaded.specs = self.merged.specs();
    }
}

/// `f` of each item, in order: on up to [`MAX_READERS`] threads when there are at least
/// [`READ_IN_PARALLEL_FROM`] items, else on this one. A part whose thread cannot be had
/// (the host is out of them) or fails is done on this thread.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_READERS));
    if threads < 2 || items.len() < READ_IN_PARALLEL_FROM {
        return items.iter().map(&f).collect();
    }
    let share = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(share)
            .map(|part| {
                let thread = std::thread::Builder::new()
                    .name("declarations".into())
                    .spawn_scoped(scope, move || part.iter().map(f).collect::<Vec<_>>());
                (part, thread)
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(part, thread)| match thread.map(|t| t.join()) {
                Ok(Ok(done)) => done,
                _ => part.iter().map(f).collect(),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, mem: &str) -> String {
        format!("unikernel \"{name}\" {{\n    image \"/i\"\n    memory \"{mem}\"\n}}\n")
    }

    fn names(loaded: &Loaded) -> Vec<&str> {
        loaded.specs.keys().map(String::as_str).collect()
    }

    fn touched(loaded: &Loaded) -> Option<Vec<&str>> {
        loaded.touched.as_ref().map(|t| t.iter().map(String::as_str).collect())
    }

    fn named(names: &[&str]) -> HashSet<OsString> {
        names.iter().map(OsString::from).collect()
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("uk-load-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_file_that_is_not_utf8_is_reported_and_one_that_grew_is_read_whole() {
        let dir = Dir::new("utf8");
        let dir = &dir.0;
        let mut bad = decl("a", "16M").into_bytes();
        bad.extend_from_slice(b"// \xff\n");
        std::fs::write(dir.join("a.kdl"), &bad).unwrap();
        // Longer than its stamp said by the time it is read: all of it is read.
        let text = format!("{}// {}\n", decl("b", "16M"), "x".repeat(10_000));
        std::fs::write(dir.join("b.kdl"), &text).unwrap();
        let file = std::fs::File::open(dir.join("b.kdl")).unwrap();
        assert_eq!(read_text(file, Some(3)).unwrap(), text);
        // As long as it said (one read), shorter (it shrank), or no size known.
        for len in [Some(text.len() as u64), Some(text.len() as u64 + 100), None] {
            let file = std::fs::File::open(dir.join("b.kdl")).unwrap();
            assert_eq!(read_text(file, len).unwrap(), text, "{len:?}");
        }
        let loaded = Loader::default().load_dir(dir);
        assert_eq!(names(&loaded), ["b"]);
        let said: Vec<String> = loaded.diagnostics.iter().map(|d| d.one_line()).collect();
        assert!(
            said.iter()
                .any(|l| l.contains("a.kdl") && l.contains("not UTF-8") && l.contains("byte")),
            "{said:?}"
        );
    }

    #[test]
    fn load_changed_looks_only_at_the_named_files() {
        let dir = Dir::new("changed");
        let dir = &dir.0;
        std::fs::write(dir.join("a.kdl"), decl("a", "16M")).unwrap();
        std::fs::write(dir.join("b.kdl"), decl("b", "16M")).unwrap();
        let mut loader = Loader::default();
        let first = loader.load_dir(dir);
        assert_eq!(names(&first), ["a", "b"]);
        assert_eq!(touched(&first), Some(vec!["a", "b"]), "from nothing, all are new");
        drop(first);
        // b changes (another size, so the stamp differs) and c appears, but nobody says
        // so: nothing is looked at.
        std::fs::write(dir.join("b.kdl"), decl("b", "128M")).unwrap();
        std::fs::write(dir.join("c.kdl"), decl("c", "16M")).unwrap();
        let loaded = loader.load_changed(dir, &HashSet::new());
        assert_eq!(loaded.specs["b"].memory_bytes, 16 << 20);
        assert_eq!(names(&loaded), ["a", "b"]);
        assert_eq!(touched(&loaded), Some(vec![]));
        drop(loaded);
        // Named: read, and only their services are touched.
        let loaded = loader.load_changed(dir, &named(&["b.kdl", "c.kdl", ".b.kdl.swp", "notes.txt"]));
        assert_eq!(loaded.specs["b"].memory_bytes, 128 << 20);
        assert_eq!(names(&loaded), ["a", "b", "c"]);
        assert_eq!(touched(&loaded), Some(vec!["b", "c"]));
        assert_eq!(loaded.accepted.len(), 2);
        drop(loaded);
        // A named file that is gone takes its services with it.
        std::fs::remove_file(dir.join("a.kdl")).unwrap();
        let loaded = loader.load_changed(dir, &named(&["a.kdl"]));
        assert_eq!(names(&loaded), ["b", "c"]);
        assert_eq!(touched(&loaded), Some(vec!["a"]));
        assert_eq!(loaded.gone, [dir.join("a.kdl")]);
        drop(loaded);
        // The periodic resync lists the directory: what inotify missed is seen there.
        std::fs::write(dir.join("d.kdl"), decl("d", "16M")).unwrap();
        assert_eq!(names(&loader.load_dir(dir)), ["b", "c", "d"]);
    }

    #[test]
    fn a_service_moved_between_files_in_one_reload_is_touched_not_doubled() {
        let dir = Dir::new("moved");
        let dir = &dir.0;
        std::fs::write(dir.join("a.kdl"), decl("web", "16M")).unwrap();
        std::fs::write(dir.join("b.kdl"), decl("api", "16M")).unwrap();
        let mut loader = Loader::default();
        drop(loader.load_dir(dir));
        std::fs::write(dir.join("a.kdl"), decl("api", "16M")).unwrap();
        std::fs::write(dir.join("b.kdl"), decl("web", "32M")).unwrap();
        let loaded = loader.load_changed(dir, &named(&["a.kdl", "b.kdl"]));
        assert!(loaded.errors().next().is_none(), "{:?}", loaded.diagnostics);
        assert_eq!(touched(&loaded), Some(vec!["api", "web"]));
        assert_eq!(loaded.specs["web"].memory_bytes, 32 << 20);
        assert_eq!(loaded.specs["web"].source.file, dir.join("b.kdl"));
        assert_eq!(loaded.specs["api"].source.file, dir.join("a.kdl"));
    }

    #[test]
    fn a_clash_is_decided_by_a_full_merge_and_the_survivor_takes_over_when_the_winner_goes() {
        let dir = Dir::new("clash");
        let dir = &dir.0;
        std::fs::write(dir.join("a.kdl"), decl("web", "16M")).unwrap();
        let mut loader = Loader::default();
        drop(loader.load_dir(dir));
        // b declares web too: not in place; the full merge keeps a's and reports both.
        std::fs::write(dir.join("b.kdl"), decl("web", "32M")).unwrap();
        let loaded = loader.load_changed(dir, &named(&["b.kdl"]));
        assert_eq!(touched(&loaded), None);
        assert_eq!(loaded.errors().count(), 2);
        assert_eq!(loaded.specs["web"].memory_bytes, 16 << 20, "the one in force stays");
        drop(loaded);
        // a goes: b's declaration is the only one left and takes over.
        std::fs::remove_file(dir.join("a.kdl")).unwrap();
        let loaded = loader.load_changed(dir, &named(&["a.kdl"]));
        assert_eq!(touched(&loaded), None, "after a clash only a full merge decides");
        assert_eq!(loaded.errors().count(), 0);
        assert_eq!(loaded.specs["web"].memory_bytes, 32 << 20);
        drop(loaded);
        // No clash left: edits apply in place again.
        std::fs::write(dir.join("b.kdl"), decl("web", "64M")).unwrap();
        let loaded = loader.load_changed(dir, &named(&["b.kdl"]));
        assert_eq!(touched(&loaded), Some(vec!["web"]));
        assert_eq!(loaded.specs["web"].memory_bytes, 64 << 20);
    }

    #[test]
    fn a_refused_edit_keeps_the_last_good_specs_and_is_reported_until_fixed() {
        let dir = Dir::new("refused");
        let dir = &dir.0;
        std::fs::write(dir.join("a.kdl"), decl("web", "16M")).unwrap();
        let mut loader = Loader::default();
        drop(loader.load_dir(dir));
        std::fs::write(dir.join("a.kdl"), decl("web", "lots")).unwrap();
        let loaded = loader.load_changed(dir, &named(&["a.kdl"]));
        assert_eq!(loaded.failed_files, [dir.join("a.kdl")]);
        assert_eq!(loaded.specs["web"].memory_bytes, 16 << 20);
        assert_eq!(touched(&loaded), Some(vec![]));
        drop(loaded);
        // Another file's edit: the refused file is still reported, without being read.
        std::fs::write(dir.join("b.kdl"), decl("api", "16M")).unwrap();
        let loaded = loader.load_changed(dir, &named(&["b.kdl"]));
        assert_eq!(loaded.failed_files, [dir.join("a.kdl")]);
        assert_eq!(loaded.errors().count(), 1);
        drop(loaded);
        // Put back as it was: the report goes.
        std::fs::write(dir.join("a.kdl"), decl("web", "16M")).unwrap();
        let loaded = loader.load_changed(dir, &named(&["a.kdl"]));
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert!(loaded.failed_files.is_empty());
    }

    #[test]
    fn a_seed_of_many_files_keeps_each_ones_last_good_specs() {
        // Enough files to be parsed on several threads; each is broken on disk now.
        let dir = Dir::new("seed");
        let dir = &dir.0;
        let n = READ_IN_PARALLEL_FROM + 8;
        let saved: Vec<(OsString, String)> = (0..n)
            .map(|i| {
                (
                    OsString::from(format!("s{i:02}.kdl")),
                    decl(&format!("s{i:02}"), &format!("{}M", 16 + i)),
                )
            })
            .collect();
        for (name, _) in &saved {
            std::fs::write(dir.join(name), decl("x", "lots")).unwrap();
        }
        let mut loader = Loader::default();
        loader.seed(dir, saved);
        let loaded = loader.load_dir(dir);
        assert_eq!(loaded.failed_files.len(), n, "every file is reported");
        assert_eq!(loaded.specs.len(), n, "and keeps what it declared before");
        for i in 0..n {
            assert_eq!(loaded.specs[&format!("s{i:02}")].memory_bytes, (16 + i as u64) << 20);
        }
    }
}

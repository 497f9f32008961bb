//! A directory of declarations -> the desired state. Per file: a file that fails to
//! parse or validate keeps its last good specs, and nothing else is affected. Across
//! files: a service name, an explicit address or a host port declared twice is reported
//! at both places, and the declaration that was already in force stays in force.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::SourceSpan;

use super::diagnostic::{DeclError, Reporter};
use super::parse::parse_file;
use super::spec::Spec;

/// The outcome of one load.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Desired state: service name -> spec.
    pub specs: BTreeMap<String, Spec>,
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
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        changed: (m.ctime(), m.ctime_nsec()),
        inode: m.ino(),
    })
}

/// Stack of the parser thread (see [`Loader::load`]).
pub const PARSE_STACK: usize = 512 << 20;

/// A load that read nothing: an error, and everything kept as it was.
fn unreadable(dir: &Path, message: String) -> Loaded {
    let r = Reporter::new(dir, Arc::new(String::new()));
    Loaded {
        diagnostics: vec![r.error(SourceSpan::from(0..0), message, "here", None)],
        failed_files: vec![dir.to_path_buf()],
        unreadable: true,
        ..Loaded::default()
    }
}

/// Keeps the last good specs of every file between loads.
#[derive(Default)]
pub struct Loader {
    last_good: BTreeMap<PathBuf, (Vec<Spec>, Arc<String>)>,
    /// Stamp of each file when it was last parsed, and that parse's diagnostics.
    seen: HashMap<PathBuf, (Stamp, Vec<DeclError>, bool)>,
    /// FNV-1a of each file's text when it was last parsed (an explicit reload re-reads
    /// every file, and re-parses only those whose content differs).
    content: HashMap<PathBuf, u64>,
    /// Which file each service came from last time: that one wins a duplicate.
    owner: HashMap<String, PathBuf>,
}

/// Declaration files: `*.kdl`, not hidden (editors' temporary files start with a dot).
pub fn declaration_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_str().unwrap_or("");
            // The entry's type comes with the listing; only symlinks (a GitOps checkout
            // linked in) cost a stat to see what they point at.
            let is_file = match e.file_type() {
                Ok(t) if t.is_symlink() => e.path().is_file(),
                Ok(t) => t.is_file(),
                Err(_) => false,
            };
            name.ends_with(".kdl") && !name.starts_with('.') && is_file
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

impl Loader {
    /// Reads the directory: every file whose stamp (size, mtime, inode) changed is parsed
    /// again. Level-triggered: what inotify said does not matter here.
    pub fn load_dir(&mut self, dir: &Path) -> Loaded {
        self.load(dir, None)
    }

    /// Like [`Loader::load_dir`], but trusts that only the files named in `changed` (and
    /// files new to the directory listing) may differ from last time, so the others cost
    /// no `stat`: on a host with thousands of declarations that is most of a reload. For
    /// reloads driven by inotify; the periodic resync uses [`Loader::load_dir`].
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
        for (name, text) in files {
            let path = dir.join(&name);
            let (specs, diags) = parse_file(&path, &text);
            if !diags.iter().any(DeclError::is_error) {
                self.content.insert(path.clone(), contract::fnv1a(text.as_bytes()));
                self.last_good.insert(path, (specs, Arc::new(text)));
            }
        }
    }

    /// Parses on a thread of its own with a stack deep enough for the most nesting a file
    /// may have ([`super::parse::MAX_BLOCKS`] levels: ~5 KiB each in release builds, up to
    /// ~30 KiB in debug builds); the stack is reserved, not touched, until used.
    fn load(&mut self, dir: &Path, changed: Option<&HashSet<OsString>>) -> Loaded {
        let outcome = std::thread::scope(|scope| {
            let parser = std::thread::Builder::new()
                .name("declarations".into())
                .stack_size(PARSE_STACK)
                .spawn_scoped(scope, || self.load_here(dir, changed));
            match parser.map(|t| t.join()) {
                Ok(Ok(loaded)) => Ok(loaded),
                Ok(Err(_)) => Err("the declaration parser failed".to_string()),
                Err(e) => Err(format!("cannot start the declaration parser: {e}")),
            }
        });
        outcome.unwrap_or_else(|message| {
            // Out of threads or memory: nothing is read, nothing is taken as removed.
            let mut loaded = unreadable(dir, message);
            self.merge(&mut loaded);
            loaded
        })
    }

    fn load_here(&mut self, dir: &Path, changed: Option<&HashSet<OsString>>) -> Loaded {
        let mut loaded = Loaded::default();
        let files = match declaration_files(dir) {
            Ok(f) => f,
            Err(e) => {
                // An unreadable directory changes nothing: keep everything as it was.
                let mut loaded = unreadable(dir, format!("cannot read {}: {e}", dir.display()));
                self.merge(&mut loaded);
                return loaded;
            }
        };
        let present: std::collections::HashSet<&PathBuf> = files.iter().collect();
        loaded.gone = self
            .last_good
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        self.last_good.retain(|path, _| present.contains(path));
        self.seen.retain(|path, _| present.contains(path));
        self.content.retain(|path, _| present.contains(path));
        for path in files {
            let trusted = changed.is_some_and(|c| path.file_name().is_some_and(|n| !c.contains(n)))
                && self.seen.contains_key(&path);
            if trusted {
                let (_, diags, failed) = &self.seen[&path];
                loaded.diagnostics.extend(diags.iter().cloned());
                if *failed {
                    loaded.failed_files.push(path);
                }
                continue;
            }
            let now = stamp(&path);
            if let (Some(now), Some((then, diags, failed))) = (now, self.seen.get(&path)) {
                if now == *then {
                    loaded.diagnostics.extend(diags.iter().cloned());
                    if *failed {
                        loaded.failed_files.push(path);
                    }
                    continue;
                }
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    let r = Reporter::new(&path, Arc::new(String::new()));
                    loaded.diagnostics.push(r.error(
                        SourceSpan::from(0..0),
                        format!("cannot read the file: {e}"),
                        "here",
                        None,
                    ));
                    loaded.failed_files.push(path);
                    continue;
                }
            };
            let hash = contract::fnv1a(text.as_bytes());
            if self.content.get(&path) == Some(&hash) && self.last_good.contains_key(&path) {
                // Same content as its last good parse (a touch, or an explicit reload).
                if let Some(now) = now {
                    self.seen.insert(path.clone(), (now, Vec::new(), false));
                }
                continue;
            }
            let (specs, diags) = parse_file(&path, &text);
            let failed = diags.iter().any(DeclError::is_error);
            if let Some(now) = now {
                self.seen.insert(path.clone(), (now, diags.clone(), failed));
            }
            loaded.diagnostics.extend(diags);
            if failed {
                loaded.failed_files.push(path);
            } else {
                let text = Arc::new(text);
                self.content.insert(path.clone(), hash);
                loaded.accepted.push((path.clone(), text.clone()));
                self.last_good.insert(path, (specs, text));
            }
        }
        self.merge(&mut loaded);
        loaded
    }

    /// Combines the files' specs, refusing cross-file duplicates.
    fn merge(&mut self, loaded: &mut Loaded) {
        // Files that declared a service last time go first, so they keep it.
        let mut candidates: Vec<(&Spec, &Arc<String>)> = self
            .last_good
            .values()
            .flat_map(|(specs, text)| specs.iter().map(move |s| (s, text)))
            .collect();
        // Keys borrowed, not cloned, and computed once each: this runs on every reload,
        // for every service.
        let owner = &self.owner;
        candidates.sort_by_cached_key(|&(s, _)| {
            (
                owner.get(&s.name) != Some(&s.source.file),
                &s.source.file,
                s.source.offset,
            )
        });
        let mut by_name: BTreeMap<String, (&Spec, &Arc<String>)> = BTreeMap::new();
        let mut by_address = HashMap::new();
        let mut by_port = HashMap::new();
        let mut errors = Vec::new();
        'next: for (spec, text) in candidates {
            let mut clash = |what: String, first: (&Spec, &Arc<String>)| {
                errors.push(report(
                    spec,
                    text,
                    format!("{what} is also declared at {}", first.0.source),
                    "declared again here",
                ));
                errors.push(report(
                    first.0,
                    first.1,
                    format!("{what} is also declared at {}", spec.source),
                    "first declared here (kept)",
                ));
            };
            if let Some(first) = by_name.get(&spec.name) {
                clash(format!("service {:?}", spec.name), *first);
                continue 'next;
            }
            if let Some(net) = &spec.net {
                if let Some((address, first)) = net.address.and_then(|a| by_address.get(&a).map(|f| (a, f))) {
                    clash(format!("address {address}"), *first);
                    continue 'next;
                }
                for e in &net.expose {
                    if let Some(first) = by_port.get(&e.host) {
                        clash(format!("host port {}", e.host), *first);
                        continue 'next;
                    }
                }
            }
            if let Some(a) = spec.net.as_ref().and_then(|n| n.address) {
                by_address.insert(a, (spec, text));
            }
            for e in spec.net.iter().flat_map(|n| &n.expose) {
                by_port.insert(e.host, (spec, text));
            }
            by_name.insert(spec.name.clone(), (spec, text));
        }
        loaded.diagnostics.extend(errors);
        loaded.specs = by_name.into_iter().map(|(k, (s, _))| (k, s.clone())).collect();
        self.owner = loaded
            .specs
            .iter()
            .map(|(k, s)| (k.clone(), s.source.file.clone()))
            .collect();
    }
}

fn report(spec: &Spec, text: &Arc<String>, message: String, label: &str) -> DeclError {
    Reporter::new(&spec.source.file, text.clone()).error(
        SourceSpan::from(spec.source.offset..spec.source.offset + 9),
        message,
        label,
        Some("keep one of the two declarations".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, mem: &str) -> String {
        format!("unikernel \"{name}\" {{\n    image \"/i\"\n    memory \"{mem}\"\n}}\n")
    }

    #[test]
    fn load_changed_looks_only_at_named_and_new_files() {
        let dir = std::env::temp_dir().join(format!("uk-loadchanged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.kdl"), decl("a", "16M")).unwrap();
        std::fs::write(dir.join("b.kdl"), decl("b", "16M")).unwrap();
        let mut loader = Loader::default();
        assert_eq!(loader.load_dir(&dir).specs.len(), 2);
        // b changes (another size, so the stamp differs) but nobody says so: kept as it was.
        std::fs::write(dir.join("b.kdl"), decl("b", "128M")).unwrap();
        std::fs::write(dir.join("c.kdl"), decl("c", "16M")).unwrap();
        let loaded = loader.load_changed(&dir, &HashSet::new());
        assert_eq!(loaded.specs["b"].memory_bytes, 16 << 20);
        assert!(
            loaded.specs.contains_key("c"),
            "a file new to the listing is always read"
        );
        // Named: read again.
        let loaded = loader.load_changed(&dir, &HashSet::from([OsString::from("b.kdl")]));
        assert_eq!(loaded.specs["b"].memory_bytes, 128 << 20);
        // A removed file goes whatever the set says.
        std::fs::remove_file(dir.join("a.kdl")).unwrap();
        assert!(!loader.load_changed(&dir, &HashSet::new()).specs.contains_key("a"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

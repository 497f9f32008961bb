//! The daemon's runtime state (`/run/unikerneld` by default): one folder per service
//! with the record of its VM, so a new daemon can adopt what an earlier one started.
//!
//! ```text
//! <state>/services/<name>/vm.json       pid, start time, spec hash, address, tap
//! <state>/services/<name>/console.sock  the VMM's console socket
//! <state>/services/<name>/vmm.log       the VMM's stderr (its error line when it stops)
//! <state>/status.json                   every service's status, rewritten on change
//! <state>/declarations/<file>.kdl       the last good content of each declaration file
//! <state>/cpuid                         KVM's supported CPUID, kept by the VMMs for this boot
//! <state>/services/<name>/standby.json  a service on standby: its snapshot's spec hash, tap, address
//! <snapshots>/<name>/{state,memory}     its snapshot (/var/lib/unikerneld/snapshots by default)
//! ```
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a new daemon needs to adopt a VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub pid: u32,
    pub start_ticks: u64,
    pub spec_hash: String,
    pub address: Option<Ipv4Addr>,
    pub tap: Option<String>,
    /// Wall clock at spawn, ms since the epoch.
    pub started_unix_ms: u64,
    /// Spawn -> running, once it was.
    pub boot_ms: Option<f64>,
}

/// How far a daemon that ended read a running VM's console: the offset where the first
/// line it had not read to the end starts. The next daemon logs the VMM's replay from
/// there, so what the guest wrote while no daemon ran reaches the journal, once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsoleReadTo {
    pub pid: u32,
    pub start_ticks: u64,
    pub offset: u64,
}

/// A service on standby: no process, a snapshot, and the tap and address it keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandbyRecord {
    pub spec_hash: String,
    pub address: Option<Ipv4Addr>,
    pub tap: Option<String>,
    /// When the snapshot was taken, ms since the epoch.
    pub saved_unix_ms: u64,
    /// Guest memory in the snapshot (zero pages not counted).
    pub memory_bytes: u64,
}

/// How long a lock whose recorded holder is gone may take to be released.
const LOCK_STRAGGLER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether `pid` names a live process (a zombie is not).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
    snapshots: PathBuf,
}

/// Writes `data` to `path` atomically (temporary file + rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

impl StateDir {
    /// Snapshots go under `<root>/snapshots` ([`StateDir::with_snapshots`] puts them
    /// elsewhere: they are large and must outlive a reboot's tmpfs).
    pub fn new(root: &Path) -> io::Result<StateDir> {
        Self::with_snapshots(root, &root.join("snapshots"))
    }

    pub fn with_snapshots(root: &Path, snapshots: &Path) -> io::Result<StateDir> {
        // Console sockets and VMM logs carry what guests print (secrets, at times): the
        // daemon's alone. Operators read consoles through D-Bus, whose policy says who may.
        use std::os::unix::fs::PermissionsExt;
        let services = root.join("services");
        std::fs::create_dir_all(&services)?;
        std::fs::set_permissions(&services, std::fs::Permissions::from_mode(0o700))?;
        Ok(StateDir {
            root: root.to_path_buf(),
            snapshots: snapshots.to_path_buf(),
        })
    }

    /// Where the snapshot of `name` lives while it is on standby.
    pub fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.snapshots.join(name)
    }

    pub fn control_socket(&self, name: &str) -> PathBuf {
        self.service_dir(name).join("control.sock")
    }

    pub fn write_standby(&self, name: &str, record: &StandbyRecord) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomic(&self.service_dir(name).join("standby.json"), &json)
    }

    pub fn standby_record(&self, name: &str) -> Option<StandbyRecord> {
        let data = std::fs::read(self.service_dir(name).join("standby.json")).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Forgets the standby of `name` and deletes its snapshot.
    pub fn clear_standby(&self, name: &str) {
        let _ = std::fs::remove_file(self.service_dir(name).join("standby.json"));
        let _ = std::fs::remove_dir_all(self.snapshot_dir(name));
    }

    /// Takes the directory for this daemon alone (flock on `<state>/lock`, released when
    /// the process ends, however it ends): two daemons adopting the same VMs would fight.
    pub fn lock(&self) -> io::Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let path = self.root.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        // A daemon killed while it spawned a VMM leaves the lock with that child for the
        // moment until its exec closes the descriptor: when the pid written in the lock
        // is gone, wait for that moment instead of refusing to start.
        let deadline = std::time::Instant::now() + LOCK_STRAGGLER_WAIT;
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let gone = holder.parse::<u32>().is_ok_and(|pid| !process_alive(pid));
            if !gone || std::time::Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "another unikerneld (pid {holder}) uses the state directory {}",
                    self.root.display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        Ok(file)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn service_dir(&self, name: &str) -> PathBuf {
        self.root.join("services").join(name)
    }

    /// Where VMMs keep KVM's supported CPUID between them (`unikernel-vmm --cpuid-cache`).
    pub fn cpuid_cache(&self) -> PathBuf {
        self.root.join("cpuid")
    }

    /// Where the daemon reads every VM's console feed (`supervise::feed`).
    pub fn console_feed_socket(&self) -> PathBuf {
        self.root.join("console-feed.sock")
    }

    pub fn console_socket(&self, name: &str) -> PathBuf {
        self.service_dir(name).join("console.sock")
    }

    pub fn vmm_log(&self, name: &str) -> PathBuf {
        self.service_dir(name).join("vmm.log")
    }

    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    pub fn prepare(&self, name: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.service_dir(name))
    }

    /// Written by a daemon as it ends, for the next one (see [`ConsoleReadTo`]).
    pub fn write_console_read_to(&self, read_to: &std::collections::BTreeMap<String, ConsoleReadTo>) -> io::Result<()> {
        let json = serde_json::to_vec(read_to).map_err(io::Error::other)?;
        write_atomic(&self.root.join("console-read-to.json"), &json)
    }

    /// What the last daemon wrote, read once: the file goes with it, since it says nothing
    /// true once this daemon reads the consoles (a later daemon gets this one's).
    pub fn take_console_read_to(&self) -> std::collections::HashMap<String, ConsoleReadTo> {
        let path = self.root.join("console-read-to.json");
        let Ok(data) = std::fs::read(&path) else {
            return Default::default();
        };
        let _ = std::fs::remove_file(&path);
        serde_json::from_slice(&data).unwrap_or_else(|e| {
            tracing::warn!("ignoring {}: {e}", path.display());
            Default::default()
        })
    }

    pub fn write_record(&self, name: &str, record: &VmRecord) -> io::Result<()> {
        let dir = self.service_dir(name);
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomic(&dir.join("vm.json"), &json)
    }

    /// Forgets the VM of `name` (it ended) but keeps the folder (its log stays readable).
    pub fn clear_record(&self, name: &str) {
        let dir = self.service_dir(name);
        let _ = std::fs::remove_file(dir.join("vm.json"));
        let _ = std::fs::remove_file(dir.join("console.sock"));
        let _ = std::fs::remove_file(dir.join("control.sock"));
    }

    /// Every recorded VM, by service name; unreadable records are skipped with a warning.
    pub fn records(&self) -> Vec<(String, VmRecord)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.root.join("services")) else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue;
            };
            let path = entry.path().join("vm.json");
            match std::fs::read(&path) {
                Ok(data) => match serde_json::from_slice(&data) {
                    Ok(record) => out.push((name, record)),
                    Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Removes everything about `name` (the service is gone), its snapshot too.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.service_dir(name));
        let _ = std::fs::remove_dir_all(self.snapshot_dir(name));
    }

    /// The last good content of each declaration file, by file name: what a restarted
    /// daemon falls back on for a file that fails to parse (or a directory it cannot read).
    pub fn declarations(&self) -> Vec<(std::ffi::OsString, String)> {
        let Ok(entries) = std::fs::read_dir(self.root.join("declarations")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| Some((e.file_name(), std::fs::read_to_string(e.path()).ok()?)))
            .collect()
    }

    pub fn save_declaration(&self, file_name: &std::ffi::OsStr, text: &str) -> io::Result<()> {
        let dir = self.root.join("declarations");
        std::fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(file_name), text.as_bytes())
    }

    pub fn remove_declaration(&self, file_name: &std::ffi::OsStr) {
        let _ = std::fs::remove_file(self.root.join("declarations").join(file_name));
    }

    /// Folders of services that have no record (left by removed services).
    pub fn service_names(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("services"))
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_removed() {
        let root = std::env::temp_dir().join(format!("uk-state-{}", std::process::id()));
        let dir = StateDir::new(&root).unwrap();
        let rec = VmRecord {
            pid: 42,
            start_ticks: 7,
            spec_hash: "abc".into(),
            address: Some("10.200.0.9".parse().unwrap()),
            tap: Some("uk-web".into()),
            started_unix_ms: 1,
            boot_ms: Some(3.5),
        };
        dir.prepare("web").unwrap();
        dir.write_record("web", &rec).unwrap();
        std::fs::create_dir_all(dir.service_dir("junk")).unwrap();
        std::fs::write(dir.service_dir("junk").join("vm.json"), "{").unwrap();
        assert_eq!(dir.records(), vec![("web".to_string(), rec)]);
        dir.clear_record("web");
        assert!(dir.records().is_empty());
        dir.remove("web");
        assert!(!dir.service_dir("web").exists());
        // flock is per open file description: a second open in this process conflicts too.
        let held = dir.lock().unwrap();
        let err = dir.lock().unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        dir.lock().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_lock_left_with_a_dead_daemons_child_is_waited_for() {
        let root = std::env::temp_dir().join(format!("uk-lock-{}", std::process::id()));
        let dir = StateDir::new(&root).unwrap();
        let held = dir.lock().unwrap();
        // The pid in the lock is gone (a killed daemon); its descriptor lives on a moment
        // longer (a child between fork and exec), here another open file.
        let dead = (2..u32::MAX).rev().step_by(7919).find(|p| !process_alive(*p)).unwrap();
        std::fs::write(root.join("lock"), dead.to_string()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(150));
            drop(held);
        });
        let t = std::time::Instant::now();
        dir.lock().unwrap();
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        release.join().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! `status.json`, encoded and written on a thread of its own. At 10,000 services it is
//! ~5 MB of JSON, ~25 ms to encode and write here: on the daemon's one runtime thread
//! that was 25 ms in which no console was read and no connection served (a start's first
//! console line waited for it: a start took ~55 ms instead of ~13 with 10,000 running).
//! Only the newest snapshot is written; one that cannot be (a full disk, no fds) is tried
//! again a second later unless a newer one came, and the failure is said once. A service
//! whose status did not change since the last write is not encoded again: a start among
//! 10,000 encodes one service, not 10,000 (each encoding competed with the guests for the
//! host's CPUs).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};

use crate::state_dir::write_atomic;
use crate::status::{Snapshot, Status};

/// A failed write is tried again after this long (sooner if a newer snapshot comes).
const RETRY: Duration = Duration::from_secs(1);

pub struct StatusFile {
    shared: Arc<Shared>,
    /// `None`: no thread could be had; writes happen on the caller's.
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    path: PathBuf,
    /// Used by one write at a time (the thread's, or the caller's without one).
    encoder: Mutex<Encoder>,
    slot: Mutex<Slot>,
    /// Something to write, or the end.
    wake: Condvar,
    /// A write finished (for [`StatusFile::flush`]).
    written: Condvar,
}

#[derive(Default)]
struct Slot {
    /// The newest snapshot not written yet, with its number.
    next: Option<(u64, Arc<Snapshot>)>,
    /// Snapshots handed over so far.
    queued: u64,
    /// The number of the last snapshot whose write was tried (it may have failed).
    tried: u64,
    /// Why the last write failed, said once.
    error: Option<String>,
    closing: bool,
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusFile {
    pub fn new(path: PathBuf) -> StatusFile {
        let shared = Arc::new(Shared {
            path,
            encoder: Mutex::default(),
            slot: Mutex::default(),
            wake: Condvar::new(),
            written: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("status.json".into())
            .spawn(move || write_loop(&worker));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                warn!("cannot start a thread to write the status ({e}): it is written on the main one");
                None
            }
        };
        StatusFile { shared, thread }
    }

    /// Writes `snapshot` soon, instead of any older one not yet written.
    pub fn write(&self, snapshot: Arc<Snapshot>) {
        let mut slot = lock(&self.shared.slot);
        slot.queued += 1;
        slot.next = Some((slot.queued, snapshot));
        if self.thread.is_none() {
            let _ = write_next(&self.shared, slot);
            return;
        }
        drop(slot);
        self.shared.wake.notify_one();
    }

    /// Waits until the write of what was handed to [`StatusFile::write`] so far was tried
    /// (it may have failed: it is then tried again later, without waiting here).
    pub fn flush(&self) {
        let mut slot = lock(&self.shared.slot);
        let until = slot.queued;
        while slot.tried < until {
            slot = self.shared.written.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for StatusFile {
    /// Writes what is pending, then ends the thread.
    fn drop(&mut self) {
        lock(&self.shared.slot).closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(shared: &Shared) {
    let mut slot = lock(&shared.slot);
    loop {
        if slot.next.is_some() {
            let failed = write_next(shared, slot);
            slot = lock(&shared.slot);
            if failed && slot.closing {
                // The last try at the end failed (and was said): nothing waits for more.
                return;
            }
            if failed && slot.next.is_some() {
                // Tried again after a while, or at once for a newer one.
                slot = shared
                    .wake
                    .wait_timeout(slot, RETRY)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            continue;
        }
        if slot.closing {
            return;
        }
        slot = shared.wake.wait(slot).unwrap_or_else(|p| p.into_inner());
    }
}

/// Writes the snapshot in `slot` (the lock is let go meanwhile); true if that failed. A
/// failed one stays to be tried again, unless a newer one took its place.
fn write_next(shared: &Shared, mut slot: MutexGuard<'_, Slot>) -> bool {
    let Some((number, snapshot)) = slot.next.take() else {
        return false;
    };
    drop(slot);
    let mut encoder = shared.encoder.lock().unwrap_or_else(|p| p.into_inner());
    let result = encoder
        .encode(&snapshot)
        .map_err(std::io::Error::other)
        .and_then(|json| write_atomic(&shared.path, &json));
    drop(encoder);
    let mut slot = lock(&shared.slot);
    slot.tried = slot.tried.max(number);
    let failed = match result {
        Ok(()) => {
            if slot.error.take().is_some() {
                info!("{} is written again", shared.path.display());
            }
            false
        }
        Err(e) => {
            let msg = format!("cannot write {}: {e}", shared.path.display());
            if slot.error.as_ref() != Some(&msg) {
                warn!("{msg} (trying again)");
                slot.error = Some(msg);
            }
            if slot.next.is_none() {
                slot.next = Some((number, snapshot));
            }
            true
        }
    };
    drop(slot);
    shared.written.notify_all();
    failed
}

/// Encodes snapshots as JSON (pretty, as `serde_json::to_vec_pretty` would, byte for
/// byte), keeping each service's encoding for the next snapshot: only a status that
/// differs is encoded again.
#[derive(Default)]
struct Encoder {
    services: HashMap<String, (Arc<Status>, Vec<u8>)>,
}

/// `value` pretty-printed as it would be `depth` levels deep: a JSON string holds no raw
/// newline, so every newline of the encoding is one of the layout's.
fn pretty_at<T: serde::Serialize>(value: &T, depth: usize) -> serde_json::Result<Vec<u8>> {
    let flat = serde_json::to_vec_pretty(value)?;
    let indent = b"  ".repeat(depth);
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 8);
    for &b in &flat {
        out.push(b);
        if b == b'\n' {
            out.extend_from_slice(&indent);
        }
    }
    Ok(out)
}

impl Encoder {
    fn encode(&mut self, snapshot: &Snapshot) -> serde_json::Result<Vec<u8>> {
        let mut kept = HashMap::with_capacity(snapshot.services.len());
        let mut out = Vec::with_capacity(self.services.values().map(|(_, b)| b.len() + 6).sum::<usize>() + 256);
        out.extend_from_slice(b"{\n  \"services\": [");
        for (i, status) in snapshot.services.iter().enumerate() {
            // The same status is mostly the same `Arc` (see `Service::published`).
            let (name, bytes) = match self.services.remove_entry(&status.name) {
                Some((name, (last, bytes))) if Arc::ptr_eq(&last, status) || last == *status => (name, bytes),
                _ => (status.name.clone(), pretty_at(status, 2)?),
            };
            out.extend_from_slice(if i > 0 { b",\n    " } else { b"\n    " });
            out.extend_from_slice(&bytes);
            kept.insert(name, (status.clone(), bytes));
        }
        if !snapshot.services.is_empty() {
            out.extend_from_slice(b"\n  ");
        }
        out.extend_from_slice(b"],\n  \"declaration_errors\": ");
        out.extend_from_slice(&pretty_at(&snapshot.declaration_errors, 1)?);
        out.extend_from_slice(b",\n  \"source\": ");
        out.extend_from_slice(&pretty_at(&snapshot.source, 1)?);
        out.extend_from_slice(b"\n}");
        self.services = kept;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot told apart by its declaration errors' messages.
    fn snapshot(names: &[&str]) -> Arc<Snapshot> {
        let mut s = Snapshot::default();
        for name in names {
            s.declaration_errors.push(crate::status::DeclarationError {
                file: "/etc/unikernels/x.kdl".into(),
                line: 1,
                column: 1,
                message: name.to_string(),
                help: None,
            });
        }
        Arc::new(s)
    }

    fn read(path: &std::path::Path) -> Vec<String> {
        let s: Snapshot = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        s.declaration_errors.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn the_encoding_is_serde_jsons_and_kept_encodings_follow_every_change() {
        let status = |name: &str, restarts: u32| -> Status {
            serde_json::from_value(serde_json::json!({
                "name": name, "state": "running", "pid": 7, "address": "10.200.0.2",
                "started_unix_ms": 1, "boot_ms": 12.5, "restarts": restarts, "last_error": null,
                "source_file": "/etc/unikernels/a.kdl", "source_line": 1, "spec_hash": "h",
                "exposed": [[8080, 80]], "memory_bytes": 16777216, "held": false,
            }))
            .unwrap()
        };
        let mut encoder = Encoder::default();
        let mut snap = Snapshot::clone(&snapshot(&["broken"]));
        let pretty = |snap: &Snapshot| String::from_utf8(serde_json::to_vec_pretty(snap).unwrap()).unwrap();
        let ours = |encoder: &mut Encoder, snap: &Snapshot| String::from_utf8(encoder.encode(snap).unwrap()).unwrap();
        assert_eq!(ours(&mut encoder, &snap), pretty(&snap), "no services");
        snap.services = vec![status("a", 0), status("b", 0), status("c", 0)]
            .into_iter()
            .map(Arc::new)
            .collect();
        assert_eq!(ours(&mut encoder, &snap), pretty(&snap));
        // One changes, one goes, one comes, the order changes: still serde_json's.
        snap.services = vec![status("d", 0), status("c", 0), status("a", 3)]
            .into_iter()
            .map(Arc::new)
            .collect();
        snap.declaration_errors.clear();
        let json = encoder.encode(&snap).unwrap();
        assert_eq!(String::from_utf8(json.clone()).unwrap(), pretty(&snap));
        assert_eq!(encoder.services.len(), 3, "b is forgotten");
        let back: Snapshot = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.services, snap.services);
    }

    #[test]
    fn the_newest_snapshot_is_written_a_failed_write_is_retried_and_drop_writes_what_is_pending() {
        let dir = std::env::temp_dir().join(format!("uk-status-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("status.json");
        let file = StatusFile::new(path.clone());
        file.write(snapshot(&["a"]));
        file.write(snapshot(&["a", "b"]));
        file.flush();
        assert_eq!(read(&path), ["a", "b"]);
        // The directory goes: the write fails, and is tried again once it is back.
        std::fs::remove_dir_all(&dir).unwrap();
        file.write(snapshot(&["c"]));
        file.flush();
        assert!(!path.exists());
        std::fs::create_dir_all(&dir).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(read(&path), ["c"], "retried");
        file.write(snapshot(&["d"]));
        drop(file);
        assert_eq!(read(&path), ["d"], "written before the thread ended");
        // A write that fails at the end does not hold the end up.
        let file = StatusFile::new(path.clone());
        std::fs::remove_dir_all(&dir).unwrap();
        file.write(snapshot(&["e"]));
        drop(file);
        assert!(!path.exists());
    }
}

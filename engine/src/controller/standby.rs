//! Scale to zero. A running service with `standby` is checked when its idle time is due:
//! without traffic for that long (and, unless `connections="hold"`, without an open
//! connection) its VMM is asked for a snapshot and ends: the service is on `standby`,
//! with no process and no guest memory, its tap, address and host ports kept. A
//! connection to one of its host ports asks for a wake: a VMM resumes the snapshot on the
//! same tap and the connection goes through. A snapshot that does not restore is a cold
//! boot (see `lifecycle`), so a waiting connection is served either way.
use std::net::Ipv4Addr;

use tokio::time::Instant;
use tracing::{info, warn};

use super::host::{HostNet, Launcher, Saved, VmProcess};
use super::lifecycle::unix_ms;
use super::{Controller, Event, OperatorError};
use crate::decl::Connections;
use crate::state_dir::StandbyRecord;
use crate::status::State;

impl<L: Launcher, N: HostNet> Controller<L, N> {
    /// A VM just became ready: go to standby at once (`prewarm`, after a cold boot with
    /// nobody waiting), or start its idle clock.
    pub(super) fn after_ready(&mut self, name: &str) {
        let Some(svc) = self.services.get(name) else { return };
        let Some(standby) = svc.spec.standby else { return };
        if standby.prewarm && !svc.standby.restored && svc.activity.open() == 0 {
            info!(UNIKERNEL = %name, "prewarmed: saving it before any request needs it");
            self.suspend(name);
            return;
        }
        self.arm_idle(name);
    }

    /// Looks again when the idle time could be over.
    fn arm_idle(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else { return };
        let Some(standby) = svc.spec.standby else { return };
        svc.standby.idle_timer += 1;
        let quiet = svc.activity.quiet_for();
        // Never sooner than a tenth of the idle time: a busy service costs a few timers.
        let delay = standby.idle.saturating_sub(quiet).max(standby.idle / 10);
        let event = Event::IdleDue {
            name: name.to_string(),
            timer: svc.standby.idle_timer,
        };
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(event);
        });
    }

    pub(super) fn on_idle_due(&mut self, name: &str, timer: u64) {
        let Some(svc) = self.services.get(name) else { return };
        let Some(standby) = svc.spec.standby else { return };
        if svc.standby.idle_timer != timer || svc.state != State::Running || svc.standby.saving || svc.vm.is_none() {
            return;
        }
        let busy = standby.connections == Connections::KeepAwake && svc.activity.open() > 0;
        if busy || svc.activity.quiet_for() < standby.idle {
            return self.arm_idle(name);
        }
        info!(
            UNIKERNEL = %name,
            "idle for {:.1} s: going to standby",
            svc.activity.quiet_for().as_secs_f64()
        );
        self.suspend(name);
    }

    /// Asks the VMM for a snapshot; new connections wait from now on. The VMM's end
    /// (with status "saved") completes the move to standby.
    fn suspend(&mut self, name: &str) {
        let dir = self.state_dir.snapshot_dir(name);
        let state_before = state_inode(&dir);
        let Some(svc) = self.services.get_mut(name) else { return };
        let Some(vm) = svc.vm.as_ref() else { return };
        svc.standby.saving = true;
        svc.standby.state_before = state_before;
        svc.standby.wake_pending = false;
        let _ = svc.target.send(None);
        let saving = vm.process.snapshot(dir);
        let (tx, name, id) = (self.events.clone(), name.to_string(), vm.id);
        tokio::spawn(async move {
            let result = saving.await;
            let _ = tx.send(Event::Saved { name, vm: id, result });
        });
    }

    pub(super) fn on_saved(&mut self, name: &str, vm: u64, result: Result<Saved, String>) {
        let Some(svc) = self.services.get_mut(name) else { return };
        match result {
            Ok(saved) => {
                svc.standby.snapshot_bytes = Some(saved.memory_bytes);
                svc.standby.last_save_ms = Some(saved.millis);
                info!(
                    UNIKERNEL = %name,
                    "snapshot written: {} KiB of guest memory in {} ms",
                    saved.memory_bytes / 1024,
                    saved.millis
                );
            }
            Err(e) => {
                // The VM runs on (the VMM resumes it when a snapshot fails).
                let Some(v) = svc.vm.as_ref().filter(|v| v.id == vm) else {
                    return;
                };
                warn!(UNIKERNEL = %name, "cannot go to standby: {e}; it keeps running");
                svc.last_error = Some(format!("standby failed: {e}"));
                svc.standby.saving = false;
                if svc.state == State::Running {
                    let _ = svc.target.send(v.address);
                }
                self.status_dirty = true;
                self.arm_idle(name);
            }
        }
    }

    /// Whether the VMM of `name`, asked for a snapshot, wrote one (a new state file was
    /// renamed into place): for adopted VMMs, whose exit status is not ours to read.
    pub(super) fn wrote_snapshot(&self, name: &str) -> bool {
        let Some(svc) = self.services.get(name).filter(|s| s.standby.saving) else {
            return false;
        };
        let now = state_inode(&self.state_dir.snapshot_dir(name));
        now.is_some() && now != svc.standby.state_before
    }

    /// The VMM ended after writing its snapshot: the service is on standby. `kept` is
    /// what its VM had: spec hash, address, tap.
    pub(super) async fn entered_standby(&mut self, name: &str, kept: (String, Option<Ipv4Addr>, Option<String>)) {
        let Some(svc) = self.services.get_mut(name) else { return };
        let (spec_hash, address, tap) = kept;
        svc.standby.saving = false;
        svc.standby.restored = false;
        svc.set_state(State::Standby);
        self.status_dirty = true;
        let record = StandbyRecord {
            spec_hash,
            address,
            tap,
            saved_unix_ms: unix_ms(),
            memory_bytes: svc.standby.snapshot_bytes.unwrap_or(0),
        };
        if let Err(e) = self.state_dir.write_standby(name, &record) {
            warn!(UNIKERNEL = %name, "cannot record the standby (a daemon restart would boot it afresh): {e}");
        }
        info!(UNIKERNEL = %name, "on standby: no process, woken by the next connection");
        // Connections that came while it was saving asked for a wake; held ones did not.
        if std::mem::take(&mut svc.standby.wake_pending) {
            self.wake(name).await;
        }
    }

    /// A connection waits (or an operator asked): resume the snapshot.
    pub(super) async fn wake(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else { return };
        if svc.standby.saving {
            svc.standby.wake_pending = true;
            return;
        }
        if svc.state != State::Standby || svc.held {
            return;
        }
        svc.standby.waking_since = Some(Instant::now());
        self.start_vm(name, true).await;
    }

    /// The declaration's `standby` changed in place: a service on standby that must no
    /// longer be is woken; a running one gets its idle clock (re)started.
    pub(super) async fn standby_settings_changed(&mut self, name: &str) {
        let Some(svc) = self.services.get(name) else { return };
        match (svc.state, svc.spec.standby) {
            (State::Standby, None) => self.wake(name).await,
            (State::Running, Some(_)) => self.arm_idle(name),
            _ => {}
        }
    }

    /// Operator `Standby`: save the running VM now, whatever its idle clock says.
    pub fn operator_standby(&mut self, name: &str) -> Result<(), OperatorError> {
        let svc = self.services.get(name).ok_or(OperatorError::NoSuchUnikernel)?;
        if svc.spec.net.is_none() {
            return Err(OperatorError::NoNetwork);
        }
        if svc.state != State::Running || svc.vm.is_none() {
            return Err(OperatorError::NotRunning(svc.state));
        }
        info!(UNIKERNEL = %name, "standby requested by an operator");
        if !svc.standby.saving {
            self.suspend(name);
        }
        Ok(())
    }

    /// Operator `Wake`.
    pub async fn operator_wake(&mut self, name: &str) -> Result<(), OperatorError> {
        let svc = self.services.get(name).ok_or(OperatorError::NoSuchUnikernel)?;
        if svc.state != State::Standby && !svc.standby.saving {
            return Err(OperatorError::NotOnStandby(svc.state));
        }
        info!(UNIKERNEL = %name, "wake requested by an operator");
        self.wake(name).await;
        Ok(())
    }
}

/// The inode of the state file in snapshot directory `dir`, if there is one.
pub(super) fn state_inode(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.join(contract::control::SNAPSHOT_STATE_FILE))
        .ok()
        .map(|m| m.ino())
}

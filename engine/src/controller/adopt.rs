//! Taking over what an earlier daemon left running: the VMs still declared with the same
//! spec keep running untouched; the changed ones are replaced by the first reload; those
//! no longer declared are stopped without waiting for them (their end releases the tap).
use tokio::time::Instant;
use tracing::{info, warn};

use super::host::{HostNet, Launcher, VmProcess};
use super::service::{Service, Vm};
use super::Controller;
use crate::status::State;
use crate::supervise::console::ConsoleRing;

impl<L: Launcher, N: HostNet> Controller<L, N> {
    /// Call once, before the first [`Controller::reload`].
    pub async fn adopt(&mut self) {
        let loaded = self.loader.load_dir(&self.config_dir);
        self.keep_declarations(&loaded);
        let desired = loaded.specs;
        for (name, record) in self.state_dir.records() {
            let declared = desired.get(&name).cloned();
            let mut svc = declared.map(Service::new);
            // The recorded tap is this service's, alive or not: the one to reuse or to
            // delete (never a tap recomputed from the name, which may be another's).
            if let (Some(tap), Some(address)) = (&record.tap, record.address) {
                if let Err(e) = self.net.adopt(&name, tap, address) {
                    warn!(UNIKERNEL = %name, "cannot take over its address: {e}");
                }
            }
            let console = svc
                .as_ref()
                .map(|s| s.console.clone())
                .unwrap_or_else(ConsoleRing::default);
            let Some(process) = self.launcher.adopt(&name, &record, console) else {
                info!(UNIKERNEL = %name, "recorded VM (pid {}) is gone", record.pid);
                self.state_dir.clear_record(&name);
                if svc.is_none() {
                    self.release(&name, record.tap.is_some()).await;
                }
                continue;
            };
            let id = self.next_vm;
            self.next_vm += 1;
            let mut vm = Vm {
                id,
                process,
                spec_hash: record.spec_hash.clone(),
                address: record.address,
                tap: record.tap.clone(),
                started: Instant::now(),
                started_unix_ms: record.started_unix_ms,
                boot_ms: record.boot_ms,
                tasks: Vec::new(),
                unrecorded: None,
                unanswered: 0,
                setup: Default::default(),
                noticed: None,
            };
            let Some(mut svc) = svc.take() else {
                // No longer declared: there is no spec to supervise it by. Stop it; its
                // end (watched like any VM's) releases the host side.
                info!(UNIKERNEL = %name, "stopping VM pid {} (no longer declared)", vm.process.pid());
                self.watch_vm(&name, &mut vm);
                self.leaving.insert(name.clone(), vm);
                self.stop_leaving(&name);
                continue;
            };
            info!(UNIKERNEL = %name, "adopted VM pid {}", vm.process.pid());
            svc.set_state(State::Booting);
            self.services.insert(name.clone(), svc);
            self.watch_vm(&name, &mut vm);
            if let Some(svc) = self.services.get_mut(&name) {
                svc.vm = Some(vm);
            }
            self.sync_listeners(&name);
        }
        // Services on standby: no process, a snapshot. Still declared with the same spec,
        // they stay on standby; otherwise the snapshot is of no use.
        for name in self.state_dir.service_names() {
            if self.services.contains_key(&name) || self.leaving.contains_key(&name) {
                continue;
            }
            let Some(record) = self.state_dir.standby_record(&name) else {
                continue;
            };
            if let (Some(tap), Some(address)) = (&record.tap, record.address) {
                if let Err(e) = self.net.adopt(&name, tap, address) {
                    warn!(UNIKERNEL = %name, "cannot take over its address: {e}");
                }
            }
            let snapshot_there = self
                .state_dir
                .snapshot_dir(&name)
                .join(contract::control::SNAPSHOT_STATE_FILE)
                .exists();
            match desired.get(&name) {
                Some(spec) if spec.hash() == record.spec_hash && snapshot_there => {
                    let mut svc = Service::new(spec.clone());
                    svc.set_state(State::Standby);
                    svc.standby.snapshot_bytes = Some(record.memory_bytes);
                    info!(UNIKERNEL = %name, "on standby (adopted)");
                    self.services.insert(name.clone(), svc);
                    self.sync_listeners(&name);
                }
                Some(_) => {
                    // Changed while no daemon ran (or the snapshot is gone): a cold boot
                    // follows from the first converge; the tap is reused.
                    info!(UNIKERNEL = %name, "its standby snapshot is out of date: it boots afresh");
                    self.state_dir.clear_standby(&name);
                }
                None => {
                    self.state_dir.clear_standby(&name);
                    self.release(&name, record.tap.is_some()).await;
                }
            }
        }
        // VMMs of this state directory that nothing recorded (a daemon killed between
        // spawning one and recording it): end them, so no service runs twice.
        let keep: std::collections::HashSet<u32> = self
            .services
            .values()
            .filter_map(|s| s.vm.as_ref())
            .chain(self.leaving.values())
            .map(|vm| vm.process.pid())
            .collect();
        for (name, pid) in self.launcher.sweep(&keep) {
            warn!(UNIKERNEL = %name, "ended VMM pid {pid}, which no record explains (a daemon died before recording it)");
        }
        // Folders of services that no record explains (removed while no daemon ran).
        for name in self.state_dir.service_names() {
            if !self.services.contains_key(&name) && !self.leaving.contains_key(&name) && !desired.contains_key(&name) {
                self.state_dir.remove(&name);
            }
        }
    }
}

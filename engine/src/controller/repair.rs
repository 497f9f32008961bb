//! Drift repair, run by every resync: what the host shows is compared with what the
//! controller set up, and the difference is repaired. A tap deleted behind the daemon's
//! back leaves its VMM with a dead fd: that VM is restarted on a new tap. A tap that is
//! down or lost its route is wired again in place. A host port that could not be bound
//! (taken by someone else) is tried again.
use tracing::warn;

use super::host::{Drift, HostNet, Launcher, Liveness, Signal, VmProcess};
use super::{Controller, Event};
use crate::status::State;

/// Liveness pings in a row a VMM may miss before it is restarted.
const UNANSWERED_LIMIT: u32 = 2;

/// Liveness pings in flight at once: each holds a socket, and a host of 5,000 VMs must
/// not need 5,000 more descriptors every resync (it ran out, and healthy VMs were taken
/// for hung ones).
pub(super) const PINGS_AT_ONCE: usize = 32;

impl<L: Launcher, N: HostNet> Controller<L, N> {
    pub(super) async fn repair(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in &names {
            self.sync_listeners(name);
        }
        let drift = match self.net.drift().await {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot check the host network: {e}");
                return;
            }
        };
        for (name, drift) in drift {
            let Some(svc) = self.services.get_mut(&name) else {
                continue;
            };
            match drift {
                Drift::TapGone => {
                    if svc.vm.is_none() || svc.state == State::Stopping {
                        continue;
                    }
                    warn!(UNIKERNEL = %name, "its tap was deleted behind the daemon's back: restarting the VM on a new one");
                    svc.last_error = Some("tap deleted behind the daemon's back; VM restarted".into());
                    svc.restarts += 1;
                    self.stop_vm(&name);
                }
                Drift::Unwired => {
                    warn!(UNIKERNEL = %name, "its tap was down or lost its route: wiring it again");
                    if let Err(e) = self.net.rewire(&name).await {
                        warn!(UNIKERNEL = %name, "cannot wire its tap again: {e}");
                    }
                }
            }
        }
    }

    /// Pings every running VM's VMM over its control socket (off the loop; the answers
    /// come back as events), unless it was heard from lately. A VMM stopped with SIGSTOP,
    /// or hung, holds its guest and its host port hostage while looking alive to a pidfd:
    /// it is found here.
    pub(super) fn check_liveness(&mut self) {
        for (name, svc) in &mut self.services {
            let Some(vm) = svc.vm.as_mut() else { continue };
            if svc.state != State::Running || svc.standby.saving {
                continue;
            }
            if vm.process.heard_lately() {
                vm.unanswered = 0;
                self.stats.heard += 1;
                continue;
            }
            self.stats.pinged += 1;
            let ping = vm.process.responsive();
            let (tx, name, id) = (self.events.clone(), name.clone(), vm.id);
            let pings = self.pings.clone();
            tokio::spawn(async move {
                let Ok(_turn) = pings.acquire().await else { return };
                let answered = ping.await;
                let _ = tx.send(Event::Liveness { name, vm: id, answered });
            });
        }
    }

    pub(super) fn on_liveness(&mut self, name: &str, vm: u64, answered: Liveness) {
        let Some(svc) = self.services.get_mut(name) else { return };
        let Some(v) = svc.vm.as_mut().filter(|v| v.id == vm) else {
            return;
        };
        match answered {
            Liveness::Answered => {
                v.unanswered = 0;
                return;
            }
            Liveness::NotChecked(why) => {
                // Neither for nor against the VM; said once a minute, not per VM.
                let now = tokio::time::Instant::now();
                if self
                    .unchecked_warned
                    .is_none_or(|t| now - t > std::time::Duration::from_secs(60))
                {
                    self.unchecked_warned = Some(now);
                    warn!("cannot check whether VMMs still answer: {why}; their VMs are left as they are");
                }
                return;
            }
            Liveness::Silent => {}
        }
        v.unanswered += 1;
        if v.unanswered < UNANSWERED_LIMIT || svc.state != State::Running {
            return;
        }
        let pid = v.process.pid();
        warn!(
            UNIKERNEL = %name,
            "VM pid {pid} stopped answering its control socket ({} checks in a row): killing it and starting again",
            v.unanswered
        );
        let _ = v.process.signal(Signal::Kill);
        svc.last_error = Some(format!(
            "the VMM (pid {pid}) stopped answering (stopped with SIGSTOP, or hung); restarted"
        ));
        svc.restarts += 1;
        // Its end (the kill works on a stopped process) starts the next VM.
        svc.set_state(State::Stopping);
        let _ = svc.target.send(None);
        self.status_dirty = true;
    }
}

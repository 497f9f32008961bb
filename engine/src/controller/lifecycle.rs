//! One service's VM: start it, watch it, stop it, and decide what follows its end
//! (restart policy, back-off, `failed`); and the operator's start/stop/restart.
use std::net::SocketAddrV4;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::host::{HostNet, LaunchRequest, Launcher, Readiness, Signal, VmProcess};
use super::service::{Service, StartCost, Vm};
use super::{Controller, Event, OperatorError, STOP_GRACE};
use crate::status::State;
use crate::steps::{thread_cpu, Steps};
use crate::supervise::backoff::{self, Decision};
use crate::supervise::process::Ended;
use contract::exit::ExitStatus;

/// How often a start that found the host out of resources is tried again.
const NO_RESOURCES_RETRY: Duration = Duration::from_secs(1);

/// Whether an error the daemon met while starting a VM says the host is out of threads,
/// processes, memory or descriptors (EAGAIN, ENOMEM, ENFILE, EMFILE, as std::io prints them).
fn host_exhausted(reason: &str) -> bool {
    ["(os error 11)", "(os error 12)", "(os error 23)", "(os error 24)"]
        .iter()
        .any(|e| reason.contains(e))
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<L: Launcher, N: HostNet> Controller<L, N> {
    /// Boots a new VM for `name` (a cold boot: a snapshot it had is of no use any more).
    pub(super) async fn start(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else { return };
        if svc.standby.snapshot_bytes.take().is_some() || svc.spec.standby.is_some() {
            self.state_dir.clear_standby(name);
        }
        self.start_vm(name, false).await;
    }

    /// Starts the VMM of `name`: a cold boot, or (`restore`) the VM saved in its snapshot,
    /// on the tap and address it kept while on standby.
    pub(super) async fn start_vm(&mut self, name: &str, restore: bool) {
        let Some(svc) = self.services.get_mut(name) else { return };
        let t0 = Instant::now();
        let cpu0 = thread_cpu();
        svc.timer += 1;
        svc.standby.restored = restore;
        svc.standby.saving = false;
        svc.set_state(State::Booting);
        let explicit = svc.spec.net.as_ref().map(|n| n.address);
        // A wake reopens the tap it kept; if that tap is gone, it is set up again.
        let reopened = match (explicit, restore) {
            (Some(_), true) => self
                .net
                .reopen(name)
                .inspect_err(|e| warn!(UNIKERNEL = %name, "{e}: setting it up again"))
                .ok(),
            _ => None,
        };
        let mut attachment = match (explicit, reopened) {
            (_, Some(a)) => Some(a),
            (Some(address), None) => match self.net.attach(name, address).await {
                Ok(a) => Some(a),
                Err(e) => return self.start_failed(name, format!("network: {e}")),
            },
            (None, None) => None,
        };
        let t_net = t0.elapsed();
        let mut rest = Steps::new();
        if let Err(e) = self.state_dir.prepare(name) {
            return self.start_failed(name, format!("state directory: {e}"));
        }
        rest.done("state directory");
        let Some(svc) = self.services.get_mut(name) else { return };
        let net = attachment.as_ref().map(|a| (a.address, a.tap_name.clone()));
        let network_steps = attachment.as_mut().and_then(|a| a.steps.take());
        let snapshot = restore.then(|| self.state_dir.snapshot_dir(name));
        let request = LaunchRequest {
            name,
            spec: &svc.spec,
            net: attachment,
            console: svc.console.clone(),
            restore: snapshot.as_deref(),
        };
        let t_spawn = Instant::now();
        let process = match self.launcher.spawn(request) {
            Ok(p) => p,
            Err(reason) => return self.start_failed(name, reason),
        };
        let spawned = t_spawn.elapsed();
        if restore {
            // The address goes out when the VM runs: by then the reopened tap must carry
            // frames, or the first connection's ARP request is lost and retried after 1 s.
            // Waited for here, while the VMM restores (it has almost always been ready).
            self.net.settle(name);
        }
        let id = self.next_vm;
        self.next_vm += 1;
        let mut vm = Vm {
            id,
            process,
            spec_hash: svc.hash.clone(),
            address: net.as_ref().map(|n| n.0),
            tap: net.map(|n| n.1),
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            boot_ms: None,
            tasks: Vec::new(),
            unrecorded: None,
            unanswered: 0,
            setup: StartCost::default(),
            noticed: self.noticed,
        };
        rest.skip();
        if let Err(e) = self.state_dir.write_record(name, &vm.record()) {
            // A VM nothing records would be found by no later daemon (it would run twice,
            // or hold its tap): it does not run. Its end is handled like a quick crash.
            error!(UNIKERNEL = %name, "cannot record VM pid {}: {e}; ending it", vm.process.pid());
            let _ = vm.process.signal(Signal::Kill);
            vm.unrecorded = Some(format!("cannot record the VM in the state directory: {e}"));
        }
        rest.done("record");
        self.watch_vm(name, &mut vm);
        rest.done("watchers");
        vm.setup = StartCost {
            network: t_net,
            network_steps,
            spawn: spawned,
            rest,
            daemon: t0.elapsed(),
            daemon_cpu: thread_cpu().saturating_sub(cpu0),
        };
        info!(
            UNIKERNEL = %name,
            "{} VM pid {} (network {:.1} ms, spawn {:.1} ms, daemon {:.1} ms)",
            if restore { "resuming" } else { "booting" },
            vm.process.pid(),
            t_net.as_secs_f64() * 1e3,
            spawned.as_secs_f64() * 1e3,
            vm.setup.daemon.as_secs_f64() * 1e3,
        );
        if let Some(svc) = self.services.get_mut(name) {
            svc.vm = Some(vm);
        }
        self.status_dirty = true;
    }

    /// A start that failed before any VM ran counts like a VM that ended at once, unless
    /// the host was out of resources (then it is retried without counting).
    fn start_failed(&mut self, name: &str, reason: String) {
        error!(UNIKERNEL = %name, "cannot start: {reason}");
        let ended = if host_exhausted(&reason) {
            Ended::Exited(i32::from(ExitStatus::NoResources.code()))
        } else {
            Ended::Exited(3)
        };
        self.after_end(name, ended, Duration::ZERO, reason);
    }

    /// Spawns the helpers of a VM: exit watcher and readiness probe.
    pub(super) fn watch_vm(&self, name: &str, vm: &mut Vm<L::Vm>) {
        let tx = self.events.clone();
        let ended = vm.process.ended();
        let (n, id) = (name.to_string(), vm.id);
        vm.tasks.push(tokio::spawn(async move {
            let exit = ended.await;
            let _ = tx.send(Event::Ended { name: n, vm: id, exit });
        }));
        let port = self
            .services
            .get(name)
            .and_then(|s| s.spec.exposed().next())
            .map(|e| e.guest);
        let probe_at = vm.address.zip(port).map(|(a, p)| SocketAddrV4::new(a, p));
        let ready = vm.process.ready(probe_at);
        let tx = self.events.clone();
        let n = name.to_string();
        vm.tasks.push(tokio::spawn(async move {
            let readiness = ready.await;
            let _ = tx.send(Event::Ready {
                name: n,
                vm: id,
                readiness,
            });
        }));
    }

    /// A timer: `event` comes back to the loop after `delay`.
    fn send_after(&self, delay: Duration, event: Event) {
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(event);
        });
    }

    /// Asks the VM of `name` to stop; its end (Event::Ended) decides what comes next.
    pub(super) fn stop_vm(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else { return };
        if svc.vm.is_none() || svc.state == State::Stopping {
            return;
        }
        svc.set_state(State::Stopping);
        let _ = svc.target.send(None);
        if let Some(vm) = self.services.get(name).and_then(|s| s.vm.as_ref()) {
            self.terminate(name, vm);
        }
        self.status_dirty = true;
    }

    /// Asks a leaving VM (adopted, no longer declared) to stop.
    pub(super) fn stop_leaving(&self, name: &str) {
        if let Some(vm) = self.leaving.get(name) {
            self.terminate(name, vm);
        }
    }

    /// SIGTERM now, SIGKILL after [`STOP_GRACE`] unless it ended by then.
    fn terminate(&self, name: &str, vm: &Vm<L::Vm>) {
        if let Err(e) = vm.process.signal(Signal::Term) {
            warn!(UNIKERNEL = %name, "cannot signal VM pid {}: {e}", vm.process.pid());
        }
        let event = Event::KillDue {
            name: name.to_string(),
            vm: vm.id,
        };
        self.send_after(STOP_GRACE, event);
    }

    /// Forgets a service whose VM has ended: tap, address, state folder, listeners.
    pub(super) async fn remove(&mut self, name: &str) {
        let Some(svc) = self.services.remove(name) else { return };
        let had_network = svc.spec.net.is_some();
        drop(svc); // its listeners close
        self.release(name, had_network).await;
        info!(UNIKERNEL = %name, "removed");
        self.status_dirty = true;
    }

    /// The host side of a service that is gone: its tap and address (when it had a
    /// network) and its state folder.
    pub(super) async fn release(&mut self, name: &str, had_network: bool) {
        if had_network {
            let deletion = self.net.detach(name);
            let name = name.to_string();
            tokio::spawn(async move {
                if let Err(e) = deletion.await {
                    warn!(UNIKERNEL = %name, "cannot remove its tap: {e}");
                }
            });
        }
        self.state_dir.remove(name);
    }

    pub async fn handle(&mut self, event: Event) {
        match event {
            Event::Ready { name, vm, readiness } => self.on_ready(&name, vm, readiness),
            Event::Ended { name, vm, exit } => {
                if self.leaving.get(&name).is_some_and(|v| v.id == vm) {
                    let old = self.leaving.remove(&name);
                    let had_network = old.as_ref().is_some_and(|v| v.tap.is_some());
                    drop(old);
                    info!(UNIKERNEL = %name, "VM of a service no longer declared has ended");
                    return self.release(&name, had_network).await;
                }
                let Some(svc) = self.services.get_mut(&name) else {
                    return;
                };
                let Some(old) = svc.vm.take_if(|v| v.id == vm) else {
                    return;
                };
                let _ = svc.target.send(None);
                let ran = old.started.elapsed();
                let unrecorded = old.unrecorded.clone();
                let kept = (old.spec_hash.clone(), old.address, old.tap.clone());
                drop(old);
                self.state_dir.clear_record(&name);
                let saved = exit.ended == Ended::Exited(i32::from(ExitStatus::Saved.code()))
                    || (exit.ended == Ended::Unknown && self.wrote_snapshot(&name));
                let Some(svc) = self.services.get_mut(&name) else {
                    return;
                };
                if !svc.declared {
                    return self.remove(&name).await;
                }
                if saved && svc.state != State::Stopping {
                    return self.entered_standby(&name, kept).await;
                }
                if svc.standby.restored && svc.state == State::Booting {
                    // The snapshot did not come back: boot afresh; waiting connections
                    // wait for that instead.
                    let reason = exit.reason.unwrap_or_else(|| exit.ended.to_string());
                    error!(UNIKERNEL = %name, "the snapshot could not be restored ({reason}): booting from the image");
                    svc.last_error = Some(format!("snapshot not restored: {reason}"));
                    return self.start(&name).await;
                }
                if svc.state == State::Stopping {
                    if svc.held {
                        svc.set_state(State::Stopped);
                        info!(UNIKERNEL = %name, "stopped by an operator");
                        self.status_dirty = true;
                        return;
                    }
                    // We stopped it to replace or restart it.
                    return self.start(&name).await;
                }
                let reason = match (unrecorded, exit.reason) {
                    (Some(why), _) => why,
                    (None, Some(e)) => format!("{}: {e}", exit.ended),
                    (None, None) => exit.ended.to_string(),
                };
                warn!(UNIKERNEL = %name, "VM ended after {:.0} ms: {reason}", ran.as_secs_f64() * 1e3);
                self.after_end(&name, exit.ended, ran, reason);
            }
            Event::RetryDue { name, timer } => {
                let Some(svc) = self.services.get_mut(&name) else {
                    return;
                };
                if svc.timer != timer || svc.state != State::Backoff {
                    return;
                }
                svc.restarts += 1;
                self.start(&name).await;
            }
            Event::Wake { name } => self.wake(&name).await,
            Event::IdleDue { name, timer } => self.on_idle_due(&name, timer),
            Event::Saved { name, vm, result } => self.on_saved(&name, vm, result),
            Event::Liveness { name, vm, answered } => self.on_liveness(&name, vm, answered),
            Event::Relisten { name } => self.sync_listeners(&name),
            Event::KillDue { name, vm } => {
                let stopping = self.services.get(&name).and_then(|s| s.vm.as_ref());
                let leaving = self.leaving.get(&name);
                if let Some(v) = stopping.into_iter().chain(leaving).find(|v| v.id == vm) {
                    warn!(UNIKERNEL = %name, "VM pid {} did not stop in time: killing it", v.process.pid());
                    let _ = v.process.signal(Signal::Kill);
                }
            }
        }
    }

    fn on_ready(&mut self, name: &str, vm: u64, readiness: Readiness) {
        let Some(svc) = self.services.get_mut(name) else { return };
        if svc.state != State::Booting {
            return;
        }
        let Some(v) = svc.vm.as_mut().filter(|v| v.id == vm) else {
            return;
        };
        // An adopted VM booted under an earlier daemon (its boot time is in its record).
        let fresh = v.boot_ms.is_none();
        if fresh {
            v.boot_ms = Some(v.started.elapsed().as_secs_f64() * 1e3);
            let _ = self.state_dir.write_record(name, &v.record());
        }
        let (address, boot_ms) = (v.address, v.boot_ms.unwrap_or(0.0));
        // Where a start's time went: the host's part, then what the VMM says of its own.
        let phases = if fresh {
            let StartCost {
                network,
                ref network_steps,
                spawn,
                ref rest,
                daemon,
                daemon_cpu,
            } = v.setup;
            self.stats.host.observe(daemon.as_secs_f64());
            if v.process.pooled() {
                self.stats.pooled_starts += 1;
            }
            let vmm = v.process.start_phases().map(|p| format!("; in the VMM: {p}"));
            let line = readiness
                .first_line
                .map(|d| format!("; first console line at {:.2} ms", d.as_secs_f64() * 1e3));
            // From the edit's inotify event: the settle time and the reload come first.
            let change = v.noticed.map(|at| {
                let start = v.started.checked_sub(network + spawn).unwrap_or(v.started);
                format!(
                    "; {:.1} ms after the change was noticed, {:.2} ms of it before the start",
                    at.elapsed().as_secs_f64() * 1e3,
                    start.saturating_duration_since(at).as_secs_f64() * 1e3,
                )
            });
            let steps = v.process.spawn_steps().map(|s| format!(" ({s})"));
            format!(
                ": daemon {:.2} ms, daemon CPU {:.2} ms, network {:.2} ms{}, spawn {:.2} ms{}, {rest}{}{}{}",
                daemon.as_secs_f64() * 1e3,
                daemon_cpu.as_secs_f64() * 1e3,
                network.as_secs_f64() * 1e3,
                network_steps.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(),
                spawn.as_secs_f64() * 1e3,
                steps.unwrap_or_default(),
                vmm.unwrap_or_default(),
                line.unwrap_or_default(),
                change.unwrap_or_default()
            )
        } else {
            String::new()
        };
        svc.set_state(State::Running);
        let _ = svc.target.send(address);
        match svc.standby.waking_since.take() {
            Some(since) => {
                let ms = since.elapsed().as_secs_f64() * 1e3;
                svc.standby.wakes += 1;
                svc.standby.last_wake_ms = Some(ms);
                self.stats.wakes.observe(ms / 1e3);
                info!(UNIKERNEL = %name, "running (woken from standby in {ms:.1} ms{phases})");
            }
            None => {
                if fresh {
                    self.stats.boots.observe(boot_ms / 1e3);
                }
                info!(UNIKERNEL = %name, "running (booted in {boot_ms:.1} ms{phases})");
            }
        }
        self.status_dirty = true;
        self.after_ready(name);
    }

    /// A VM ended by itself (or never started): restart policy and back-off.
    fn after_end(&mut self, name: &str, ended: Ended, ran: Duration, reason: String) {
        let Some(svc) = self.services.get_mut(name) else { return };
        svc.last_error = Some(reason.clone());
        let decision = if ended == Ended::Exited(i32::from(ExitStatus::NoResources.code())) {
            // Nothing is wrong with the VM: the host is full. Not a crash loop; try again
            // until there is room (a steady second apart, never `failed`).
            svc.last_error = Some(format!(
                "{reason} (the host is out of resources; trying again every second)"
            ));
            Decision::Restart(NO_RESOURCES_RETRY)
        } else {
            backoff::decide(svc.spec.restart, ended, ran, &mut svc.quick_failures)
        };
        match decision {
            Decision::Restart(delay) => {
                svc.set_state(State::Backoff);
                svc.timer += 1;
                info!(UNIKERNEL = %name, "restarting in {} ms", delay.as_millis());
                let event = Event::RetryDue {
                    name: name.to_string(),
                    timer: svc.timer,
                };
                self.send_after(delay, event);
            }
            Decision::Stopped => {
                svc.set_state(State::Stopped);
                info!(UNIKERNEL = %name, "stopped ({reason}; restart {} does not restart it)", svc.spec.restart.as_str());
            }
            Decision::Failed => {
                svc.set_state(State::Failed);
                let lines = svc.console.tail(5);
                let mut msg = reason;
                if svc.quick_failures > backoff::BURST {
                    msg = format!("{msg}; ended {} times in a row soon after start", svc.quick_failures);
                }
                if !lines.is_empty() {
                    msg = format!("{msg}; last console lines: {}", lines.join(" | "));
                }
                error!(UNIKERNEL = %name, "failed: {msg}");
                svc.last_error = Some(msg);
            }
        }
        self.status_dirty = true;
    }

    /// What operator `Start` and `Restart` share: the service must still be declared; its
    /// hold and its count of quick failures are cleared.
    fn release_hold(&mut self, name: &str, what: &str) -> Result<&mut Service<L::Vm>, OperatorError> {
        let svc = self.services.get_mut(name).ok_or(OperatorError::NoSuchUnikernel)?;
        if !svc.declared {
            return Err(OperatorError::NotDeclared);
        }
        info!(UNIKERNEL = %name, "{what} requested by an operator");
        svc.held = false;
        svc.quick_failures = 0;
        Ok(svc)
    }

    /// Operator `Start`: clears a hold, and boots the service if no VM runs.
    pub async fn operator_start(&mut self, name: &str) -> Result<(), OperatorError> {
        let svc = self.release_hold(name, "start")?;
        match svc.state {
            State::Stopped | State::Failed | State::Backoff => self.start(name).await,
            State::Standby => self.wake(name).await,
            _ => {}
        }
        self.status_dirty = true;
        Ok(())
    }

    /// Operator `Stop`: ends the VM and holds the service stopped (see `Service::held`).
    pub fn operator_stop(&mut self, name: &str) -> Result<(), OperatorError> {
        let svc = self.services.get_mut(name).ok_or(OperatorError::NoSuchUnikernel)?;
        info!(UNIKERNEL = %name, "stop requested by an operator");
        svc.held = true;
        svc.timer += 1;
        if svc.vm.is_some() {
            self.stop_vm(name);
        } else {
            if svc.state == State::Standby {
                // Held stopped: its next start is a cold boot.
                svc.standby.snapshot_bytes = None;
                self.state_dir.clear_standby(name);
            }
            svc.set_state(State::Stopped);
        }
        self.status_dirty = true;
        Ok(())
    }

    /// Operator `Restart`: a fresh VM, whatever the state (clears a hold and a failure).
    pub async fn operator_restart(&mut self, name: &str) -> Result<(), OperatorError> {
        let svc = self.release_hold(name, "restart")?;
        svc.restarts += 1;
        if svc.vm.is_some() {
            if svc.state == State::Stopping {
                return Ok(()); // already on its way down; it starts again after
            }
            self.stop_vm(name);
        } else {
            self.start(name).await;
        }
        self.status_dirty = true;
        Ok(())
    }
}

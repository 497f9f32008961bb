//! One service as the controller holds it: the spec it converges to, its state, and the
//! VM instance that runs it (if any).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::decl::Spec;
use crate::plan::Observed;
use crate::proxy::Activity;
use crate::state_dir::VmRecord;
use crate::status::{State, Status};
use crate::supervise::console::ConsoleRing;

use super::host::VmProcess;

/// What a start cost the daemon, for its log line and the metrics.
#[derive(Clone, Debug, Default)]
pub struct StartCost {
    /// The tap and its wiring (or a kept tap opened again).
    pub network: std::time::Duration,
    /// Its steps, when a tap was set up.
    pub network_steps: Option<crate::steps::Steps>,
    /// The launcher's spawn: a warm-pool hand-off, or fork and exec.
    pub spawn: std::time::Duration,
    /// The rest of it: the state directory, the VM's record, its watchers.
    pub rest: crate::steps::Steps,
    /// All of the daemon's part: the network, the spawn and the rest.
    pub daemon: std::time::Duration,
    /// The CPU time the daemon's thread spent on it (wall time less what it waited for or
    /// lost to other processes).
    pub daemon_cpu: std::time::Duration,
}

/// One VM instance of a service.
pub struct Vm<P: VmProcess> {
    /// Unique in this daemon: events name the instance they are about, so a late event
    /// for a VM that was already replaced is ignored.
    pub id: u64,
    pub process: P,
    /// The spec hash it was started from.
    pub spec_hash: String,
    pub address: Option<Ipv4Addr>,
    pub tap: Option<String>,
    pub started: Instant,
    pub started_unix_ms: u64,
    pub boot_ms: Option<f64>,
    /// What its start cost the daemon (zero for an adopted VM).
    pub setup: StartCost,
    /// When the declaration change that started it was noticed, if one did.
    pub noticed: Option<Instant>,
    /// Exit watcher and readiness probe: they end with the VM (aborted on drop).
    pub tasks: Vec<JoinHandle<()>>,
    /// Why it was ended at once: its record could not be written.
    pub unrecorded: Option<String>,
    /// Liveness pings in a row it did not answer.
    pub unanswered: u32,
}

impl<P: VmProcess> Drop for Vm<P> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl<P: VmProcess> Vm<P> {
    pub fn record(&self) -> VmRecord {
        VmRecord {
            pid: self.process.pid(),
            start_ticks: self.process.start_ticks(),
            spec_hash: self.spec_hash.clone(),
            address: self.address,
            tap: self.tap.clone(),
            started_unix_ms: self.started_unix_ms,
            boot_ms: self.boot_ms,
        }
    }
}

pub struct Service<P: VmProcess> {
    /// The spec this service converges to (the running VM may still run an older one).
    pub spec: Spec,
    /// `spec.hash()`, kept because status and plans ask for it often.
    pub hash: String,
    /// Still declared; when false the service goes away as soon as its VM has ended.
    pub declared: bool,
    pub state: State,
    /// Every state entered since the last publish, in order (D-Bus replays them, so a
    /// subscriber sees booting -> running even when both fall between two publishes).
    pub transitions: Vec<State>,
    pub vm: Option<Vm<P>>,
    pub restarts: u32,
    pub quick_failures: u32,
    pub last_error: Option<String>,
    pub console: ConsoleRing,
    /// Generation of the pending restart timer: bumping it cancels the timer.
    pub timer: u64,
    /// Stopped by an operator (D-Bus `Stop`): stays stopped until `Start`, `Restart`, a
    /// change of its declaration, or a daemon restart (the flag is not persisted).
    pub held: bool,
    /// The guest address while running: what the host-port proxies connect to.
    pub target: watch::Sender<Option<Ipv4Addr>>,
    /// Host port -> (what its listener was opened with, the listener's task).
    pub listeners: BTreeMap<u16, (ListenerSpec, JoinHandle<()>)>,
    /// Traffic through its host ports (the idle clock of `standby`).
    pub activity: Arc<Activity>,
    pub standby: Standby,
    /// The status last published, shared by every snapshot since (see [`Service::published`]).
    published: Option<Arc<Status>>,
}

/// What a host-port listener was opened with: guest port, bind address, limits. A
/// listener whose spec changed is replaced.
pub type ListenerSpec = (u16, Ipv4Addr, crate::proxy::Limits);

/// Where a service with `standby` is in its sleep cycle, and what it cost.
#[derive(Debug, Default)]
pub struct Standby {
    /// A snapshot was asked for; the VM ends once it is written.
    pub saving: bool,
    /// The inode of the snapshot's state file when it was asked for (none: no file). A
    /// VMM adopted from an earlier daemon ends with no exit status we can read: a state
    /// file renamed into place since then is what says it saved. (Not its mtime: file
    /// times come from a coarse clock that can lag the request's timestamp.)
    pub state_before: Option<u64>,
    /// A connection arrived while saving: wake as soon as the snapshot is done.
    pub wake_pending: bool,
    /// When the wake of the VM that runs now was asked for (it was restored).
    pub waking_since: Option<Instant>,
    /// The running VM was resumed from the snapshot (not booted).
    pub restored: bool,
    /// Generation of the idle timer: bumping it cancels the pending check.
    pub idle_timer: u64,
    pub wakes: u64,
    /// Connection -> guest running again, of the last wake.
    pub last_wake_ms: Option<f64>,
    /// Guest memory in the snapshot, when it has one.
    pub snapshot_bytes: Option<u64>,
    pub last_save_ms: Option<u64>,
}

impl<P: VmProcess> Service<P> {
    pub fn new(spec: Spec) -> Self {
        Service {
            hash: spec.hash(),
            spec,
            declared: true,
            state: State::Pending,
            transitions: Vec::new(),
            vm: None,
            restarts: 0,
            quick_failures: 0,
            last_error: None,
            console: ConsoleRing::default(),
            timer: 0,
            held: false,
            target: watch::channel(None).0,
            listeners: BTreeMap::new(),
            activity: Arc::new(Activity::default()),
            standby: Standby::default(),
            published: None,
        }
    }

    pub fn set_state(&mut self, state: State) {
        if state != self.state {
            self.state = state;
            self.transitions.push(state);
        }
    }

    /// What the plan compares against: the spec of the VM that runs, else the declared
    /// one. The spec is cloned only when `desired` differs from it in some field.
    pub fn observed(&self, desired: Option<&Spec>) -> Observed {
        match &self.vm {
            Some(vm) if vm.spec_hash != self.hash => Observed {
                spec_hash: vm.spec_hash.clone(),
                spec: None,
            },
            _ => {
                let differs = desired.is_some_and(|d| d.hash() != self.hash || !d.same_live_fields(&self.spec));
                Observed {
                    spec_hash: self.hash.clone(),
                    spec: differs.then(|| self.spec.clone()),
                }
            }
        }
    }

    pub fn status(&self, name: &str) -> Status {
        Status {
            name: name.to_string(),
            state: self.state,
            pid: self.vm.as_ref().map(|v| v.process.pid()),
            address: self.vm.as_ref().and_then(|v| v.address),
            started_unix_ms: self.vm.as_ref().map(|v| v.started_unix_ms),
            boot_ms: self.vm.as_ref().and_then(|v| v.boot_ms),
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            source_file: self.spec.source.file.clone(),
            source_line: self.spec.source.line,
            spec_hash: self.hash.clone(),
            exposed: self.spec.exposed().map(|e| (e.host, e.guest)).collect(),
            memory_bytes: self.spec.memory_bytes,
            held: self.held,
            standby: self.spec.standby.map(|s| s.to_string()),
            wakes: self.standby.wakes,
            last_wake_ms: self.standby.last_wake_ms,
            snapshot_bytes: self.standby.snapshot_bytes,
            open_connections: self.activity.open() as u64,
        }
    }
}

impl<P: VmProcess> Service<P> {
    /// Its status for a snapshot: the one published last when nothing in it changed, so
    /// that a publish at 10,000 services allocates only for the services that did.
    pub fn published(&mut self, name: &str) -> Arc<Status> {
        match &self.published {
            Some(last) if self.status_is(name, last) => last.clone(),
            _ => self.published.insert(Arc::new(self.status(name))).clone(),
        }
    }

    /// Whether [`Service::status`] would be `s`, found without building it. Every field
    /// is named: a field added to `Status` does not compile here until it is compared.
    fn status_is(&self, name: &str, s: &Status) -> bool {
        let Status {
            name: s_name,
            state,
            pid,
            address,
            started_unix_ms,
            boot_ms,
            restarts,
            last_error,
            source_file,
            source_line,
            spec_hash,
            exposed,
            memory_bytes,
            held,
            standby,
            wakes,
            last_wake_ms,
            snapshot_bytes,
            open_connections,
        } = s;
        let vm = self.vm.as_ref();
        s_name == name
            && *state == self.state
            && *pid == vm.map(|v| v.process.pid())
            && *address == vm.and_then(|v| v.address)
            && *started_unix_ms == vm.map(|v| v.started_unix_ms)
            && *boot_ms == vm.and_then(|v| v.boot_ms)
            && *restarts == self.restarts
            && *last_error == self.last_error
            && *source_file == self.spec.source.file
            && *source_line == self.spec.source.line
            && *spec_hash == self.hash
            && exposed
                .iter()
                .copied()
                .eq(self.spec.exposed().map(|e| (e.host, e.guest)))
            && *memory_bytes == self.spec.memory_bytes
            && *held == self.held
            && match (standby, &self.spec.standby) {
                (Some(text), Some(spec)) => displays_as(spec, text),
                (None, None) => true,
                _ => false,
            }
            && *wakes == self.standby.wakes
            && *last_wake_ms == self.standby.last_wake_ms
            && *snapshot_bytes == self.standby.snapshot_bytes
            && *open_connections == self.activity.open() as u64
    }
}

/// Whether `value` displays as `text`, without formatting it into a string.
fn displays_as(value: &impl std::fmt::Display, text: &str) -> bool {
    struct Matcher<'a>(&'a str);
    impl std::fmt::Write for Matcher<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            match self.0.strip_prefix(s) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(())
                }
                None => Err(std::fmt::Error),
            }
        }
    }
    let mut m = Matcher(text);
    std::fmt::write(&mut m, format_args!("{value}")).is_ok() && m.0.is_empty()
}

impl<P: VmProcess> Drop for Service<P> {
    fn drop(&mut self) {
        for (_, task) in self.listeners.values() {
            task.abort();
        }
    }
}

//! The controller: declarations in, running VMs out. One task owns every service; the
//! helpers it spawns (exit watchers, readiness probes, timers) only send [`Event`]s back,
//! each naming the VM instance it is about, so a late event for a VM that was already
//! replaced is ignored. Decisions are level-triggered: an event or a reload marks what to
//! look at, and the controller compares the spec with what it observes (the VM, its
//! record, the tap and route, the host-port listeners) and repairs the difference.
//!
//! - `mod.rs` (here): the service map, reload -> plan -> apply, status.
//! - [`lifecycle`]: starting, stopping and supervising one service's VM; operator requests.
//! - [`adopt`]: taking over the VMs an earlier daemon left running.
//! - [`repair`]: the resync's check of the host against what was set up.
//! - [`standby`]: scale to zero: idle -> snapshot -> no process; a connection -> resume.
//! - [`host`]: the traits at the seams that touch the host.
pub mod adopt;
pub mod host;
pub mod lifecycle;
pub mod repair;
mod service;
pub mod standby;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::decl::{Loader, Spec};
use crate::plan::{plan, Action, Observed, Plan};
use crate::state_dir::StateDir;
use crate::status::{DeclarationError, Snapshot, State};
use crate::supervise::console::ConsoleRing;
use host::{Exit, HostNet, Launcher, VmProcess};
use service::{Service, Vm};

/// New services a plan starts at once; the rest of a mass apply is queued.
pub const INLINE_STARTS: usize = 32;
/// How long one batch of queued starts may hold the control loop.
const START_BATCH: Duration = Duration::from_millis(20);

/// A VMM asked to stop gets this long before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why an operator's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("no such unikernel")]
    NoSuchUnikernel,
    #[error("it is being removed (no longer declared)")]
    NotDeclared,
    #[error("it is not running (state {0})")]
    NotRunning(State),
    #[error("it is not on standby (state {0})")]
    NotOnStandby(State),
    #[error("it has no network: nothing could wake it again (use stop)")]
    NoNetwork,
}

/// The host-port limits a spec asks for, over the proxy's defaults.
fn proxy_limits(spec: &Spec) -> crate::proxy::Limits {
    let mut limits = crate::proxy::Limits::default();
    if let Some(c) = spec.net.as_ref().map(|n| n.connections) {
        if let Some(max) = c.max {
            limits.max_open = max as usize;
            limits.max_waiting = limits.max_waiting.min(max as usize);
        }
        if let Some(idle) = c.idle {
            limits.idle_timeout = idle;
        }
    }
    limits
}

/// Which files a reload reads.
enum Load<'a> {
    /// Those inotify named (and new ones).
    Changed(&'a HashSet<OsString>),
    /// Those whose stamp moved.
    Stamps,
    /// All of them.
    All,
}

/// What the helpers report.
#[derive(Debug)]
pub enum Event {
    Ended {
        name: String,
        vm: u64,
        exit: Exit,
    },
    Ready {
        name: String,
        vm: u64,
        readiness: host::Readiness,
    },
    RetryDue {
        name: String,
        timer: u64,
    },
    KillDue {
        name: String,
        vm: u64,
    },
    /// A connection is waiting at a host port of the service (it may be on standby).
    Wake {
        name: String,
    },
    /// Time to look whether a `standby` service has been idle long enough.
    IdleDue {
        name: String,
        timer: u64,
    },
    /// Open the host-port listeners of a service again (one it replaced was still closing).
    Relisten {
        name: String,
    },
    /// A liveness ping of a running VM's VMM came back (or did not).
    Liveness {
        name: String,
        vm: u64,
        answered: host::Liveness,
    },
    /// The VMM answered a snapshot request.
    Saved {
        name: String,
        vm: u64,
        result: Result<host::Saved, String>,
    },
}

pub struct Controller<L: Launcher, N: HostNet> {
    config_dir: PathBuf,
    loader: Loader,
    launcher: L,
    net: N,
    state_dir: StateDir,
    services: BTreeMap<String, Service<L::Vm>>,
    /// VMs an earlier daemon left running for services no longer declared: stopping,
    /// with no spec to supervise them by. Their host side is released when they end.
    leaving: BTreeMap<String, Vm<L::Vm>>,
    events: mpsc::UnboundedSender<Event>,
    next_vm: u64,
    /// Declaration errors in force.
    decl_errors: Vec<DeclarationError>,
    /// Which revision of the declarations is in force (`source`).
    source: crate::status::SourceStatus,
    /// Boot and wake times over the daemon's life (metrics).
    pub(super) stats: crate::metrics::Stats,
    /// What was last logged about the declarations, so a resync does not repeat it.
    last_reported: Vec<String>,
    /// New services whose start waits for the control loop's next turn: a plan starts
    /// its first [`INLINE_STARTS`] at once, and a mass apply the rest in short batches
    /// between which status is published and requests are answered.
    start_queue: std::collections::VecDeque<String>,
    inline_starts_left: usize,
    status_dirty: bool,
    /// status.json, written off the control loop (and before the lock goes).
    status_file: crate::status_file::StatusFile,
    /// While a reload that inotify prompted applies: when its first change was seen (the
    /// VMs it starts count their start from there, for the log).
    noticed: Option<tokio::time::Instant>,
    /// Turns for liveness pings (see [`repair::PINGS_AT_ONCE`]).
    pings: std::sync::Arc<tokio::sync::Semaphore>,
    /// When a liveness check that could not be made was last reported.
    unchecked_warned: Option<tokio::time::Instant>,
    /// Held for the daemon's life: one daemon per state directory.
    _lock: std::fs::File,
}

impl<L: Launcher, N: HostNet> Controller<L, N> {
    /// `lock`: the state directory, taken for this daemon alone ([`StateDir::lock`]).
    pub fn new(
        config_dir: PathBuf,
        state_dir: StateDir,
        lock: std::fs::File,
        launcher: L,
        net: N,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        // A file that fails to parse now keeps what it declared before the restart.
        let mut loader = Loader::default();
        loader.seed(&config_dir, state_dir.declarations());
        let status_file = crate::status_file::StatusFile::new(state_dir.status_file());
        Controller {
            config_dir,
            loader,
            launcher,
            net,
            state_dir,
            services: BTreeMap::new(),
            leaving: BTreeMap::new(),
            events,
            next_vm: 1,
            decl_errors: Vec::new(),
            source: Default::default(),
            stats: Default::default(),
            last_reported: Vec::new(),
            start_queue: Default::default(),
            inline_starts_left: 0,
            status_dirty: true,
            status_file,
            noticed: None,
            pings: std::sync::Arc::new(tokio::sync::Semaphore::new(repair::PINGS_AT_ONCE)),
            unchecked_warned: None,
            _lock: lock,
        }
    }

    pub fn config_dir(&self) -> &std::path::Path {
        &self.config_dir
    }

    pub fn state_dir(&self) -> &std::path::Path {
        self.state_dir.root()
    }

    /// An operator's reload (SIGHUP, D-Bus `Reload`): every file is read again, whatever
    /// its stamp says, and the plan applied. Returns the plan it applied.
    pub async fn reload(&mut self) -> Plan {
        self.reload_with(Load::All).await
    }

    /// A reload after inotify named the files that changed (by file name): the others are
    /// not even looked at (see [`Loader::load_changed`]). `noticed`: when the first of
    /// those changes was seen.
    pub async fn reload_changed(&mut self, changed: &HashSet<OsString>, noticed: tokio::time::Instant) -> Plan {
        self.noticed = Some(noticed);
        let plan = self.reload_with(Load::Changed(changed)).await;
        self.noticed = None;
        plan
    }

    /// Every file whose stamp moved is read again and the plan applied: what follows
    /// [`Controller::adopt`] at start (which has just read them all).
    pub async fn converge(&mut self) -> Plan {
        self.reload_with(Load::Stamps).await
    }

    /// The periodic resync: [`Controller::converge`], then the host is checked against
    /// what was set up for each service (see [`repair`]).
    pub async fn resync(&mut self) -> Plan {
        let plan = self.converge().await;
        self.repair().await;
        self.check_liveness();
        plan
    }

    async fn reload_with(&mut self, how: Load<'_>) -> Plan {
        let t0 = Instant::now();
        let loaded = match how {
            Load::Changed(c) => self.loader.load_changed(&self.config_dir, c),
            Load::Stamps => self.loader.load_dir(&self.config_dir),
            Load::All => self.loader.load_all(&self.config_dir),
        };
        self.keep_declarations(&loaded);
        let t_load = t0.elapsed();
        let lines: Vec<String> = loaded.diagnostics.iter().map(|d| d.one_line()).collect();
        if lines != self.last_reported {
            for (d, line) in loaded.diagnostics.iter().zip(&lines) {
                if d.is_error() {
                    error!("declaration: {line}");
                } else {
                    warn!("declaration: {line}");
                }
            }
            self.last_reported = lines;
        }
        let errors_before = self.decl_errors.len();
        self.decl_errors = loaded.errors().map(DeclarationError::from).collect();
        let plan = match (&how, &loaded.touched) {
            // inotify named the files: only their services can need anything.
            (Load::Changed(_), Some(touched)) => self.plan_touched(&loaded.specs, touched),
            // Level-triggered: every service against its declaration.
            _ => plan(&loaded.specs, &self.observed(&loaded.specs)),
        };
        let t_plan = t0.elapsed();
        self.inline_starts_left = INLINE_STARTS;
        for action in &plan.actions {
            match action {
                // The common case on a big host: nothing to do but follow a moved source.
                Action::Unchanged { name } => self.keep(name, &loaded.specs),
                other => self.apply(other.clone()).await,
            }
        }
        if !plan.is_noop() {
            info!(
                "{} (load {:.1} ms, plan {:.1} ms, apply {:.1} ms)",
                plan.to_string().lines().last().unwrap_or_default(),
                t_load.as_secs_f64() * 1e3,
                (t_plan - t_load).as_secs_f64() * 1e3,
                (t0.elapsed() - t_plan).as_secs_f64() * 1e3
            );
        }
        if !plan.is_noop() || errors_before != 0 || !self.decl_errors.is_empty() {
            self.status_dirty = true;
        }
        plan
    }

    async fn apply(&mut self, action: Action) {
        match action {
            Action::Create { spec } => {
                let name = spec.name.clone();
                info!(UNIKERNEL = %name, "create (declared at {})", spec.source);
                let mut svc = Service::new(spec);
                if let Some(old) = self.leaving.remove(&name) {
                    // Declared again while an adopted VM of that name is still ending:
                    // the new VM starts once the old one is gone (and its tap with it).
                    svc.vm = Some(old);
                    svc.set_state(State::Stopping);
                }
                let waiting = svc.vm.is_some();
                self.services.insert(name.clone(), svc);
                self.sync_listeners(&name);
                if !waiting {
                    if self.inline_starts_left > 0 {
                        self.inline_starts_left -= 1;
                        self.start(&name).await;
                    } else {
                        self.start_queue.push_back(name);
                    }
                }
            }
            Action::Replace { spec, changed } => {
                let name = spec.name.clone();
                let Some(svc) = self.services.get_mut(&name) else {
                    return;
                };
                info!(UNIKERNEL = %name, "replace: {} changed", changed.join(", "));
                svc.hash = spec.hash();
                svc.spec = spec;
                svc.declared = true;
                svc.quick_failures = 0;
                svc.held = false;
                let has_vm = svc.vm.is_some();
                self.sync_listeners(&name);
                if has_vm {
                    self.stop_vm(&name);
                } else {
                    self.start(&name).await;
                }
            }
            Action::Update { spec, changed } => {
                let name = spec.name.clone();
                let Some(svc) = self.services.get_mut(&name) else {
                    return;
                };
                info!(UNIKERNEL = %name, "update in place: {} changed (the VM keeps running)", changed.join(", "));
                if spec.limits != svc.spec.limits {
                    if let Some(vm) = &svc.vm {
                        vm.process.apply_limits(&spec.limits);
                    }
                }
                svc.spec = spec;
                svc.declared = true;
                self.sync_listeners(&name);
                self.standby_settings_changed(&name).await;
            }
            Action::Stop { name } => {
                let Some(svc) = self.services.get_mut(&name) else {
                    return;
                };
                if svc.declared {
                    info!(UNIKERNEL = %name, "stop: no longer declared");
                }
                svc.declared = false;
                if svc.vm.is_some() {
                    self.stop_vm(&name);
                } else {
                    self.remove(&name).await;
                }
            }
            Action::Unchanged { .. } => {}
        }
        self.status_dirty = true;
    }

    /// Keeps each file's last good content in the state directory (for the next daemon).
    fn keep_declarations(&self, loaded: &crate::decl::Loaded) {
        for (path, text) in &loaded.accepted {
            if let Some(name) = path.file_name() {
                if let Err(e) = self.state_dir.save_declaration(name, text) {
                    warn!(
                        "cannot keep the last good {} in the state directory: {e}",
                        path.display()
                    );
                }
            }
        }
        for path in &loaded.gone {
            if let Some(name) = path.file_name() {
                self.state_dir.remove_declaration(name);
            }
        }
    }

    /// An unchanged service: same spec, but its declaration may have moved (file, line),
    /// or come back while its VM was stopping.
    fn keep(&mut self, name: &str, desired: &BTreeMap<String, Spec>) {
        let Some(svc) = self.services.get_mut(name) else { return };
        if let Some(spec) = desired.get(name) {
            if svc.spec.source != spec.source {
                svc.spec.source = spec.source.clone();
                self.status_dirty = true;
            }
        }
        if !svc.declared {
            info!(UNIKERNEL = %name, "declared again");
            svc.declared = true;
            self.status_dirty = true;
        }
    }

    /// Opens the host-port listeners the spec asks for and closes the others.
    pub(super) fn sync_listeners(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else { return };
        let limits = proxy_limits(&svc.spec);
        let wanted: BTreeMap<u16, service::ListenerSpec> = svc
            .spec
            .exposed()
            .map(|e| (e.host, (e.guest, e.bind, limits)))
            .collect();
        let mut closed = Vec::new();
        svc.listeners.retain(|host, (guest, task)| {
            let keep = wanted.get(host) == Some(guest);
            if !keep {
                task.abort();
                closed.push(*host);
            }
            keep
        });
        for (host, (guest, bind, limits)) in wanted {
            if svc.listeners.contains_key(&host) {
                continue;
            }
            let events = self.events.clone();
            let waker = name.to_string();
            let gate = crate::proxy::Gate {
                target: svc.target.subscribe(),
                activity: svc.activity.clone(),
                wake: std::sync::Arc::new(move || {
                    let _ = events.send(Event::Wake { name: waker.clone() });
                }),
                limits,
            };
            match self
                .net
                .listen(name, std::net::SocketAddrV4::new(bind, host), guest, gate)
            {
                Ok(task) => {
                    svc.listeners.insert(host, ((guest, bind, limits), task));
                    let bind_error = format!("cannot listen on host port {host}: ");
                    if svc.last_error.as_ref().is_some_and(|e| e.starts_with(&bind_error)) {
                        info!(UNIKERNEL = %name, "listening on host port {host} now");
                        svc.last_error = None;
                        self.status_dirty = true;
                    }
                }
                Err(e) if closed.contains(&host) && e.kind() == std::io::ErrorKind::AddrInUse => {
                    // The listener it replaces closes when its task is next polled: try
                    // again in a moment rather than at the next resync.
                    let tx = self.events.clone();
                    let name = name.to_string();
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        let _ = tx.send(Event::Relisten { name });
                    });
                }
                Err(e) => {
                    let msg = format!("cannot listen on host port {host}: {e}");
                    if svc.last_error.as_ref() != Some(&msg) {
                        warn!(UNIKERNEL = %name, "{msg} (tried again at every resync)");
                        svc.last_error = Some(msg);
                        self.status_dirty = true;
                    }
                }
            }
        }
    }

    /// The plan for the services named in `touched` alone: what a reload of a few files
    /// costs on a host of thousands of services.
    fn plan_touched(&self, desired: &BTreeMap<String, Spec>, touched: &BTreeSet<String>) -> Plan {
        let desired: BTreeMap<String, Spec> = touched
            .iter()
            .filter_map(|n| desired.get(n).map(|s| (n.clone(), s.clone())))
            .collect();
        let observed: BTreeMap<String, Observed> = touched
            .iter()
            .filter_map(|n| self.services.get(n).map(|s| (n.clone(), s.observed(desired.get(n)))))
            .collect();
        plan(&desired, &observed)
    }

    fn observed(&self, desired: &BTreeMap<String, Spec>) -> BTreeMap<String, Observed> {
        self.services
            .iter()
            .map(|(k, s)| (k.clone(), s.observed(desired.get(k))))
            .collect()
    }

    /// What a dry plan needs: the config directory and what is observed now. The caller
    /// loads the files and plans off the control task (`Plan()` is open to every user).
    pub fn plan_input(&self) -> (PathBuf, BTreeMap<String, Observed>) {
        let observed = self
            .services
            .iter()
            .map(|(k, s)| {
                let o = s.observed(None);
                let spec = o.spec.or_else(|| (o.spec_hash == s.hash).then(|| s.spec.clone()));
                (k.clone(), Observed { spec, ..o })
            })
            .collect();
        (self.config_dir.clone(), observed)
    }

    /// The states each service went through since the last call, in order.
    pub fn take_transitions(&mut self) -> Vec<(String, Vec<State>)> {
        self.services
            .iter_mut()
            .filter(|(_, s)| !s.transitions.is_empty())
            .map(|(k, s)| (k.clone(), std::mem::take(&mut s.transitions)))
            .collect()
    }

    /// A service's console ring (shared: the caller reads it as lines come in).
    pub fn console(&self, name: &str) -> Option<ConsoleRing> {
        self.services.get(name).map(|s| s.console.clone())
    }

    /// The status now, built afresh (publishing reuses what did not change).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_of(self.services.iter().map(|(k, s)| Arc::new(s.status(k))).collect())
    }

    fn snapshot_of(&self, services: Vec<Arc<crate::status::Status>>) -> Snapshot {
        Snapshot {
            services,
            declaration_errors: self.decl_errors.clone(),
            source: self.source.clone(),
        }
    }

    /// Whether new services wait for [`Controller::start_queued`].
    pub fn has_queued_starts(&self) -> bool {
        !self.start_queue.is_empty()
    }

    /// Starts queued new services for up to [`START_BATCH`], then returns to the loop. A
    /// service that changed meanwhile (removed, replaced, held, already started) is
    /// skipped: the queue only ever starts what is still pending.
    pub async fn start_queued(&mut self) {
        let t0 = Instant::now();
        let mut started = 0;
        while let Some(name) = self.start_queue.pop_front() {
            let pending = self
                .services
                .get(&name)
                .is_some_and(|s| s.state == State::Pending && s.vm.is_none() && s.declared && !s.held);
            if pending {
                self.start(&name).await;
                started += 1;
            }
            if t0.elapsed() >= START_BATCH {
                break;
            }
        }
        if started > 0 {
            self.status_dirty = true;
        }
        if self.start_queue.is_empty() && started > 0 {
            info!("queued starts done");
        }
    }

    /// Where the declarations in force come from (see [`crate::source`]).
    pub fn set_source(&mut self, source: crate::status::SourceStatus) {
        if source != self.source {
            self.source = source;
            self.status_dirty = true;
        }
    }

    pub fn source(&self) -> &crate::status::SourceStatus {
        &self.source
    }

    /// As the daemon ends (its VMs run on): how far it read each running VM's console,
    /// for the next daemon's journal.
    pub fn leave_console_read_to(&mut self) {
        self.launcher.read_consoles();
        let read_to: BTreeMap<String, crate::state_dir::ConsoleReadTo> = self
            .services
            .iter()
            .filter_map(|(name, svc)| {
                let vm = svc.vm.as_ref()?;
                let offset = vm.process.console_read_to()?;
                let process = &vm.process;
                Some((
                    name.clone(),
                    crate::state_dir::ConsoleReadTo {
                        pid: process.pid(),
                        start_ticks: process.start_ticks(),
                        offset,
                    },
                ))
            })
            .collect();
        if let Err(e) = self.state_dir.write_console_read_to(&read_to) {
            warn!("cannot save how far the consoles were read ({e}): the next daemon logs none of what the guests write meanwhile");
        }
    }

    pub fn stats(&self) -> &crate::metrics::Stats {
        &self.stats
    }

    /// The warm pool, for the metrics endpoint (read when scraped, not when published).
    pub fn pool_gauge(&self) -> Option<crate::supervise::warm::PoolGauge> {
        self.launcher.pool_gauge()
    }

    /// Whether the status changed since it was last published.
    pub fn is_dirty(&self) -> bool {
        self.status_dirty
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Writes `status.json` (on its own thread) and the sd_notify status line, if anything
    /// changed; returns the new status then.
    pub fn publish(&mut self) -> Option<Arc<Snapshot>> {
        if !self.status_dirty {
            return None;
        }
        self.status_dirty = false;
        let services = self.services.iter_mut().map(|(k, s)| s.published(k)).collect();
        let snap = Arc::new(self.snapshot_of(services));
        crate::systemd::status(&snap.summary());
        self.status_file.write(snap.clone());
        Some(snap)
    }

    /// Waits until the last published status is in `status.json` (what a `sync` promises).
    pub fn flush_status(&self) {
        self.status_file.flush();
    }
}

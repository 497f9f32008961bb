//! The control loop: declarations in, running VMs out. One task owns every service; the
//! helpers it spawns (process watchers, readiness probes, consoles, timers) only send
//! events back, each naming the VM instance it is about, so a late event for a VM that
//! was already replaced is ignored. Every decision is taken from the current state
//! (level-triggered), so a reload, a crash or a timer can arrive in any order.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::decl::{Loader, Spec};
use crate::net::HostNetwork;
use crate::plan::{plan, Action, Observed, Plan};
use crate::state_dir::{write_atomic, StateDir, VmRecord};
use crate::status::{DeclarationError, Snapshot, State, Status};
use crate::supervise::backoff::{self, Decision};
use crate::supervise::console::{self, ConsoleRing};
use crate::supervise::probe;
use crate::supervise::process::{Ended, Launch, Process};

/// A VMM asked to stop gets this long before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why an operator's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("no such unikernel")]
    NoSuchUnikernel,
    #[error("it is being removed (no longer declared)")]
    NotDeclared,
}

/// Settings of one daemon.
#[derive(Clone, Debug)]
pub struct Options {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The `unikernel-vmm` binary.
    pub vmm: PathBuf,
    /// Full reload this often, whatever inotify said.
    pub resync_every: Duration,
}

/// What the helpers report.
#[derive(Debug)]
pub enum Event {
    Ended { name: String, vm: u64, ended: Ended },
    Ready { name: String, vm: u64 },
    RetryDue { name: String, retry: u64 },
    KillDue { name: String, vm: u64 },
}

/// One VM instance of a service.
struct Vm {
    id: u64,
    process: Process,
    spec_hash: String,
    address: Option<Ipv4Addr>,
    tap: Option<String>,
    started: Instant,
    started_unix_ms: u64,
    boot_ms: Option<f64>,
    /// Watcher and probe: they end with the VM (aborted on drop).
    tasks: Vec<JoinHandle<()>>,
    /// The console follower, which ends by itself at the console's EOF.
    console: Option<JoinHandle<()>>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.console) {
            t.abort();
        }
    }
}

impl Vm {
    fn record(&self) -> VmRecord {
        VmRecord {
            pid: self.process.pid,
            start_ticks: self.process.start_ticks,
            spec_hash: self.spec_hash.clone(),
            address: self.address,
            tap: self.tap.clone(),
            started_unix_ms: self.started_unix_ms,
            boot_ms: self.boot_ms,
        }
    }
}

struct Service {
    /// The spec this service converges to (the running VM may still run an older one).
    spec: Spec,
    /// `spec.hash()`, kept because status and plans ask for it often.
    hash: String,
    /// Still declared; when false the service goes away as soon as its VM has ended.
    declared: bool,
    state: State,
    /// Every state entered since the last publish, in order (D-Bus replays them, so a
    /// subscriber sees booting -> running even when both fall between two publishes).
    transitions: Vec<State>,
    vm: Option<Vm>,
    restarts: u32,
    quick_failures: u32,
    last_error: Option<String>,
    console: ConsoleRing,
    /// Bumped to cancel a pending restart timer.
    retry: u64,
    /// Stopped by an operator (D-Bus `Stop`): stays stopped until `Start`, `Restart`, a
    /// change of its declaration, or a daemon restart (the flag is not persisted).
    held: bool,
    /// The guest address while running: what the host-port proxies connect to.
    target: watch::Sender<Option<Ipv4Addr>>,
    /// Host port -> (guest port, listener task).
    proxies: BTreeMap<u16, (u16, JoinHandle<()>)>,
}

impl Service {
    fn new(spec: Spec) -> Service {
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
            retry: 0,
            held: false,
            target: watch::channel(None).0,
            proxies: BTreeMap::new(),
        }
    }

    fn set_state(&mut self, state: State) {
        if state != self.state {
            self.state = state;
            self.transitions.push(state);
        }
    }

    /// What the plan compares against: the spec of the VM that runs, else the declared
    /// one. The spec itself only matters for a replace (to name what changed), so it is
    /// cloned only when `desired` differs from it.
    fn observed(&self, desired: Option<&Spec>) -> Observed {
        match &self.vm {
            Some(vm) if vm.spec_hash != self.hash => Observed {
                spec_hash: vm.spec_hash.clone(),
                spec: None,
            },
            _ => Observed {
                spec_hash: self.hash.clone(),
                spec: desired
                    .is_some_and(|d| d.hash() != self.hash)
                    .then(|| self.spec.clone()),
            },
        }
    }

    /// Opens the host-port listeners the spec asks for and closes the others.
    fn sync_proxies(&mut self, name: &str) {
        let wanted: BTreeMap<u16, u16> = self
            .spec
            .net
            .iter()
            .flat_map(|n| &n.expose)
            .map(|e| (e.host, e.guest))
            .collect();
        self.proxies.retain(|host, (guest, task)| {
            let keep = wanted.get(host) == Some(guest);
            if !keep {
                task.abort();
            }
            keep
        });
        for (host, guest) in wanted {
            if self.proxies.contains_key(&host) {
                continue;
            }
            match crate::proxy::listen(name, host, guest, self.target.subscribe()) {
                Ok(task) => {
                    self.proxies.insert(host, (guest, task));
                }
                Err(e) => {
                    let msg = format!("cannot listen on host port {host}: {e}");
                    warn!(UNIKERNEL = %name, "{msg}");
                    self.last_error = Some(msg);
                }
            }
        }
    }

    fn status(&self, name: &str) -> Status {
        Status {
            name: name.to_string(),
            state: self.state,
            pid: self.vm.as_ref().map(|v| v.process.pid),
            address: self.vm.as_ref().and_then(|v| v.address),
            started_unix_ms: self.vm.as_ref().map(|v| v.started_unix_ms),
            boot_ms: self.vm.as_ref().and_then(|v| v.boot_ms),
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            source_file: self.spec.source.file.clone(),
            source_line: self.spec.source.line,
            spec_hash: self.hash.clone(),
            exposed: self
                .spec
                .net
                .iter()
                .flat_map(|n| &n.expose)
                .map(|e| (e.host, e.guest))
                .collect(),
            memory_bytes: self.spec.memory_bytes,
            held: self.held,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for (_, task) in self.proxies.values() {
            task.abort();
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The VMM's own explanation of why it stopped (its last `error:` line), if any.
fn vmm_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("unikernel-vmm: error: "))
        .map(str::to_string)
}

pub struct Engine {
    opts: Options,
    loader: Loader,
    net: HostNetwork,
    state: StateDir,
    services: BTreeMap<String, Service>,
    events: mpsc::UnboundedSender<Event>,
    next_vm: u64,
    /// Declaration errors in force.
    decl_errors: Vec<DeclarationError>,
    /// What was last logged about the declarations, so a resync does not repeat it.
    last_reported: Vec<String>,
    status_dirty: bool,
    /// Held for the daemon's life: one daemon per state directory.
    _lock: std::fs::File,
}

impl Engine {
    pub fn new(opts: Options, net: HostNetwork, events: mpsc::UnboundedSender<Event>) -> std::io::Result<Engine> {
        let state = StateDir::new(&opts.state_dir)?;
        let lock = state.lock()?;
        Ok(Engine {
            opts,
            loader: Loader::default(),
            net,
            state,
            services: BTreeMap::new(),
            events,
            next_vm: 1,
            decl_errors: Vec::new(),
            last_reported: Vec::new(),
            status_dirty: true,
            _lock: lock,
        })
    }

    /// Takes over the VMs an earlier daemon left running: those still declared with the
    /// same spec keep running untouched; the others are replaced or stopped by the first
    /// reconcile. Call once, before the first [`Engine::reload`].
    pub async fn adopt(&mut self) {
        let desired = self.loader.load_dir(&self.opts.config_dir).specs;
        for (name, record) in self.state.records() {
            let Some(process) = Process::adopt(record.pid, record.start_ticks) else {
                info!(UNIKERNEL = %name, "recorded VM (pid {}) is gone", record.pid);
                self.state.clear_record(&name);
                if !desired.contains_key(&name) {
                    self.release(&name, record.tap.is_some()).await;
                }
                continue;
            };
            if let (Some(tap), Some(address)) = (&record.tap, record.address) {
                if let Err(e) = self.net.adopt(&name, tap, address) {
                    warn!(UNIKERNEL = %name, "cannot take over its address: {e}");
                }
            }
            let Some(spec) = desired.get(&name).cloned() else {
                // No longer declared: stop it now; there is no spec to supervise it by.
                info!(UNIKERNEL = %name, "stopping VM pid {} (no longer declared)", process.pid);
                let _ = process.signal(libc::SIGTERM);
                if tokio::time::timeout(STOP_GRACE, process.wait()).await.is_err() {
                    let _ = process.signal(libc::SIGKILL);
                }
                self.release(&name, record.tap.is_some()).await;
                continue;
            };
            info!(UNIKERNEL = %name, "adopted VM pid {}", process.pid);
            let id = self.next_vm;
            self.next_vm += 1;
            let mut svc = Service::new(spec);
            svc.set_state(State::Booting);
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
                console: None,
            };
            self.watch_vm(&name, &svc, &mut vm, false);
            svc.vm = Some(vm);
            svc.sync_proxies(&name);
            self.services.insert(name, svc);
        }
        // Folders of services that no record explains (removed while no daemon ran).
        for name in self.state.service_names() {
            if !self.services.contains_key(&name) && !desired.contains_key(&name) {
                self.state.remove(&name);
            }
        }
    }

    /// Loads the declarations and applies the plan. Returns the plan it applied.
    pub async fn reload(&mut self) -> Plan {
        self.reload_with(None).await
    }

    /// A reload after inotify named the files that changed (by file name): the others are
    /// not even looked at (see [`Loader::load_changed`]).
    pub async fn reload_changed(&mut self, changed: &std::collections::HashSet<std::ffi::OsString>) -> Plan {
        self.reload_with(Some(changed)).await
    }

    async fn reload_with(&mut self, changed: Option<&std::collections::HashSet<std::ffi::OsString>>) -> Plan {
        let t0 = Instant::now();
        let loaded = match changed {
            Some(c) => self.loader.load_changed(&self.opts.config_dir, c),
            None => self.loader.load_dir(&self.opts.config_dir),
        };
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
        self.decl_errors = loaded
            .errors()
            .map(|d| DeclarationError {
                file: d.file.clone(),
                line: d.line,
                column: d.column,
                message: d.message.clone(),
                help: d.help.clone(),
            })
            .collect();
        let observed = self.observed(&loaded.specs);
        let plan = plan(&loaded.specs, &observed);
        let t_plan = t0.elapsed();
        for action in &plan.actions {
            match action {
                // The common case on a big host: nothing to do but follow a moved source.
                Action::Unchanged { name } => self.keep(name, &loaded.specs),
                other => self.apply(other.clone(), &loaded.specs).await,
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

    async fn apply(&mut self, action: Action, desired: &BTreeMap<String, Spec>) {
        match action {
            Action::Create { spec } => {
                let name = spec.name.clone();
                info!(UNIKERNEL = %name, "create (declared at {})", spec.source);
                let mut svc = Service::new(spec);
                svc.sync_proxies(&name);
                self.services.insert(name.clone(), svc);
                self.start(&name).await;
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
                svc.sync_proxies(&name);
                if svc.vm.is_some() {
                    self.stop_vm(&name);
                } else {
                    self.start(&name).await;
                }
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
            Action::Unchanged { name } => self.keep(&name, desired),
        }
        self.status_dirty = true;
    }

    /// An unchanged service: same hash, but its declaration may have moved (file, line),
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

    /// Boots a new VM for `name`.
    async fn start(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else { return };
        let t0 = Instant::now();
        svc.retry += 1;
        svc.set_state(State::Booting);
        let spec = svc.spec.clone();
        let attachment = match &spec.net {
            Some(net) => match self.net.attach(name, net.address).await {
                Ok(a) => Some(a),
                Err(e) => return self.start_failed(name, format!("network: {e}")),
            },
            None => None,
        };
        let t_net = t0.elapsed();
        if let Err(e) = self.state.prepare(name) {
            return self.start_failed(name, format!("state directory: {e}"));
        }
        let stderr = match std::fs::File::create(self.state.vmm_log(name)) {
            Ok(f) => f,
            Err(e) => return self.start_failed(name, format!("state directory: {e}")),
        };
        let mut cmdline = spec.full_cmdline();
        if let Some(a) = &attachment {
            cmdline = format!("{cmdline} {}", a.guest_cmdline()).trim().to_string();
        }
        let mut args = vec![
            "--kernel".to_string(),
            spec.image.display().to_string(),
            "--memory".into(),
            spec.memory_bytes.to_string(),
            "--vcpus".into(),
            spec.vcpus.to_string(),
            "--cmdline".into(),
            cmdline,
            "--console".into(),
            format!("unix:{}", self.state.console_socket(name).display()),
        ];
        if let Some(initrd) = &spec.initrd {
            args.extend(["--initrd".into(), initrd.display().to_string()]);
        }
        if let Some(a) = &attachment {
            args.extend(["--mac".into(), crate::net::mac::format(&a.mac)]);
        }
        // The daemon's copy of the tap fd goes with `launch`: the VMM holds the only one.
        let (net, tap) = match attachment {
            Some(a) => (Some((a.address, a.tap_name)), Some(a.tap_fd)),
            None => (None, None),
        };
        let launch = Launch {
            vmm: self.opts.vmm.clone(),
            args,
            tap,
            stderr,
        };
        let process = match Process::spawn(launch) {
            Ok(p) => p,
            Err(e) => return self.start_failed(name, format!("cannot run {}: {e}", self.opts.vmm.display())),
        };
        let id = self.next_vm;
        self.next_vm += 1;
        let mut vm = Vm {
            id,
            process,
            spec_hash: spec.hash(),
            address: net.as_ref().map(|n| n.0),
            tap: net.map(|n| n.1),
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            boot_ms: None,
            tasks: Vec::new(),
            console: None,
        };
        if let Err(e) = self.state.write_record(name, &vm.record()) {
            warn!(UNIKERNEL = %name, "cannot record the VM (a daemon restart would not adopt it): {e}");
        }
        info!(
            UNIKERNEL = %name,
            "booting VM pid {} (network {:.1} ms, spawn {:.1} ms)",
            vm.process.pid,
            t_net.as_secs_f64() * 1e3,
            (t0.elapsed() - t_net).as_secs_f64() * 1e3
        );
        let svc = &self.services[name];
        self.watch_vm(name, svc, &mut vm, true);
        self.services.get_mut(name).expect("present").vm = Some(vm);
        self.status_dirty = true;
    }

    /// A start that failed before any VM ran counts like a VM that ended at once.
    fn start_failed(&mut self, name: &str, reason: String) {
        error!(UNIKERNEL = %name, "cannot start: {reason}");
        self.after_end(name, Ended::Exited(3), Duration::ZERO, reason);
    }

    /// Spawns the helpers of a VM: exit watcher, console follower, readiness probe.
    fn watch_vm(&self, name: &str, svc: &Service, vm: &mut Vm, fresh: bool) {
        let tx = self.events.clone();
        let wait = vm.process.wait();
        let (n, id) = (name.to_string(), vm.id);
        vm.tasks.push(tokio::spawn(async move {
            let ended = wait.await.unwrap_or(Ended::Unknown);
            let _ = tx.send(Event::Ended { name: n, vm: id, ended });
        }));
        let (first_line_tx, first_line_rx) = oneshot::channel();
        let socket = self.state.console_socket(name);
        let ring = svc.console.clone();
        let n = name.to_string();
        vm.console = Some(tokio::spawn(console::follow(
            n,
            socket,
            ring,
            fresh,
            Some(first_line_tx),
        )));
        let tx = self.events.clone();
        let n = name.to_string();
        let port = svc
            .spec
            .net
            .as_ref()
            .and_then(|net| net.expose.first())
            .map(|e| e.guest);
        let probe_at = vm.address.zip(port).map(|(a, p)| SocketAddrV4::new(a, p));
        vm.tasks.push(tokio::spawn(async move {
            match probe_at {
                Some(addr) => {
                    // Probing before the guest is up only queues SYNs it must answer
                    // later: start at its first console line (a hint, not the proof), or
                    // after a moment for guests that print nothing.
                    let _ = tokio::time::timeout(Duration::from_millis(50), first_line_rx).await;
                    probe::until_accepts(addr).await
                }
                None => {
                    // No port to try: the guest's first console line is its readiness line.
                    if first_line_rx.await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Event::Ready { name: n, vm: id });
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
    fn stop_vm(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else { return };
        if svc.vm.is_none() || svc.state == State::Stopping {
            return;
        }
        svc.set_state(State::Stopping);
        let vm = svc.vm.as_ref().expect("checked");
        let _ = svc.target.send(None);
        if let Err(e) = vm.process.signal(libc::SIGTERM) {
            warn!(UNIKERNEL = %name, "cannot signal VM pid {}: {e}", vm.process.pid);
        }
        let event = Event::KillDue {
            name: name.to_string(),
            vm: vm.id,
        };
        self.send_after(STOP_GRACE, event);
        self.status_dirty = true;
    }

    /// Forgets a service whose VM has ended: tap, address, state folder, listeners.
    async fn remove(&mut self, name: &str) {
        let Some(svc) = self.services.remove(name) else { return };
        let had_network = svc.spec.net.is_some();
        drop(svc); // its listeners close
        self.release(name, had_network).await;
        info!(UNIKERNEL = %name, "removed");
        self.status_dirty = true;
    }

    /// The host side of a service that is gone: its tap and address (when it had a
    /// network) and its state folder.
    async fn release(&mut self, name: &str, had_network: bool) {
        if had_network {
            if let Err(e) = self.net.detach(name).await {
                warn!(UNIKERNEL = %name, "cannot remove its tap: {e}");
            }
        }
        self.state.remove(name);
    }

    pub async fn handle(&mut self, event: Event) {
        match event {
            Event::Ready { name, vm } => {
                let Some(svc) = self.services.get_mut(&name) else {
                    return;
                };
                if svc.vm.as_ref().map(|v| v.id) != Some(vm) || svc.state != State::Booting {
                    return;
                }
                svc.set_state(State::Running);
                let v = svc.vm.as_mut().expect("checked");
                if v.boot_ms.is_none() {
                    v.boot_ms = Some(v.started.elapsed().as_secs_f64() * 1e3);
                    let _ = self.state.write_record(&name, &v.record());
                }
                let _ = svc.target.send(v.address);
                info!(UNIKERNEL = %name, "running (booted in {:.1} ms)", v.boot_ms.unwrap_or(0.0));
                self.status_dirty = true;
            }
            Event::Ended { name, vm, ended } => {
                let Some(svc) = self.services.get_mut(&name) else {
                    return;
                };
                if svc.vm.as_ref().map(|v| v.id) != Some(vm) {
                    return;
                }
                let mut old = svc.vm.take().expect("checked");
                let _ = svc.target.send(None);
                let ran = old.started.elapsed();
                // The guest's last words are what status shows for a crash: let the
                // follower read them to the console's end (the VMM is gone, so it ends).
                if let Some(console) = old.console.take() {
                    let _ = tokio::time::timeout(Duration::from_millis(200), console).await;
                }
                drop(old);
                self.state.clear_record(&name);
                let svc = self.services.get_mut(&name).expect("present");
                if !svc.declared {
                    return self.remove(&name).await;
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
                let reason = match vmm_error(&self.state.vmm_log(&name)) {
                    Some(e) => format!("{ended}: {e}"),
                    None => ended.to_string(),
                };
                warn!(UNIKERNEL = %name, "VM ended after {:.0} ms: {reason}", ran.as_secs_f64() * 1e3);
                self.after_end(&name, ended, ran, reason);
            }
            Event::RetryDue { name, retry } => {
                let Some(svc) = self.services.get(&name) else { return };
                if svc.retry != retry || svc.state != State::Backoff {
                    return;
                }
                self.services.get_mut(&name).expect("present").restarts += 1;
                self.start(&name).await;
            }
            Event::KillDue { name, vm } => {
                let Some(svc) = self.services.get(&name) else { return };
                if let Some(v) = svc.vm.as_ref().filter(|v| v.id == vm) {
                    warn!(UNIKERNEL = %name, "VM pid {} did not stop in time: killing it", v.process.pid);
                    let _ = v.process.signal(libc::SIGKILL);
                }
            }
        }
    }

    /// A VM ended by itself (or never started): restart policy and back-off.
    fn after_end(&mut self, name: &str, ended: Ended, ran: Duration, reason: String) {
        let Some(svc) = self.services.get_mut(name) else { return };
        svc.last_error = Some(reason.clone());
        match backoff::decide(svc.spec.restart, ended, ran, &mut svc.quick_failures) {
            Decision::Restart(delay) => {
                svc.set_state(State::Backoff);
                svc.retry += 1;
                info!(UNIKERNEL = %name, "restarting in {} ms", delay.as_millis());
                let event = Event::RetryDue {
                    name: name.to_string(),
                    retry: svc.retry,
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

    /// Operator `Start`: clears a hold, and boots the service if no VM runs.
    pub async fn operator_start(&mut self, name: &str) -> Result<(), OperatorError> {
        let svc = self.services.get_mut(name).ok_or(OperatorError::NoSuchUnikernel)?;
        if !svc.declared {
            return Err(OperatorError::NotDeclared);
        }
        info!(UNIKERNEL = %name, "start requested by an operator");
        svc.held = false;
        svc.quick_failures = 0;
        match svc.state {
            State::Stopped | State::Failed | State::Backoff => self.start(name).await,
            _ => {}
        }
        self.status_dirty = true;
        Ok(())
    }

    /// Operator `Stop`: ends the VM and holds the service stopped (see [`Service::held`]).
    pub fn operator_stop(&mut self, name: &str) -> Result<(), OperatorError> {
        let svc = self.services.get_mut(name).ok_or(OperatorError::NoSuchUnikernel)?;
        info!(UNIKERNEL = %name, "stop requested by an operator");
        svc.held = true;
        svc.retry += 1;
        if svc.vm.is_some() {
            self.stop_vm(name);
        } else {
            svc.set_state(State::Stopped);
        }
        self.status_dirty = true;
        Ok(())
    }

    /// Operator `Restart`: a fresh VM, whatever the state (clears a hold and a failure).
    pub async fn operator_restart(&mut self, name: &str) -> Result<(), OperatorError> {
        let svc = self.services.get_mut(name).ok_or(OperatorError::NoSuchUnikernel)?;
        if !svc.declared {
            return Err(OperatorError::NotDeclared);
        }
        info!(UNIKERNEL = %name, "restart requested by an operator");
        svc.held = false;
        svc.quick_failures = 0;
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

    /// The states each service went through since the last call, in order.
    pub fn take_transitions(&mut self) -> Vec<(String, Vec<State>)> {
        self.services
            .iter_mut()
            .filter(|(_, s)| !s.transitions.is_empty())
            .map(|(k, s)| (k.clone(), std::mem::take(&mut s.transitions)))
            .collect()
    }

    /// The console ring of each service (shared, read by the D-Bus API).
    pub fn consoles(&self) -> BTreeMap<String, ConsoleRing> {
        self.services
            .iter()
            .map(|(k, s)| (k.clone(), s.console.clone()))
            .collect()
    }

    fn observed(&self, desired: &BTreeMap<String, Spec>) -> BTreeMap<String, Observed> {
        self.services
            .iter()
            .map(|(k, s)| (k.clone(), s.observed(desired.get(k))))
            .collect()
    }

    /// What a reload would do now, without doing it (reads the files, changes nothing).
    pub fn dry_plan(&self) -> Plan {
        let loaded = Loader::default().load_dir(&self.opts.config_dir);
        plan(&loaded.specs, &self.observed(&loaded.specs))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.iter().map(|(k, s)| s.status(k)).collect(),
            declaration_errors: self.decl_errors.clone(),
        }
    }

    /// Whether the status changed since it was last published.
    pub fn is_dirty(&self) -> bool {
        self.status_dirty
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Writes `status.json` and the sd_notify status line, if anything changed; returns
    /// the new status then.
    pub fn publish(&mut self) -> Option<Snapshot> {
        if !self.status_dirty {
            return None;
        }
        self.status_dirty = false;
        let snap = self.snapshot();
        crate::systemd::status(&snap.summary());
        match serde_json::to_vec_pretty(&snap) {
            Ok(json) => {
                if let Err(e) = write_atomic(&self.state.status_file(), &json) {
                    warn!("cannot write {}: {e}", self.state.status_file().display());
                }
            }
            Err(e) => warn!("cannot encode the status: {e}"),
        }
        Some(snap)
    }
}

//! Fakes of the host for the controller's unit tests: VMMs that boot, crash, ignore
//! SIGTERM or end on a signal as a test scripts them, and a network that records taps
//! and listeners. Time is tokio's (paused in the tests), so delays are exact.
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::host::{BoxFuture, Drift, Exit, HostNet, LaunchRequest, Launcher, Liveness, Readiness, Signal, VmProcess};
use crate::net::{self, Attachment};
use crate::proxy::Gate;
use crate::state_dir::VmRecord;
use crate::supervise::console::ConsoleRing;
use crate::supervise::process::Ended;

/// How the VMs of one service behave.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Ready this long after spawn; `None`: never.
    pub ready_after: Option<Duration>,
    /// Ends by itself this long after spawn, with this status.
    pub exits_after: Option<(Duration, Ended)>,
    /// SIGTERM does nothing (only SIGKILL ends it).
    pub ignores_term: bool,
    /// Spawning fails with this reason.
    pub spawn_error: Option<String>,
    /// A VMM resumed from a snapshot ends at once, refused (a damaged snapshot).
    pub restore_fails: bool,
    /// Snapshots fail with this reason (a full disk); the VM runs on.
    pub snapshot_error: Option<String>,
    /// Its VMM stops answering (SIGSTOP, a hang) once ready.
    pub hangs: bool,
    /// Its VMM sends heartbeats (while it does not hang).
    pub heartbeats: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            ready_after: Some(Duration::from_millis(5)),
            exits_after: None,
            ignores_term: false,
            spawn_error: None,
            restore_fails: false,
            snapshot_error: None,
            hangs: false,
            heartbeats: false,
        }
    }
}

/// One fake VMM, alive until its `end` holds a status.
#[derive(Clone)]
struct FakeVmm {
    name: String,
    end: watch::Sender<Option<Ended>>,
    ignores_term: bool,
    spawned: Instant,
    ready_after: Option<Duration>,
}

#[derive(Default)]
pub struct HostState {
    next_pid: u32,
    vmms: BTreeMap<u32, FakeVmm>,
    pub behaviour: BTreeMap<String, Behaviour>,
    /// (service, pid, when) of every spawn, in order.
    pub spawns: Vec<(String, u32, Instant)>,
    /// (pid, signal) of every signal sent.
    pub signals: Vec<(u32, Signal)>,
    /// Services with a tap.
    pub taps: BTreeSet<String>,
    /// What `drift` reports next (once).
    pub drift: Vec<(String, Drift)>,
    pub rewired: Vec<String>,
    /// Host port -> service, for every open listener.
    pub listeners: BTreeMap<u16, String>,
    /// Ports someone else holds: listening on them fails.
    pub taken_ports: BTreeSet<u16>,
    /// The gate of every open listener, by host port (tests play clients through it).
    pub gates: BTreeMap<u16, Gate>,
    /// Pids of the VMMs resumed from a snapshot.
    pub restored: BTreeSet<u32>,
    /// Snapshots taken, by service.
    pub snapshots: Vec<String>,
    /// (service, limits) of every in-place limits change.
    pub limits: Vec<(String, crate::decl::LimitsSpec)>,
    /// Liveness pings cannot be made (the daemon is out of descriptors), with this error.
    pub pings_fail: Option<String>,
    pub pings_in_flight: usize,
    /// Pings made in all.
    pub pings: usize,
    pub most_pings_in_flight: usize,
}

/// The host both fakes share, and the test inspects.
#[derive(Clone, Default)]
pub struct FakeHost(pub Arc<Mutex<HostState>>);

impl FakeHost {
    pub fn get(&self) -> MutexGuard<'_, HostState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FakeHost {
    pub fn behave(&self, service: &str, b: Behaviour) {
        self.get().behaviour.insert(service.into(), b);
    }

    /// Pids of the VMMs that run now, by service.
    pub fn running(&self) -> BTreeMap<String, Vec<u32>> {
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (pid, v) in &self.get().vmms {
            if v.end.borrow().is_none() {
                out.entry(v.name.clone()).or_default().push(*pid);
            }
        }
        out
    }

    /// Ends a VMM from outside (a crash, `kill -9`).
    pub fn kill(&self, pid: u32, ended: Ended) {
        if let Some(v) = self.get().vmms.get(&pid) {
            v.end.send_replace(Some(ended));
        }
    }

    pub fn spawn_count(&self, service: &str) -> usize {
        self.get().spawns.iter().filter(|s| s.0 == service).count()
    }
}

pub struct FakeLauncher(pub FakeHost);
pub struct FakeNet(pub FakeHost);

pub struct FakeVm {
    pid: u32,
    vmm: FakeVmm,
    host: FakeHost,
    /// Started by an earlier daemon: its exit status went to its real parent.
    adopted: bool,
}

impl Launcher for FakeLauncher {
    type Vm = FakeVm;

    fn spawn(&mut self, request: LaunchRequest<'_>) -> Result<FakeVm, String> {
        let mut host = self.0.get();
        let b = host.behaviour.get(request.name).cloned().unwrap_or_default();
        if let Some(e) = b.spawn_error {
            return Err(e);
        }
        host.next_pid += 1;
        let pid = 1000 + host.next_pid;
        let vmm = FakeVmm {
            name: request.name.to_string(),
            end: watch::channel(None).0,
            ignores_term: b.ignores_term,
            spawned: Instant::now(),
            ready_after: b.ready_after,
        };
        let exits_after = match (request.restore.is_some(), b.restore_fails) {
            (true, true) => Some((Duration::from_millis(1), Ended::Exited(3))),
            _ => b.exits_after,
        };
        if request.restore.is_some() {
            let pid = 1000 + host.next_pid;
            host.restored.insert(pid);
        }
        if let Some((after, ended)) = exits_after {
            let end = vmm.end.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                end.send_if_modified(|e| e.is_none() && e.replace(ended).is_none());
            });
        }
        host.vmms.insert(pid, vmm.clone());
        host.spawns.push((request.name.to_string(), pid, Instant::now()));
        Ok(FakeVm {
            pid,
            vmm,
            host: self.0.clone(),
            adopted: false,
        })
    }

    fn sweep(&mut self, keep: &std::collections::HashSet<u32>) -> Vec<(String, u32)> {
        let host = self.0.get();
        let mut ended = Vec::new();
        for (pid, vmm) in &host.vmms {
            if !keep.contains(pid) && vmm.end.borrow().is_none() {
                vmm.end.send_replace(Some(Ended::Signaled(libc::SIGKILL)));
                ended.push((vmm.name.clone(), *pid));
            }
        }
        ended
    }

    fn adopt(&mut self, name: &str, record: &VmRecord, _console: ConsoleRing) -> Option<FakeVm> {
        let vmm = self.0.get().vmms.get(&record.pid).cloned()?;
        (vmm.name == name && vmm.end.borrow().is_none() && record.start_ticks == u64::from(record.pid)).then(|| {
            FakeVm {
                pid: record.pid,
                vmm,
                host: self.0.clone(),
                adopted: true,
            }
        })
    }
}

impl VmProcess for FakeVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn apply_limits(&self, limits: &crate::decl::LimitsSpec) {
        self.host.get().limits.push((self.vmm.name.clone(), *limits));
    }

    fn heard_lately(&self) -> bool {
        let host = self.host.get();
        host.behaviour
            .get(&self.vmm.name)
            .is_some_and(|b| b.heartbeats && !b.hangs)
    }

    fn responsive(&self) -> BoxFuture<Liveness> {
        let host = self.host.get();
        let behaviour = host.behaviour.get(&self.vmm.name);
        let hangs = behaviour.is_some_and(|b| b.hangs);
        let unchecked = host.pings_fail.clone();
        drop(host);
        let host = self.host.clone();
        Box::pin(async move {
            {
                let mut h = host.get();
                h.pings_in_flight += 1;
                h.pings += 1;
                h.most_pings_in_flight = h.most_pings_in_flight.max(h.pings_in_flight);
            }
            let answer = match unchecked {
                Some(why) => Liveness::NotChecked(why),
                None if hangs => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Liveness::Silent
                }
                None => {
                    // A ping takes a moment, so that pings can overlap.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Liveness::Answered
                }
            };
            host.get().pings_in_flight -= 1;
            answer
        })
    }

    fn snapshot(&self, dir: std::path::PathBuf) -> BoxFuture<Result<super::host::Saved, String>> {
        let mut host = self.host.get();
        host.snapshots.push(self.vmm.name.clone());
        let error = host
            .behaviour
            .get(&self.vmm.name)
            .and_then(|b| b.snapshot_error.clone());
        drop(host);
        let end = self.vmm.end.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            if let Some(e) = error {
                return Err(e);
            }
            // As the VMM does: the state file last, then the exit.
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let tmp = dir.join(".state.tmp");
            std::fs::write(&tmp, b"fake").map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, dir.join(contract::control::SNAPSHOT_STATE_FILE)).map_err(|e| e.to_string())?;
            end.send_if_modified(|e| e.is_none() && e.replace(Ended::Exited(4)).is_none());
            Ok(super::host::Saved {
                memory_bytes: 4096,
                millis: 3,
            })
        })
    }

    fn start_ticks(&self) -> u64 {
        u64::from(self.pid)
    }

    fn signal(&self, signal: Signal) -> io::Result<()> {
        self.host.get().signals.push((self.pid, signal));
        let ended = match signal {
            Signal::Term if self.vmm.ignores_term => return Ok(()),
            Signal::Term => Ended::Signaled(libc::SIGTERM),
            Signal::Kill => Ended::Signaled(libc::SIGKILL),
        };
        self.vmm
            .end
            .send_if_modified(|e| e.is_none() && e.replace(ended).is_none());
        Ok(())
    }

    fn ended(&mut self) -> BoxFuture<Exit> {
        let mut end = self.vmm.end.subscribe();
        let adopted = self.adopted;
        Box::pin(async move {
            let ended = match end.wait_for(Option::is_some).await {
                Ok(_) if adopted => Ended::Unknown,
                Ok(e) => e.unwrap_or(Ended::Unknown),
                Err(_) => Ended::Unknown,
            };
            Exit { ended, reason: None }
        })
    }

    fn ready(&mut self, _probe: Option<SocketAddrV4>) -> BoxFuture<Readiness> {
        let at = self.vmm.ready_after.map(|d| self.vmm.spawned + d);
        let mut end = self.vmm.end.subscribe();
        Box::pin(async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
            if end.borrow_and_update().is_some() {
                std::future::pending::<()>().await;
            }
            Readiness::default()
        })
    }
}

impl HostNet for FakeNet {
    async fn attach(&mut self, service: &str, explicit: Option<Ipv4Addr>) -> Result<Attachment, net::Error> {
        self.0.get().taps.insert(service.to_string());
        let tap_fd = std::fs::File::open("/dev/null").map_err(net::tap::Error::Open)?;
        Ok(Attachment {
            tap_name: format!("uk-{service}"),
            tap_fd: tap_fd.into(),
            mac: net::MacAddr::derived(service),
            address: explicit.unwrap_or(Ipv4Addr::new(10, 200, 0, 2)),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 200, 0, 1),
            steps: None,
        })
    }

    fn adopt(&mut self, service: &str, _tap: &str, _address: Ipv4Addr) -> Result<(), net::Error> {
        self.0.get().taps.insert(service.to_string());
        Ok(())
    }

    fn detach(&mut self, service: &str) -> BoxFuture<Result<(), net::Error>> {
        self.0.get().taps.remove(service);
        Box::pin(std::future::ready(Ok(())))
    }

    fn reopen(&mut self, service: &str) -> Result<Attachment, net::Error> {
        if !self.0.get().taps.contains(service) {
            return Err(net::Error::NotAttached(service.to_string()));
        }
        let tap_fd = std::fs::File::open("/dev/null").map_err(net::tap::Error::Open)?;
        Ok(Attachment {
            tap_name: format!("uk-{service}"),
            tap_fd: tap_fd.into(),
            mac: net::MacAddr::derived(service),
            address: Ipv4Addr::new(10, 200, 0, 2),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 200, 0, 1),
            steps: None,
        })
    }

    async fn drift(&mut self) -> Result<Vec<(String, Drift)>, net::Error> {
        Ok(std::mem::take(&mut self.0.get().drift))
    }

    async fn rewire(&mut self, service: &str) -> Result<(), net::Error> {
        self.0.get().rewired.push(service.to_string());
        Ok(())
    }

    fn listen(&mut self, service: &str, bind: SocketAddrV4, _guest: u16, gate: Gate) -> io::Result<JoinHandle<()>> {
        let host_port = bind.port();
        let mut host = self.0.get();
        if host.taken_ports.contains(&host_port) || host.listeners.get(&host_port).is_some_and(|s| s != service) {
            return Err(io::Error::from(io::ErrorKind::AddrInUse));
        }
        host.listeners.insert(host_port, service.to_string());
        host.gates.insert(host_port, gate);
        let state = self.0.clone();
        let service = service.to_string();
        Ok(tokio::spawn(async move {
            // Closing the listener is aborting this task: the guard frees the port.
            let _guard = PortGuard(state, host_port, service);
            std::future::pending::<()>().await
        }))
    }
}

struct PortGuard(FakeHost, u16, String);

impl Drop for PortGuard {
    fn drop(&mut self) {
        let mut host = self.0.get();
        if host.listeners.get(&self.1) == Some(&self.2) {
            host.listeners.remove(&self.1);
        }
    }
}

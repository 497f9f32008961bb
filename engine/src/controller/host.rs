//! The seams where the controller touches the host, as traits: VMM processes
//! ([`Launcher`], [`VmProcess`]) and host networking ([`HostNet`]: taps, addresses,
//! routes, host-port listeners). The daemon uses the real ones (`supervise::launcher`,
//! `net::HostNetwork`); the controller's unit tests use fakes with a paused clock.
//
// `async fn` in these traits has no `Send` bound on purpose: the controller runs on one
// current-thread task, and the traits are used through generics only.
#![allow(async_fn_in_trait)]

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;

use tokio::task::JoinHandle;

use crate::decl::Spec;
use crate::net::{self, Attachment};
use crate::proxy::Gate;
use crate::state_dir::VmRecord;
use crate::supervise::console::ConsoleRing;
use crate::supervise::process::Ended;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How the controller asks a VMM to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Orderly: the VMM stops its guest and exits.
    Term,
    /// Now.
    Kill,
}

/// How a VM ended, and the VMM's own words about it (its error line), if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub ended: Ended,
    pub reason: Option<String>,
}

/// What one VM is started from.
pub struct LaunchRequest<'a> {
    pub name: &'a str,
    pub spec: &'a Spec,
    /// Its network, when it has one; the tap fd moves to the VMM.
    pub net: Option<Attachment>,
    /// Where its console lines go.
    pub console: ConsoleRing,
    /// Resume the VM saved in this snapshot directory instead of booting the image.
    pub restore: Option<&'a std::path::Path>,
}

/// What a snapshot cost, as the VMM reports it.
pub use contract::control::Saved;

/// What a liveness ping found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Answered,
    /// Connected (or refused) and no answer in time: the VMM's fault.
    Silent,
    /// The daemon could not ask (out of descriptors or memory itself): says nothing of
    /// the VMM.
    NotChecked(String),
}

/// How a guest became ready, for the log: when its first console line came, counted from
/// the call to [`VmProcess::ready`] (about the spawn), if that was waited for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Readiness {
    pub first_line: Option<std::time::Duration>,
}

/// Starts VMMs and takes over those an earlier daemon started.
pub trait Launcher {
    type Vm: VmProcess;

    /// Starts the VMM of one service. The error says why, in words for its status.
    fn spawn(&mut self, request: LaunchRequest<'_>) -> Result<Self::Vm, String>;

    /// The VMM an earlier daemon recorded, if that very process still runs.
    fn adopt(&mut self, name: &str, record: &VmRecord, console: ConsoleRing) -> Option<Self::Vm>;

    /// Ends every VMM of this state directory that is not in `keep` (a VMM started by a
    /// daemon that died before recording it); returns (service, pid) of each.
    fn sweep(&mut self, keep: &std::collections::HashSet<u32>) -> Vec<(String, u32)>;

    /// Reads every console output that has arrived (the daemon is about to end).
    fn read_consoles(&mut self) {}

    /// A live view of the warm pool (VMMs started ahead of need), if there is one.
    fn pool_gauge(&self) -> Option<crate::supervise::warm::PoolGauge> {
        None
    }
}

/// One running VMM.
pub trait VmProcess: 'static {
    fn pid(&self) -> u32;
    /// With the pid, names this process and no later one (see `VmRecord`).
    fn start_ticks(&self) -> u64;
    fn signal(&self, signal: Signal) -> io::Result<()>;
    /// Resolves once the VMM has ended and its last console output was read. Called once.
    fn ended(&mut self) -> BoxFuture<Exit>;
    /// Resolves once the guest serves: it accepts TCP on `probe` or, without one, has
    /// printed its first console line; a restored VM serves as soon as it runs again.
    /// Called at most once.
    fn ready(&mut self, probe: Option<SocketAddrV4>) -> BoxFuture<Readiness>;
    /// Whether the VMM still answers (its event loop runs): [`Liveness::Silent`] when it
    /// is stopped (SIGSTOP) or hung. A VMM without a control socket (started by an older
    /// daemon) counts as answering.
    fn responsive(&self) -> BoxFuture<Liveness>;
    /// Whether the VMM said by itself, lately, that its event loop runs (a heartbeat on
    /// its console feed): as good as an answered ping, and it costs no connection.
    fn heard_lately(&self) -> bool {
        false
    }
    /// Where the first console line the daemon has not read to its end starts (the next
    /// daemon logs the VMM's replay from there); `None` if not known.
    fn console_read_to(&self) -> Option<u64> {
        None
    }
    /// Asks the VMM to save the VM into `dir` and end (standby). The VMM then ends with
    /// [`contract::exit::ExitStatus::Saved`].
    fn snapshot(&self, dir: std::path::PathBuf) -> BoxFuture<Result<Saved, String>>;
    /// Applies changed resource limits to the running VMM (its systemd scope), in place.
    /// Failures are the launcher's to report: limits never stop a VM.
    fn apply_limits(&self, limits: &crate::decl::LimitsSpec);
    /// Where the launcher's spawn of it spent its time, step by step ("log file 0.02 ms,
    /// ..."); `None` for an adopted VMM.
    fn spawn_steps(&self) -> Option<String> {
        None
    }
    /// Where the VMM's own start went, phase by phase (`--trace-boot`'s "started" line),
    /// once it entered the guest, and whether it came from the warm pool; `None` when
    /// there is nothing to say.
    fn start_phases(&self) -> Option<String> {
        None
    }

    /// Whether it was taken from the warm pool (its VM created before the start).
    fn pooled(&self) -> bool {
        false
    }
}

/// What differs between the host and what the controller set up for a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drift {
    /// The tap is gone (deleted behind the daemon's back): the VMM's fd is dead, so the VM
    /// needs a new tap and a restart.
    TapGone,
    /// The tap is there but down, or its route is missing: re-wire it in place.
    Unwired,
}

/// Host networking as the controller uses it.
pub trait HostNet {
    /// Creates (or takes over) the tap of `service`, gives it an address and wires it.
    async fn attach(&mut self, service: &str, explicit: Option<Ipv4Addr>) -> Result<Attachment, net::Error>;
    /// Takes over the tap and address of a VM an earlier daemon started.
    fn adopt(&mut self, service: &str, tap: &str, address: Ipv4Addr) -> Result<(), net::Error>;
    /// The attachment of a service whose tap and address are in place (on standby): only
    /// the tap is opened again, for the VMM that resumes it; no netlink request.
    fn reopen(&mut self, service: &str) -> Result<Attachment, net::Error>;
    /// Returns once the tap [`HostNet::reopen`] opened again carries frames (the kernel
    /// brings a reattached link's queue back asynchronously); waits at most a few ms,
    /// and says so when that was not enough.
    fn settle(&self, _service: &str) {}
    /// Releases the address of `service` and forgets its tap at once; the returned future
    /// deletes the tap, which the kernel makes slow (~20 ms a link here): the controller
    /// runs it in the background, off the control loop. Its name stays taken until then.
    fn detach(&mut self, service: &str) -> BoxFuture<Result<(), net::Error>>;
    /// Compares the host with every attached service (one dump, not one request each).
    async fn drift(&mut self) -> Result<Vec<(String, Drift)>, net::Error>;
    /// Re-wires the tap of `service` (up, route, neighbour), for [`Drift::Unwired`].
    async fn rewire(&mut self, service: &str) -> Result<(), net::Error>;
    /// Listens on `bind` (address and host port) and splices connections to `guest_port`
    /// of the gate's target, until the task is aborted. Binding errors are immediate.
    fn listen(&mut self, service: &str, bind: SocketAddrV4, guest_port: u16, gate: Gate) -> io::Result<JoinHandle<()>>;
}

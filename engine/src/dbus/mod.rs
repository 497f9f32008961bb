//! The D-Bus API on the system bus, shaped like systemd's own (org.freedesktop.machine1):
//! the name `org.unikerneld1`, a manager object and one object per service. The engine
//! loop stays the only owner of state: the bus side reads the status it published last
//! and sends requests (reload, start, stop, ...) to the loop, which answers them.
pub mod client;
pub mod manager;
pub mod path;
pub mod properties;
pub mod server;
pub mod unikernel;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::oneshot;

use crate::controller::OperatorError;
use crate::plan::Plan;
use crate::status::Snapshot;
use crate::supervise::console::ConsoleRing;

pub const BUS_NAME: &str = "org.unikerneld1";

/// What the engine published last: what properties and read-only methods answer from.
#[derive(Default)]
pub struct Published {
    pub snapshot: std::sync::Arc<Snapshot>,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Boot and wake histograms, for the metrics endpoint.
    pub stats: crate::metrics::Stats,
    /// The warm pool, read live by the metrics endpoint.
    pub pool: Option<crate::supervise::warm::PoolGauge>,
}

pub type Shared = Arc<RwLock<Published>>;

/// A request from the bus to the engine loop, with where to send the answer.
#[derive(Debug)]
pub enum Request {
    Reload(oneshot::Sender<Plan>),
    Plan(oneshot::Sender<Plan>),
    Start(String, oneshot::Sender<Result<(), OperatorError>>),
    Stop(String, oneshot::Sender<Result<(), OperatorError>>),
    Restart(String, oneshot::Sender<Result<(), OperatorError>>),
    Standby(String, oneshot::Sender<Result<(), OperatorError>>),
    Wake(String, oneshot::Sender<Result<(), OperatorError>>),
    /// Fetch the followed git remote now.
    Sync(oneshot::Sender<SyncReply>),
    /// A service's console lines, read by the caller (not copied into every publish).
    Console(String, oneshot::Sender<Option<ConsoleRing>>),
}

/// What a sync did: ("applied" | "unchanged" | "refused", commit, the refused revision's
/// errors), or why the remote could not be read.
pub type SyncReply = Result<(String, String, Vec<String>), String>;

/// Errors callers see, as `org.unikerneld1.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.unikerneld1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No service of that name is declared.
    NoSuchUnikernel(String),
    /// The service is being removed: its declaration is gone.
    NotDeclared(String),
    /// The daemon is shutting down.
    ShuttingDown(String),
    /// The request does not fit the service's state (e.g. Wake when not on standby).
    WrongState(String),
    /// The declarations' source failed: not following git, or the remote cannot be read.
    SourceFailed(String),
}

impl Error {
    fn operator(name: &str, e: OperatorError) -> Error {
        match e {
            OperatorError::NoSuchUnikernel => Error::NoSuchUnikernel(format!("no unikernel named {name:?}")),
            OperatorError::NotDeclared => Error::NotDeclared(format!("{name} is no longer declared")),
            other => Error::WrongState(format!("{name}: {other}")),
        }
    }
}

//! Owning `org.unikerneld1` and keeping the bus in step with what the engine publishes:
//! an object per service (added and removed with UnikernelNew / UnikernelRemoved) and
//! PropertiesChanged for every property whose value changed, so `busctl monitor` and
//! `gdbus monitor` follow a service live.
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};
use zbus::object_server::SignalEmitter;
use zbus::Connection;

use super::manager::{Manager, ManagerSignals};
use super::path::{unikernel_path, MANAGER_PATH};
use super::properties;
use super::unikernel::Unikernel;
use super::{Request, Shared, BUS_NAME};
use crate::status::{Snapshot, State, Status};

/// The states each service went through between two snapshots.
pub type Transitions = Vec<(String, Vec<State>)>;

fn interface() -> zbus::names::InterfaceName<'static> {
    zbus::names::InterfaceName::from_static_str_unchecked(properties::INTERFACE)
}

/// PropertiesChanged for State = `state`, with the value it had then (the getter would
/// give today's).
async fn emit_state(emitter: &SignalEmitter<'_>, state: State) -> zbus::Result<()> {
    let changed = HashMap::from([("State", zbus::zvariant::Value::from(state.as_str()))]);
    zbus::fdo::Properties::properties_changed(emitter, interface(), changed, Cow::Borrowed(&[])).await
}

/// Connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured), serves the manager
/// and takes the name. Without a bus (or without the right to the name) the daemon runs
/// on without the API, and says so once.
pub async fn connect(shared: Shared, requests: mpsc::UnboundedSender<Request>) -> Option<Connection> {
    let manager = Manager { shared, requests };
    let built = async {
        zbus::connection::Builder::system()?
            .serve_at(MANAGER_PATH, manager)?
            .name(BUS_NAME)?
            .build()
            .await
    }
    .await;
    match built {
        Ok(conn) => {
            info!("D-Bus: serving {BUS_NAME} on the system bus");
            Some(conn)
        }
        Err(e) => {
            warn!("D-Bus: no API ({e}); the daemon runs on without it");
            None
        }
    }
}

/// After a failed sync, the next try comes this soon even if nothing new is published.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the published snapshots and mirrors them on the bus, in order. A sync that
/// fails part-way is repaired: the objects actually on the bus are tracked one by one, and
/// the next sync (at the latest after [`RETRY`]) announces every property again.
pub async fn run(
    conn: Connection,
    shared: Shared,
    requests: mpsc::UnboundedSender<Request>,
    mut snapshots: mpsc::UnboundedReceiver<(Arc<Snapshot>, Transitions)>,
) {
    let mut mirror = Mirror::default();
    let mut latest = Arc::new(Snapshot::default());
    let mut transitions = Transitions::new();
    let mut failing = false;
    loop {
        let next = if failing {
            match tokio::time::timeout(RETRY, snapshots.recv()).await {
                Ok(next) => next,
                Err(_) => Some((latest.clone(), Transitions::new())),
            }
        } else {
            snapshots.recv().await
        };
        let Some((new, more)) = next else { return };
        latest = new;
        transitions.extend(more);
        // Only the newest snapshot matters when several queued up; every transition does.
        while let Ok((newer, more)) = snapshots.try_recv() {
            latest = newer;
            transitions.extend(more);
        }
        match mirror.sync(&conn, &shared, &requests, &latest, &transitions).await {
            Ok(()) => {
                failing = false;
                transitions.clear();
            }
            Err(e) => {
                if !failing {
                    warn!("D-Bus: cannot publish the status ({e}); retrying");
                }
                failing = true;
                // What the bus shows is now unknown: announce everything next time.
                mirror.known = Arc::default();
            }
        }
    }
}

/// What the bus shows: the objects registered, and the status they last announced.
#[derive(Default)]
struct Mirror {
    registered: BTreeSet<String>,
    known: Arc<Snapshot>,
}

impl Mirror {
    async fn sync(
        &mut self,
        conn: &Connection,
        shared: &Shared,
        requests: &mpsc::UnboundedSender<Request>,
        new: &Arc<Snapshot>,
        transitions: &Transitions,
    ) -> zbus::Result<()> {
        let replayed: BTreeMap<&str, &Vec<State>> = transitions.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let server = conn.object_server();
        let manager = SignalEmitter::new(conn, MANAGER_PATH)?;
        let known = self.known.clone();
        let before: HashMap<&str, &Arc<Status>> = known.services.iter().map(|s| (s.name.as_str(), s)).collect();
        for status in &new.services {
            let name = status.name.as_str();
            let prev = before.get(name).copied();
            let fresh = !self.registered.contains(name);
            // What did not change is mostly the very same status (see `Service::published`):
            // a sync at 10,000 services looks at each, and works only for those that changed.
            let same = prev.is_some_and(|p| Arc::ptr_eq(p, status) || p == status);
            if !fresh && same && !replayed.contains_key(name) {
                continue;
            }
            let prev = prev.map(|p| &**p);
            let path = unikernel_path(name);
            let emitter = SignalEmitter::new(conn, &path)?;
            if fresh {
                let object = Unikernel {
                    name: name.to_string(),
                    shared: shared.clone(),
                    requests: requests.clone(),
                };
                server.at(&path, object).await?;
                self.registered.insert(name.to_string());
                manager.unikernel_new(name, path.as_ref()).await?;
            }
            match replayed.get(name) {
                Some(states) => {
                    for state in states.iter() {
                        emit_state(&emitter, *state).await?;
                    }
                }
                None if prev.map(|p| p.state) != Some(status.state) => emit_state(&emitter, status.state).await?,
                None => {}
            }
            let changed = properties::changed(prev, status);
            // A new object is read whole by whoever cares (UnikernelNew); an existing one
            // announces what changed (everything, after a failed sync).
            if !fresh && !changed.is_empty() {
                zbus::fdo::Properties::properties_changed(&emitter, interface(), changed, Cow::Borrowed(&[])).await?;
            }
        }
        let after: BTreeSet<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .registered
            .iter()
            .filter(|n| !after.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            let path = unikernel_path(&name);
            server.remove::<Unikernel, _>(&path).await?;
            self.registered.remove(&name);
            manager.unikernel_removed(&name, path.as_ref()).await?;
        }
        let old = &self.known;
        if old.services.len() != new.services.len()
            || old.summary() != new.summary()
            || old.declaration_errors != new.declaration_errors
            || old.source != new.source
        {
            let iface = server.interface::<_, Manager>(MANAGER_PATH).await?;
            let emitter = iface.signal_emitter();
            let m = iface.get().await;
            m.n_unikernels_changed(emitter).await?;
            m.state_counts_changed(emitter).await?;
            m.summary_changed(emitter).await?;
            if old.declaration_errors != new.declaration_errors {
                m.declaration_errors_changed(emitter).await?;
            }
            if old.source.applied_revision != new.source.applied_revision {
                m.applied_revision_changed(emitter).await?;
            }
            if old.source.failed_revision != new.source.failed_revision {
                m.failed_revision_changed(emitter).await?;
            }
            if old.source.fetch_error != new.source.fetch_error {
                m.fetch_error_changed(emitter).await?;
            }
        }
        self.known = new.clone();
        Ok(())
    }
}

//! Owning `org.unikerneld1` and keeping the bus in step with what the engine publishes:
//! an object per service (added and removed with UnikernelNew / UnikernelRemoved) and
//! PropertiesChanged for every property whose value changed, so `busctl monitor` and
//! `gdbus monitor` follow a service live.
use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tracing::{info, warn};
use zbus::object_server::SignalEmitter;
use zbus::Connection;

use super::manager::{Manager, ManagerSignals};
use super::path::{unikernel_path, MANAGER_PATH};
use super::unikernel::Unikernel;
use super::{Request, Shared, BUS_NAME};
use crate::status::{Snapshot, State, Status};

/// The states each service went through between two snapshots.
pub type Transitions = Vec<(String, Vec<State>)>;

/// PropertiesChanged for State = `state`, with the value it had then (the getter would
/// give today's).
async fn emit_state(emitter: &SignalEmitter<'_>, state: State) -> zbus::Result<()> {
    let changed = std::collections::HashMap::from([("State", zbus::zvariant::Value::from(state.as_str()))]);
    zbus::fdo::Properties::properties_changed(
        emitter,
        zbus::names::InterfaceName::from_static_str_unchecked("org.unikerneld1.Unikernel"),
        changed,
        std::borrow::Cow::Borrowed(&[]),
    )
    .await
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

/// Follows the published snapshots and mirrors them on the bus, in order.
pub async fn run(
    conn: Connection,
    shared: Shared,
    requests: mpsc::UnboundedSender<Request>,
    mut snapshots: mpsc::UnboundedReceiver<(Snapshot, Transitions)>,
) {
    let mut known = Snapshot::default();
    while let Some((mut new, mut transitions)) = snapshots.recv().await {
        // Only the newest snapshot matters when several queued up; every transition does.
        while let Ok((newer, more)) = snapshots.try_recv() {
            new = newer;
            transitions.extend(more);
        }
        if let Err(e) = sync(&conn, &shared, &requests, &known, &new, &transitions).await {
            warn!("D-Bus: cannot publish the status: {e}");
        }
        known = new;
    }
}

async fn sync(
    conn: &Connection,
    shared: &Shared,
    requests: &mpsc::UnboundedSender<Request>,
    old: &Snapshot,
    new: &Snapshot,
    transitions: &Transitions,
) -> zbus::Result<()> {
    let replayed: BTreeMap<&str, &Vec<State>> = transitions.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let server = conn.object_server();
    let manager = SignalEmitter::new(conn, MANAGER_PATH)?;
    let before: BTreeMap<&str, &Status> = old.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let after: BTreeMap<&str, &Status> = new.services.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, status) in &after {
        let path = unikernel_path(name);
        match before.get(name) {
            None => {
                server
                    .at(
                        &path,
                        Unikernel {
                            name: name.to_string(),
                            shared: shared.clone(),
                            requests: requests.clone(),
                        },
                    )
                    .await?;
                manager.unikernel_new(name, path.as_ref()).await?;
                if let Some(states) = replayed.get(name) {
                    let emitter = SignalEmitter::new(conn, &path)?;
                    for state in states.iter() {
                        emit_state(&emitter, *state).await?;
                    }
                }
            }
            Some(prev) if prev != status || replayed.contains_key(name) => {
                let iface = server.interface::<_, Unikernel>(&path).await?;
                let emitter = iface.signal_emitter();
                let u = iface.get().await;
                match replayed.get(name) {
                    Some(states) => {
                        for state in states.iter() {
                            emit_state(emitter, *state).await?;
                        }
                    }
                    None if prev.state != status.state => u.state_changed(emitter).await?,
                    None => {}
                }
                if prev.pid != status.pid {
                    u.pid_changed(emitter).await?;
                }
                if prev.address != status.address {
                    u.address_changed(emitter).await?;
                }
                if prev.boot_ms != status.boot_ms {
                    u.boot_time_u_sec_changed(emitter).await?;
                }
                if prev.restarts != status.restarts {
                    u.restarts_changed(emitter).await?;
                }
                if prev.last_error != status.last_error {
                    u.last_error_changed(emitter).await?;
                }
                if prev.source_file != status.source_file {
                    u.source_file_changed(emitter).await?;
                }
                if prev.source_line != status.source_line {
                    u.source_line_changed(emitter).await?;
                }
                if prev.spec_hash != status.spec_hash {
                    u.spec_hash_changed(emitter).await?;
                }
                if prev.exposed != status.exposed {
                    u.exposed_ports_changed(emitter).await?;
                }
                if prev.memory_bytes != status.memory_bytes {
                    u.memory_bytes_changed(emitter).await?;
                }
                if prev.held != status.held {
                    u.held_changed(emitter).await?;
                }
            }
            Some(_) => {}
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        let path = unikernel_path(name);
        server.remove::<Unikernel, _>(&path).await?;
        manager.unikernel_removed(name, path.as_ref()).await?;
    }
    if old.services.len() != new.services.len()
        || old.summary() != new.summary()
        || old.declaration_errors != new.declaration_errors
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
    }
    Ok(())
}

//! `org.unikerneld1.Manager` at `/org/unikerneld1`.

use tokio::sync::{mpsc, oneshot};
use zbus::interface;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use super::path::unikernel_path;
use super::{Error, Request, Shared};
use crate::plan::Plan;
use crate::status::{DeclarationError, State};

pub struct Manager {
    pub shared: Shared,
    pub requests: mpsc::UnboundedSender<Request>,
}

pub(crate) async fn ask<T>(
    requests: &mpsc::UnboundedSender<Request>,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, Error> {
    let (tx, rx) = oneshot::channel();
    requests
        .send(make(tx))
        .map_err(|_| Error::ShuttingDown("unikerneld is shutting down".into()))?;
    rx.await
        .map_err(|_| Error::ShuttingDown("unikerneld is shutting down".into()))
}

/// (name, action, changed fields), action one of create, replace, update, stop, unchanged
/// ([`crate::plan::Action::kind`]).
pub type PlanEntry = (String, String, Vec<String>);

/// A plan as the API returns it.
pub fn plan_entries(plan: &Plan) -> Vec<PlanEntry> {
    plan.actions
        .iter()
        .map(|a| (a.name().to_string(), a.kind().to_string(), a.changed().to_vec()))
        .collect()
}

/// One entry of ListUnikernels: (name, state, address or "", pid or 0, object path).
pub type ListEntry = (String, String, String, u32, OwnedObjectPath);

#[interface(name = "org.unikerneld1.Manager")]
impl Manager {
    /// Every declared unikernel: (name, state, address or "", pid or 0, object path).
    async fn list_unikernels(&self) -> Vec<ListEntry> {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published
            .snapshot
            .services
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.state.to_string(),
                    s.address.map(|a| a.to_string()).unwrap_or_default(),
                    s.pid.unwrap_or(0),
                    unikernel_path(&s.name),
                )
            })
            .collect()
    }

    /// The object path of the unikernel `name`
    /// (org.unikerneld1.Error.NoSuchUnikernel if none is declared).
    async fn get_unikernel(&self, name: String) -> Result<OwnedObjectPath, Error> {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        if published.snapshot.services.iter().any(|s| s.name == name) {
            Ok(unikernel_path(&name))
        } else {
            Err(Error::NoSuchUnikernel(format!("no unikernel named {name:?}")))
        }
    }

    /// Reloads the declarations now and applies the plan (as SIGHUP does); returns what
    /// was applied as (name, action, changed fields).
    async fn reload(&self) -> Result<Vec<PlanEntry>, Error> {
        let plan = ask(&self.requests, Request::Reload).await?;
        Ok(plan_entries(&plan))
    }

    /// What a reload would do now, without doing it: (name, action, changed fields),
    /// action one of create, replace, update, stop, unchanged.
    async fn plan(&self) -> Result<Vec<PlanEntry>, Error> {
        let plan = ask(&self.requests, Request::Plan).await?;
        Ok(plan_entries(&plan))
    }

    /// Fetches the followed git repository now and applies a new revision (or refuses it
    /// whole); returns ("applied" | "unchanged" | "refused", commit, the refused
    /// revision's errors as "file:line:col: message"). Root only.
    async fn sync(&self) -> Result<(String, String, Vec<String>), Error> {
        ask(&self.requests, Request::Sync).await?.map_err(Error::SourceFailed)
    }

    /// The revision of the declarations in force: (commit, commit time in seconds since
    /// the epoch, subject, dirty); an empty commit when the declarations are not in git.
    #[zbus(property)]
    async fn applied_revision(&self) -> (String, i64, String, bool) {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published
            .snapshot
            .source
            .applied_revision
            .as_ref()
            .map(|r| (r.commit.clone(), r.time, r.subject.clone(), r.dirty))
            .unwrap_or_default()
    }

    /// The last revision refused whole (a later good one clears it): (commit, subject,
    /// errors as "file:line:col: message"); an empty commit when none is.
    #[zbus(property)]
    async fn failed_revision(&self) -> (String, String, Vec<String>) {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published
            .snapshot
            .source
            .failed_revision
            .as_ref()
            .map(|f| (f.commit.clone(), f.subject.clone(), f.errors.clone()))
            .unwrap_or_default()
    }

    /// Why the followed repository could not be fetched last time ("" when it could).
    #[zbus(property)]
    async fn fetch_error(&self) -> String {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published.snapshot.source.fetch_error.clone().unwrap_or_default()
    }

    /// The daemon's version.
    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// The directory of declarations.
    #[zbus(property)]
    async fn config_dir(&self) -> String {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .config_dir
            .display()
            .to_string()
    }

    /// The runtime state directory.
    #[zbus(property)]
    async fn state_dir(&self) -> String {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .state_dir
            .display()
            .to_string()
    }

    /// Number of declared unikernels.
    #[zbus(property)]
    async fn n_unikernels(&self) -> u32 {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot
            .services
            .len() as u32
    }

    /// Unikernels per state (every state is present, zero included).
    #[zbus(property)]
    async fn state_counts(&self) -> std::collections::HashMap<String, u32> {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        State::ALL
            .iter()
            .map(|s| (s.to_string(), published.snapshot.count(*s) as u32))
            .collect()
    }

    /// The systemd-style one-line summary, as in STATUS=: "12 running, 1 failed".
    #[zbus(property)]
    async fn summary(&self) -> String {
        self.shared.read().unwrap_or_else(|p| p.into_inner()).snapshot.summary()
    }

    /// Declaration errors in force: (file, line, column, message). The services of a
    /// failing file keep running on its last good content.
    #[zbus(property)]
    async fn declaration_errors(&self) -> Vec<(String, u32, u32, String)> {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published
            .snapshot
            .declaration_errors
            .iter()
            .map(DeclarationError::to_bus)
            .collect()
    }

    /// A unikernel was declared (its object now exists).
    #[zbus(signal)]
    pub async fn unikernel_new(emitter: &SignalEmitter<'_>, name: &str, path: ObjectPath<'_>) -> zbus::Result<()>;

    /// A unikernel is gone: its declaration was removed and its VM has ended.
    #[zbus(signal)]
    pub async fn unikernel_removed(emitter: &SignalEmitter<'_>, name: &str, path: ObjectPath<'_>) -> zbus::Result<()>;
}

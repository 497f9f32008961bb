//! `org.unikerneld1.Unikernel`, one object per service at
//! `/org/unikerneld1/unikernel/<escaped name>`.
//!
//! `Stop` is an operator's override of the declaration, which stays the truth: the VM
//! ends and the service is held `stopped` (property `Held`) until `Start` or `Restart`,
//! a change of its declaration, or a restart of the daemon (the hold is not persisted).
use tokio::sync::mpsc;
use zbus::interface;

use zbus::zvariant::OwnedValue;

use super::manager::ask;
use super::{properties, Error, Request, Shared};

pub struct Unikernel {
    pub name: String,
    pub shared: Shared,
    pub requests: mpsc::UnboundedSender<Request>,
}

impl Unikernel {
    /// A property of the published status, through the one table (`properties`).
    fn prop<T: Default + TryFrom<OwnedValue>>(&self, name: &str) -> T {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published
            .snapshot
            .services
            .iter()
            .find(|s| s.name == self.name)
            .and_then(|s| properties::get(s, name))
            .unwrap_or_default()
    }

    /// The service's console ring, from the engine loop (none once the service is gone).
    async fn console(&self) -> Result<Option<crate::supervise::console::ConsoleRing>, Error> {
        let name = self.name.clone();
        ask(&self.requests, |tx| Request::Console(name, tx)).await
    }

    async fn operate(
        &self,
        make: impl FnOnce(String, tokio::sync::oneshot::Sender<Result<(), crate::controller::OperatorError>>) -> Request,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        ask(&self.requests, |tx| make(name, tx))
            .await?
            .map_err(|e| Error::operator(&self.name, e))
    }
}

#[interface(name = "org.unikerneld1.Unikernel")]
impl Unikernel {
    /// Boots the unikernel if no VM runs (after Stop, or when failed), and lifts a hold.
    async fn start(&self) -> Result<(), Error> {
        self.operate(Request::Start).await
    }

    /// Ends the VM and holds the unikernel stopped until Start, Restart, a change of its
    /// declaration, or a daemon restart.
    async fn stop(&self) -> Result<(), Error> {
        self.operate(Request::Stop).await
    }

    /// Replaces the VM with a fresh one (also from failed or stopped).
    async fn restart(&self) -> Result<(), Error> {
        self.operate(Request::Restart).await
    }

    /// Saves the running VM to a snapshot and ends its process (scale to zero); the next
    /// connection to an exposed port, or Wake, resumes it.
    async fn standby(&self) -> Result<(), Error> {
        self.operate(Request::Standby).await
    }

    /// Resumes a unikernel on standby from its snapshot.
    async fn wake(&self) -> Result<(), Error> {
        self.operate(Request::Wake).await
    }

    /// The last `lines` console lines (at most 200 are kept), oldest first.
    async fn logs(&self, lines: u32) -> Result<Vec<String>, Error> {
        let ring = self.console().await?;
        Ok(ring.map(|r| r.tail(lines as usize)).unwrap_or_default())
    }

    /// Console lines from `cursor` on (0: all that are kept), and the cursor to pass next
    /// time: how `unikernelctl logs -f` follows.
    async fn logs_since(&self, cursor: u64) -> Result<(Vec<String>, u64), Error> {
        let ring = self.console().await?;
        Ok(ring.map(|r| r.since(cursor)).unwrap_or_default())
    }

    /// The service name, as declared.
    #[zbus(property)]
    async fn name(&self) -> String {
        self.name.clone()
    }

    /// pending, booting, running, stopping, stopped, backoff or failed.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.prop("State")
    }

    /// The guest's IPv4 address while a VM runs, else "".
    #[zbus(property)]
    async fn address(&self) -> String {
        self.prop("Address")
    }

    /// The VMM's process id, 0 when no VM runs.
    #[zbus(property)]
    async fn pid(&self) -> u32 {
        self.prop("Pid")
    }

    /// Spawn -> running of the current VM, in microseconds (0 until running).
    #[zbus(property, name = "BootTimeUSec")]
    async fn boot_time_usec(&self) -> u64 {
        self.prop("BootTimeUSec")
    }

    /// When the current VM was spawned, microseconds since the epoch (0: no VM).
    #[zbus(property, name = "StartedUSec")]
    async fn started_usec(&self) -> u64 {
        self.prop("StartedUSec")
    }

    /// VMs started again after the first (crashes, operator restarts, repairs).
    #[zbus(property)]
    async fn restarts(&self) -> u32 {
        self.prop("Restarts")
    }

    /// Why the last VM ended or could not start, with its last console lines when it failed.
    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.prop("LastError")
    }

    /// The declaration file.
    #[zbus(property)]
    async fn source_file(&self) -> String {
        self.prop("SourceFile")
    }

    /// The line of the declaration in SourceFile.
    #[zbus(property)]
    async fn source_line(&self) -> u32 {
        self.prop("SourceLine")
    }

    /// Hash of the fields that make the VM (what `unikernelctl plan` compares); host
    /// ports and the restart policy are not among them: they change in place.
    #[zbus(property)]
    async fn spec_hash(&self) -> String {
        self.prop("SpecHash")
    }

    /// (host port, guest port) pairs exposed on the host (TCP).
    #[zbus(property)]
    async fn exposed_ports(&self) -> Vec<(u16, u16)> {
        self.prop("ExposedPorts")
    }

    /// Guest memory in bytes.
    #[zbus(property)]
    async fn memory_bytes(&self) -> u64 {
        self.prop("MemoryBytes")
    }

    /// Stopped by an operator (Stop) and held so; see the interface's documentation.
    #[zbus(property)]
    async fn held(&self) -> bool {
        self.prop("Held")
    }

    /// Wakes from standby since the daemon started.
    #[zbus(property)]
    async fn wakes(&self) -> u64 {
        self.prop("Wakes")
    }

    /// How long the last wake took: connection (or Wake) -> guest running again.
    #[zbus(property, name = "LastWakeUSec")]
    async fn last_wake_usec(&self) -> u64 {
        self.prop("LastWakeUSec")
    }

    /// Guest memory in its snapshot (zero pages are not stored); 0 without one.
    #[zbus(property)]
    async fn snapshot_bytes(&self) -> u64 {
        self.prop("SnapshotBytes")
    }

    /// Its `standby` settings ("" when it does not scale to zero).
    #[zbus(property)]
    async fn standby_settings(&self) -> String {
        self.prop("StandbySettings")
    }
}

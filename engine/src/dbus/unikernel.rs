//! `org.unikerneld1.Unikernel`, one object per service at
//! `/org/unikerneld1/unikernel/<escaped name>`.
//!
//! `Stop` is an operator's override of the declaration, which stays the truth: the VM
//! ends and the service is held `stopped` (property `Held`) until `Start` or `Restart`,
//! a change of its declaration, or a restart of the daemon (the hold is not persisted).
use tokio::sync::mpsc;
use zbus::interface;

use super::manager::ask;
use super::{Error, Request, Shared};
use crate::status::Status;

pub struct Unikernel {
    pub name: String,
    pub shared: Shared,
    pub requests: mpsc::UnboundedSender<Request>,
}

impl Unikernel {
    fn with<T: Default>(&self, f: impl FnOnce(&Status) -> T) -> T {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published
            .snapshot
            .services
            .iter()
            .find(|s| s.name == self.name)
            .map(f)
            .unwrap_or_default()
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

    /// The last `lines` console lines (at most 200 are kept), oldest first.
    async fn logs(&self, lines: u32) -> Vec<String> {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published
            .consoles
            .get(&self.name)
            .map(|r| r.tail(lines as usize))
            .unwrap_or_default()
    }

    /// Console lines from `cursor` on (0: all that are kept), and the cursor to pass next
    /// time: how `unikernelctl logs -f` follows.
    async fn logs_since(&self, cursor: u64) -> (Vec<String>, u64) {
        let published = self.shared.read().unwrap_or_else(|p| p.into_inner());
        published
            .consoles
            .get(&self.name)
            .map(|r| r.since(cursor))
            .unwrap_or_default()
    }

    /// The service name, as declared.
    #[zbus(property)]
    async fn name(&self) -> String {
        self.name.clone()
    }

    /// pending, booting, running, stopping, stopped, backoff or failed.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.with(|s| s.state.to_string())
    }

    /// The guest's IPv4 address while a VM runs, else "".
    #[zbus(property)]
    async fn address(&self) -> String {
        self.with(|s| s.address.map(|a| a.to_string()).unwrap_or_default())
    }

    /// The VMM's process id, 0 when no VM runs.
    #[zbus(property)]
    async fn pid(&self) -> u32 {
        self.with(|s| s.pid.unwrap_or(0))
    }

    /// Spawn -> running of the current VM, in microseconds (0 until running).
    #[zbus(property, name = "BootTimeUSec")]
    async fn boot_time_usec(&self) -> u64 {
        self.with(|s| s.boot_ms.map(|ms| (ms * 1000.0) as u64).unwrap_or(0))
    }

    /// VMs started again after the first (crashes, operator restarts).
    #[zbus(property)]
    async fn restarts(&self) -> u32 {
        self.with(|s| s.restarts)
    }

    /// Why the last VM ended or could not start, with its last console lines when it failed.
    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.with(|s| s.last_error.clone().unwrap_or_default())
    }

    /// The declaration file.
    #[zbus(property)]
    async fn source_file(&self) -> String {
        self.with(|s| s.source_file.display().to_string())
    }

    /// The line of the declaration in SourceFile.
    #[zbus(property)]
    async fn source_line(&self) -> u32 {
        self.with(|s| s.source_line as u32)
    }

    /// Hash of the declared spec (what `unikernelctl plan` compares).
    #[zbus(property)]
    async fn spec_hash(&self) -> String {
        self.with(|s| s.spec_hash.clone())
    }

    /// (host port, guest port) pairs exposed on the host (TCP).
    #[zbus(property)]
    async fn exposed_ports(&self) -> Vec<(u16, u16)> {
        self.with(|s| s.exposed.clone())
    }

    /// Guest memory in bytes.
    #[zbus(property)]
    async fn memory_bytes(&self) -> u64 {
        self.with(|s| s.memory_bytes)
    }

    /// Stopped by an operator (Stop) and held so; see the interface's documentation.
    #[zbus(property)]
    async fn held(&self) -> bool {
        self.with(|s| s.held)
    }
}

//! Client proxies of the API, for `unikernelctl` and tests.

use zbus::proxy;
use zbus::zvariant::OwnedObjectPath;

use super::manager::{ListEntry, PlanEntry};

#[proxy(
    interface = "org.unikerneld1.Manager",
    default_service = "org.unikerneld1",
    default_path = "/org/unikerneld1"
)]
pub trait Manager {
    fn list_unikernels(&self) -> zbus::Result<Vec<ListEntry>>;
    fn get_unikernel(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload(&self) -> zbus::Result<Vec<PlanEntry>>;
    fn plan(&self) -> zbus::Result<Vec<PlanEntry>>;
    fn sync(&self) -> zbus::Result<(String, String, Vec<String>)>;
    #[zbus(signal)]
    fn unikernel_new(&self, name: String, path: OwnedObjectPath) -> zbus::Result<()>;
    #[zbus(signal)]
    fn unikernel_removed(&self, name: String, path: OwnedObjectPath) -> zbus::Result<()>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn config_dir(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn n_unikernels(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn state_counts(&self) -> zbus::Result<std::collections::HashMap<String, u32>>;
    #[zbus(property)]
    fn summary(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn declaration_errors(&self) -> zbus::Result<Vec<(String, u32, u32, String)>>;
    #[zbus(property)]
    fn applied_revision(&self) -> zbus::Result<(String, i64, String, bool)>;
    #[zbus(property)]
    fn failed_revision(&self) -> zbus::Result<(String, String, Vec<String>)>;
    #[zbus(property)]
    fn fetch_error(&self) -> zbus::Result<String>;
}

#[proxy(interface = "org.unikerneld1.Unikernel", default_service = "org.unikerneld1")]
pub trait Unikernel {
    fn start(&self) -> zbus::Result<()>;
    fn stop(&self) -> zbus::Result<()>;
    fn restart(&self) -> zbus::Result<()>;
    fn standby(&self) -> zbus::Result<()>;
    fn wake(&self) -> zbus::Result<()>;
    fn logs(&self, lines: u32) -> zbus::Result<Vec<String>>;
    fn logs_since(&self, cursor: u64) -> zbus::Result<(Vec<String>, u64)>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn address(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn pid(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "BootTimeUSec")]
    fn boot_time_usec(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn restarts(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn source_file(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn source_line(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn spec_hash(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn exposed_ports(&self) -> zbus::Result<Vec<(u16, u16)>>;
    #[zbus(property)]
    fn memory_bytes(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn held(&self) -> zbus::Result<bool>;
}

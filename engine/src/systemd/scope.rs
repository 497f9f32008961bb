//! Each VMM in a transient scope of its own, `unikernel-<name>.scope` in `unikernel.slice`,
//! the way systemd-machined places containers: the VMs are not part of unikerneld.service's
//! cgroup, so `systemctl restart unikerneld` (and a package upgrade) touches no VM,
//! `systemctl status unikernel-web.scope` and `systemd-cgtop` show each one, and a
//! declaration's `limits` become the scope's MemoryMax=, CPUWeight=, CPUQuota=, TasksMax=.
//!
//! Only where systemd is PID 1 (`/run/systemd/system` exists, as sd_booted(3) checks).
//! The request goes out after the VMM was spawned, on a task of its own: a VM never waits
//! for systemd to boot (it runs in the daemon's cgroup for the ~1 ms that takes).
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::decl::LimitsSpec;

pub const SLICE: &str = "unikernel.slice";

/// systemd's "no limit" / "default" for the uint64 properties below.
const INFINITY: u64 = u64::MAX;

/// The scope of one service's VMM.
pub fn unit_name(service: &str) -> String {
    // Service names are letters, digits, '-', '_' and '.': valid in a unit name as they are.
    format!("unikernel-{service}.scope")
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Systemd {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;

    fn set_unit_properties(&self, name: &str, runtime: bool, properties: &[(&str, Value<'_>)]) -> zbus::Result<()>;
}

/// systemd's manager on the system bus, when systemd runs this host.
#[derive(Clone)]
pub struct Scopes {
    systemd: SystemdProxy<'static>,
}

/// A replaced VM's old scope lives until its VMM has exited (closing a VM takes ~20 ms
/// here): the new one's request is repeated this often, this long.
const EXISTS_RETRY: Duration = Duration::from_millis(50);
const EXISTS_PATIENCE: Duration = Duration::from_secs(10);

impl Scopes {
    /// `None` without systemd as PID 1 (VMMs then stay in the daemon's cgroup, as before).
    pub async fn connect() -> Option<Scopes> {
        if !std::path::Path::new("/run/systemd/system").exists() {
            return None;
        }
        let conn = match zbus::Connection::system().await {
            Ok(c) => c,
            Err(e) => {
                warn!("systemd runs this host but its bus is not reachable ({e}): VMs stay in unikerneld's cgroup");
                return None;
            }
        };
        match SystemdProxy::new(&conn).await {
            Ok(systemd) => {
                info!("each VM gets a scope of its own in {SLICE}");
                Some(Scopes { systemd })
            }
            Err(e) => {
                warn!("systemd's manager is not reachable ({e}): VMs stay in unikerneld's cgroup");
                None
            }
        }
    }

    /// Moves `pid` into the service's new scope, with its limits, off the caller's path.
    /// A VMM already in it (adopted after a daemon restart) is left where it is.
    pub fn place(&self, service: &str, pid: u32, limits: LimitsSpec) {
        let this = self.clone();
        let service = service.to_string();
        tokio::spawn(async move { this.start(&service, pid, limits).await });
    }

    async fn start(&self, service: &str, pid: u32, limits: LimitsSpec) {
        let unit = unit_name(service);
        // Read here, not on the caller's path: a VMM just spawned is never in it.
        if in_unit(pid, &unit) {
            return;
        }
        let description = format!("unikernel {service}");
        let t0 = Instant::now();
        loop {
            let mut props: Vec<(&str, Value<'_>)> = vec![
                ("Description", Value::from(description.as_str())),
                ("Slice", Value::from(SLICE)),
                ("PIDs", Value::from(vec![pid])),
                // A VMM killed by a signal leaves its scope "failed": collect it anyway,
                // so that the name is free for the service's next VM.
                ("CollectMode", Value::from("inactive-or-failed")),
            ];
            props.extend(limit_properties(&limits, false));
            match self.systemd.start_transient_unit(&unit, "fail", &props, &[]).await {
                Ok(_) => {
                    info!(UNIKERNEL = %service, "VMM {pid} in {unit} ({} ms){}", t0.elapsed().as_millis(),
                        if limits.is_empty() { String::new() } else { format!(", limits {limits}") });
                    return;
                }
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str() == "org.freedesktop.systemd1.UnitExists" && t0.elapsed() < EXISTS_PATIENCE =>
                {
                    if !alive(pid) {
                        return;
                    }
                    tokio::time::sleep(EXISTS_RETRY).await;
                }
                Err(e) if !alive(pid) => {
                    debug!(UNIKERNEL = %service, "VMM {pid} ended before its scope was made: {e}");
                    return;
                }
                Err(e) => {
                    warn!(UNIKERNEL = %service, "VMM {pid} stays in unikerneld's cgroup: cannot create {unit}: {e}");
                    return;
                }
            }
        }
    }

    /// Applies changed limits to a running VM's scope (an in-place update).
    pub fn set_limits(&self, service: &str, limits: LimitsSpec) {
        let this = self.clone();
        let service = service.to_string();
        tokio::spawn(async move {
            let unit = unit_name(&service);
            let props = limit_properties(&limits, true);
            match this.systemd.set_unit_properties(&unit, true, &props).await {
                Ok(()) => info!(UNIKERNEL = %service, "limits of {unit}: {limits}"),
                Err(e) => warn!(UNIKERNEL = %service, "cannot apply limits to {unit}: {e}"),
            }
        });
    }
}

/// The scope properties for `limits`; with `all`, the unset ones too (as "no limit"), so
/// that a limit removed from a declaration is lifted.
fn limit_properties(limits: &LimitsSpec, all: bool) -> Vec<(&'static str, Value<'static>)> {
    let fields = [
        ("MemoryMax", limits.memory_max),
        ("CPUWeight", limits.cpu_weight.map(u64::from)),
        // systemd's CPUQuota=50% is 500 ms of CPU time per second.
        (
            "CPUQuotaPerSecUSec",
            limits.cpu_quota_percent.map(|p| u64::from(p) * 10_000),
        ),
        ("TasksMax", limits.tasks_max.map(u64::from)),
    ];
    fields
        .into_iter()
        .filter(|(_, v)| all || v.is_some())
        .map(|(k, v)| (k, Value::from(v.unwrap_or(INFINITY))))
        .collect()
}

/// Whether `pid`'s cgroup (any hierarchy) is `unit`'s.
fn in_unit(pid: u32, unit: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|text| text.lines().any(|l| l.ends_with(&format!("/{unit}"))))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_systemd_properties() {
        let limits = LimitsSpec {
            memory_max: Some(48 << 20),
            cpu_weight: Some(50),
            cpu_quota_percent: Some(25),
            tasks_max: None,
        };
        let props = limit_properties(&limits, false);
        let names: Vec<&str> = props.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["MemoryMax", "CPUWeight", "CPUQuotaPerSecUSec"]);
        assert_eq!(props[0].1, Value::from(48u64 << 20));
        assert_eq!(props[2].1, Value::from(250_000u64));
        // An in-place update lifts what is no longer declared.
        let lifted = limit_properties(&LimitsSpec::default(), true);
        assert_eq!(lifted.len(), 4);
        assert!(lifted.iter().all(|(_, v)| *v == Value::from(u64::MAX)));
        assert_eq!(unit_name("web-1.a_b"), "unikernel-web-1.a_b.scope");
    }
}

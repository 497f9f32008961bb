//! `limits`: what a service's VMM process may use of the host, applied to its systemd scope
//! (`unikernel-<name>.scope`, a cgroup) where systemd runs the host. Changing them applies
//! to the running VM in place; without systemd they are reported as not applied.
//!
//! ```kdl
//! limits {
//!     memory-max "48M"   // MemoryMax=: guest memory + the VMM's own (~3 MiB)
//!     cpu-weight 50      // CPUWeight=, 1..10000 (systemd's default: 100)
//!     cpu-quota "50%"    // CPUQuota=: at most this share of one CPU (up to 100% per vCPU)
//!     tasks-max 16       // TasksMax=: threads of the VMM (one per vCPU plus two)
//! }
//! ```
use contract::size::MemSize;
use kdl::KdlNode;

use super::diagnostic::{did_you_mean, DeclError, Reporter};
use super::parse::{integer, no_children, one_arg, string};

const FIELDS: [&str; 4] = ["memory-max", "cpu-weight", "cpu-quota", "tasks-max"];

/// Declared resource limits; each `None` is systemd's default (no limit, weight 100).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimitsSpec {
    pub memory_max: Option<u64>,
    pub cpu_weight: Option<u16>,
    /// Percent of one CPU.
    pub cpu_quota_percent: Option<u32>,
    pub tasks_max: Option<u32>,
}

impl LimitsSpec {
    pub fn is_empty(&self) -> bool {
        *self == LimitsSpec::default()
    }
}

impl std::fmt::Display for LimitsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = self.memory_max {
            parts.push(format!("memory-max={}", MemSize::from_bytes(m)));
        }
        if let Some(w) = self.cpu_weight {
            parts.push(format!("cpu-weight={w}"));
        }
        if let Some(q) = self.cpu_quota_percent {
            parts.push(format!("cpu-quota={q}%"));
        }
        if let Some(t) = self.tasks_max {
            parts.push(format!("tasks-max={t}"));
        }
        match parts.is_empty() {
            true => f.write_str("none"),
            false => f.write_str(&parts.join(" ")),
        }
    }
}

/// `limits { ... }`; `memory` and `vcpus` are the service's, to check the limits against
/// them (a memory-max below the guest's memory would get the VM killed by its own guest).
pub fn parse(r: &Reporter, node: &KdlNode, memory: u64, vcpus: u8, diags: &mut Vec<DeclError>) -> Option<LimitsSpec> {
    let before = diags.len();
    if let Some(e) = node.entries().first() {
        diags.push(r.error(
            e.span(),
            "`limits` takes a block, not values",
            "unexpected value",
            Some("write limits { memory-max \"64M\" }".into()),
        ));
    }
    let mut spec = LimitsSpec::default();
    let mut seen: Vec<&str> = Vec::new();
    for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
        let field = child.name().value();
        no_children(r, child, diags);
        if !FIELDS.contains(&field) {
            diags.push(r.error(
                child.name().span(),
                format!("unknown limit `{field}`"),
                "unknown",
                Some(did_you_mean(field, &FIELDS).unwrap_or_else(|| format!("limits are {}", FIELDS.join(", ")))),
            ));
            continue;
        }
        if seen.contains(&field) {
            diags.push(r.error(
                child.name().span(),
                format!("`{field}` is set twice"),
                "second time",
                Some("keep one".into()),
            ));
            continue;
        }
        seen.push(field);
        let Some(entry) = one_arg(r, child, diags) else {
            continue;
        };
        match field {
            "memory-max" => {
                let Some(value) = string(r, entry, field, diags) else {
                    continue;
                };
                match value.parse::<MemSize>().map(MemSize::bytes) {
                    Ok(b) if b < memory => diags.push(r.error(
                        entry.span(),
                        format!(
                            "memory-max {value:?} is less than the guest's memory ({})",
                            MemSize::from_bytes(memory)
                        ),
                        "below the guest's memory",
                        Some(format!(
                            "the VM would be killed once its guest used its own memory: allow the guest's memory plus ~4M, like \"{}\"",
                            MemSize::from_bytes(memory + (4 << 20))
                        )),
                    )),
                    Ok(b) => spec.memory_max = Some(b),
                    Err(_) => diags.push(r.error(
                        entry.span(),
                        format!("invalid size {value:?}"),
                        "invalid size",
                        Some("sizes look like 48M or 1G".into()),
                    )),
                }
            }
            "cpu-weight" => {
                if let Some(w) = integer(r, entry, "cpu-weight", 1..=10_000, diags) {
                    spec.cpu_weight = Some(w as u16);
                }
            }
            "cpu-quota" => {
                let Some(value) = string(r, entry, field, diags) else {
                    continue;
                };
                let max = 100 * u32::from(vcpus);
                match value.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    Some(p) if (1..=max).contains(&p) => spec.cpu_quota_percent = Some(p),
                    _ => diags.push(r.error(
                        entry.span(),
                        format!("invalid cpu-quota {value:?}"),
                        "invalid quota",
                        Some(format!(
                            "write a share of one CPU from \"1%\" to \"{max}%\" (100% per vCPU)"
                        )),
                    )),
                }
            }
            _ => {
                // The VMM runs one thread per vCPU plus its event loop and main thread.
                let least = i128::from(vcpus) + 2;
                if let Some(t) = integer(r, entry, "tasks-max", least..=1_000_000, diags) {
                    spec.tasks_max = Some(t as u32);
                }
            }
        }
    }
    (diags.len() == before).then_some(spec)
}

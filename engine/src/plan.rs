//! plan = diff(desired, observed): a pure function, so it is tested without KVM and
//! `unikernelctl plan` can show it before anything runs.
use std::collections::BTreeMap;
use std::fmt;

use crate::decl::Spec;

/// What is known about a running service.
#[derive(Clone, Debug)]
pub struct Observed {
    pub spec_hash: String,
    /// The spec it runs, when known (not after adopting a VM from an older daemon).
    pub spec: Option<Spec>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Create {
        spec: Spec,
    },
    /// Stop the old VM, start the new one; `changed` names the fields that differ.
    Replace {
        spec: Spec,
        changed: Vec<String>,
    },
    /// Only fields applied in place changed (host ports, restart policy): the VM stays.
    Update {
        spec: Spec,
        changed: Vec<String>,
    },
    Stop {
        name: String,
    },
    Unchanged {
        name: String,
    },
}

impl Action {
    /// The word for it on D-Bus and in JSON: create, replace, update, stop, unchanged.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Replace { .. } => "replace",
            Action::Update { .. } => "update",
            Action::Stop { .. } => "stop",
            Action::Unchanged { .. } => "unchanged",
        }
    }

    /// The fields that changed (replace, update), else none.
    pub fn changed(&self) -> &[String] {
        match self {
            Action::Replace { changed, .. } | Action::Update { changed, .. } => changed,
            _ => &[],
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Action::Create { spec } | Action::Replace { spec, .. } | Action::Update { spec, .. } => &spec.name,
            Action::Stop { name } | Action::Unchanged { name } => name,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Sorted by service name.
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.actions.iter().filter(|a| f(a)).count()
    }

    /// True when applying it would change nothing.
    pub fn is_noop(&self) -> bool {
        self.actions.iter().all(|a| matches!(a, Action::Unchanged { .. }))
    }
}

pub fn plan(desired: &BTreeMap<String, Spec>, observed: &BTreeMap<String, Observed>) -> Plan {
    let mut actions = Vec::with_capacity(desired.len() + observed.len());
    for (name, spec) in desired {
        actions.push(match observed.get(name) {
            None => Action::Create { spec: spec.clone() },
            Some(o) if o.spec_hash == spec.hash() => {
                let changed = o
                    .spec
                    .as_ref()
                    .map(|old| spec.changed_live_fields(old))
                    .unwrap_or_default();
                if changed.is_empty() {
                    Action::Unchanged { name: name.clone() }
                } else {
                    Action::Update {
                        spec: spec.clone(),
                        changed: changed.into_iter().map(String::from).collect(),
                    }
                }
            }
            Some(o) => {
                let changed = match &o.spec {
                    Some(old) => spec.changed_fields(old).into_iter().map(String::from).collect(),
                    None => vec!["spec (the running VM was started from a declaration not known here)".to_string()],
                };
                Action::Replace {
                    spec: spec.clone(),
                    changed,
                }
            }
        });
    }
    for name in observed.keys().filter(|n| !desired.contains_key(*n)) {
        actions.push(Action::Stop { name: name.clone() });
    }
    actions.sort_by(|a, b| a.name().cmp(b.name()));
    Plan { actions }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            match a {
                Action::Create { spec } => writeln!(f, "  + {} (create, from {})", spec.name, spec.source)?,
                Action::Replace { spec, changed } => writeln!(
                    f,
                    "  ~ {} (replace: {} changed, from {})",
                    spec.name,
                    changed.join(", "),
                    spec.source
                )?,
                Action::Update { spec, changed } => writeln!(
                    f,
                    "  ~ {} (update in place: {} changed, the VM keeps running, from {})",
                    spec.name,
                    changed.join(", "),
                    spec.source
                )?,
                Action::Stop { name } => writeln!(f, "  - {name} (stop: no longer declared)")?,
                Action::Unchanged { .. } => {}
            }
        }
        f.write_str(&summary(|kind| self.count(|a| a.kind() == kind)))
    }
}

/// The closing line of a plan, from the number of actions of each kind
/// ([`Action::kind`]): "Plan: 1 to create, ...".
pub fn summary(count: impl Fn(&str) -> usize) -> String {
    format!(
        "Plan: {} to create, {} to replace, {} to update in place, {} to stop, {} unchanged.",
        count("create"),
        count("replace"),
        count("update"),
        count("stop"),
        count("unchanged")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decl::parse::parse_file;
    use std::path::Path;

    fn specs(text: &str) -> BTreeMap<String, Spec> {
        let (specs, diags) = parse_file(Path::new("/t.kdl"), text);
        assert!(diags.is_empty(), "{diags:?}");
        specs.into_iter().map(|s| (s.name.clone(), s)).collect()
    }

    fn observe(specs: &BTreeMap<String, Spec>) -> BTreeMap<String, Observed> {
        specs
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    Observed {
                        spec_hash: s.hash(),
                        spec: Some(s.clone()),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn creates_replaces_stops_and_leaves_alone() {
        let before = specs(
            "unikernel \"a\" { image \"/a\" }\nunikernel \"b\" { image \"/b\" }\nunikernel \"c\" { image \"/c\" }\n",
        );
        let after = specs("unikernel \"a\" { image \"/a\" }\nunikernel \"b\" { image \"/b\"\n memory \"32M\" }\nunikernel \"d\" { image \"/d\" }\n");
        let p = plan(&after, &observe(&before));
        let kinds: Vec<(&str, &str)> = p.actions.iter().map(|a| (a.name(), a.kind())).collect();
        assert_eq!(
            kinds,
            vec![("a", "unchanged"), ("b", "replace"), ("c", "stop"), ("d", "create")]
        );
        assert!(matches!(&p.actions[1], Action::Replace { changed, .. } if changed == &vec!["memory".to_string()]));
        let text = p.to_string();
        assert!(text.contains("~ b (replace: memory changed"), "{text}");
        assert!(
            text.ends_with("Plan: 1 to create, 1 to replace, 0 to update in place, 1 to stop, 1 unchanged."),
            "{text}"
        );
    }

    #[test]
    fn a_new_host_port_or_restart_policy_is_an_update_in_place() {
        let before = specs("unikernel \"a\" { image \"/a\"; net { expose 80 guest=80 } }\n");
        let after = specs("unikernel \"a\" { image \"/a\"; restart \"never\"; net { expose 81 guest=80 } }\n");
        let p = plan(&after, &observe(&before));
        assert!(
            matches!(&p.actions[0], Action::Update { changed, .. } if changed == &vec!["expose".to_string(), "restart".into()]),
            "{p:?}"
        );
        assert!(
            p.to_string().contains("~ a (update in place: expose, restart changed"),
            "{p}"
        );
        assert!(!p.is_noop());
    }

    #[test]
    fn the_same_desired_state_twice_plans_nothing() {
        let s = specs("unikernel \"a\" { image \"/a\" }\n");
        assert!(plan(&s, &observe(&s)).is_noop());
        assert!(!plan(&s, &BTreeMap::new()).is_noop());
    }

    #[test]
    fn an_adopted_vm_of_unknown_spec_is_replaced_when_hashes_differ() {
        let s = specs("unikernel \"a\" { image \"/a\" }\n");
        let observed = BTreeMap::from([(
            "a".to_string(),
            Observed {
                spec_hash: "0".into(),
                spec: None,
            },
        )]);
        assert!(
            matches!(&plan(&s, &observed).actions[0], Action::Replace { changed, .. } if changed[0].starts_with("spec"))
        );
    }
}

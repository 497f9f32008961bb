//! Every file's last good specs -> one desired state. A service name, an explicit address
//! or a host port declared twice is reported at both places, and the declaration that was
//! already in force keeps it.
//!
//! A reload after an edit to one file must not cost a pass over every service (thousands
//! on a dense host): while no two declarations clash, a change is applied in place, and
//! only its services are named as touched. A clash, or a change that would make one,
//! falls back to the full merge, which alone decides who wins and reports both places.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use miette::SourceSpan;

use super::diagnostic::{DeclError, Reporter};
use super::spec::Spec;

/// What each file last declared, with the text it was parsed from (for diagnostics).
/// Hashed, not ordered: [`Merged::full`] sorts what it needs, and at 10,000 files the
/// component-wise `Path` comparisons of a `BTreeMap` were a tenth of a cold load.
pub type Files = HashMap<PathBuf, (Vec<Spec>, Arc<String>)>;

/// A file whose specs changed: what it declared before (its new specs are in [`Files`],
/// unless it is gone).
pub struct Changed {
    pub file: PathBuf,
    pub before: Vec<Spec>,
}

/// The merged desired state and what makes changing it in place possible.
#[derive(Default)]
pub struct Merged {
    specs: Arc<BTreeMap<String, Spec>>,
    /// Which service holds each explicit address and each host port.
    addresses: HashMap<Ipv4Addr, String>,
    ports: HashMap<u16, String>,
    /// The last full merge found a clash: only another full merge may decide again.
    clashed: bool,
    /// No full merge yet (or files were seeded since): the specs are not the files'.
    stale: bool,
}

impl Merged {
    /// The desired state: service name -> spec. Shared, not copied: drop it before the
    /// next change, or that change copies the map once.
    pub fn specs(&self) -> Arc<BTreeMap<String, Spec>> {
        self.specs.clone()
    }

    /// The files were replaced wholesale: the next merge must be a full one.
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// Applies `changes` in place if no clash is involved, and returns the names of the
    /// services that appeared, disappeared or may have changed. `None`: not possible; call
    /// [`Merged::full`].
    pub fn apply(&mut self, files: &Files, changes: &[Changed]) -> Option<BTreeSet<String>> {
        if self.clashed || self.stale {
            return None;
        }
        let mut touched = BTreeSet::new();
        let specs = Arc::make_mut(&mut self.specs);
        for change in changes {
            for old in &change.before {
                touched.insert(old.name.clone());
                if specs.get(&old.name).is_some_and(|s| s.source.file == change.file) {
                    if let Some(gone) = specs.remove(&old.name) {
                        forget(&mut self.addresses, &mut self.ports, &gone);
                    }
                }
            }
        }
        for change in changes {
            let Some((now, _)) = files.get(&change.file) else {
                continue;
            };
            for spec in now {
                touched.insert(spec.name.clone());
                let address = spec.net.as_ref().and_then(|n| n.address);
                let taken = specs.contains_key(&spec.name)
                    || address.is_some_and(|a| self.addresses.contains_key(&a))
                    || spec.exposed().any(|e| self.ports.contains_key(&e.host));
                if taken {
                    // Half applied: the full merge starts again from the files.
                    self.stale = true;
                    return None;
                }
                remember(&mut self.addresses, &mut self.ports, spec);
                specs.insert(spec.name.clone(), spec.clone());
            }
        }
        Some(touched)
    }

    /// Merges every file again; the file that declared a service last time wins a
    /// duplicate. Returns the clashes, each reported at both places.
    pub fn full(&mut self, files: &Files) -> Vec<DeclError> {
        let owner: HashMap<&str, &PathBuf> = self.specs.iter().map(|(k, s)| (k.as_str(), &s.source.file)).collect();
        // Files that declared a service last time go first, so they keep it.
        let mut candidates: Vec<(&Spec, &Arc<String>)> = files
            .values()
            .flat_map(|(specs, text)| specs.iter().map(move |s| (s, text)))
            .collect();
        // Keys borrowed, not cloned, and computed once each. The files are in one
        // directory: their paths in byte order are in name order.
        candidates.sort_by_cached_key(|&(s, _)| {
            (
                owner.get(s.name.as_str()) != Some(&&s.source.file),
                s.source.file.as_os_str(),
                s.source.offset,
            )
        });
        // Hashed while deciding, sorted once at the end: at 10,000 services an ordered
        // map's string compares on every insert were a fifth of a cold load's merge.
        let mut by_name: HashMap<&str, (&Spec, &Arc<String>)> = HashMap::with_capacity(candidates.len());
        let mut by_address = HashMap::new();
        let mut by_port = HashMap::with_capacity(candidates.len());
        let mut errors = Vec::new();
        'next: for (spec, text) in candidates {
            let mut clash = |what: String, first: (&Spec, &Arc<String>)| {
                errors.push(report(
                    spec,
                    text,
                    format!("{what} is also declared at {}", first.0.source),
                    "declared again here",
                ));
                errors.push(report(
                    first.0,
                    first.1,
                    format!("{what} is also declared at {}", spec.source),
                    "first declared here (kept)",
                ));
            };
            if let Some(first) = by_name.get(spec.name.as_str()) {
                clash(format!("service {:?}", spec.name), *first);
                continue 'next;
            }
            if let Some(net) = &spec.net {
                if let Some((address, first)) = net.address.and_then(|a| by_address.get(&a).map(|f| (a, f))) {
                    clash(format!("address {address}"), *first);
                    continue 'next;
                }
                for e in &net.expose {
                    if let Some(first) = by_port.get(&e.host) {
                        clash(format!("host port {}", e.host), *first);
                        continue 'next;
                    }
                }
            }
            if let Some(a) = spec.net.as_ref().and_then(|n| n.address) {
                by_address.insert(a, (spec, text));
            }
            for e in spec.exposed() {
                by_port.insert(e.host, (spec, text));
            }
            by_name.insert(&spec.name, (spec, text));
        }
        self.addresses.clear();
        self.ports.clear();
        let mut winners: Vec<&Spec> = by_name.into_values().map(|(spec, _)| spec).collect();
        winners.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for spec in &winners {
            remember(&mut self.addresses, &mut self.ports, spec);
        }
        // In key order: the map is built in bulk, not insert by insert.
        self.specs = Arc::new(winners.into_iter().map(|s| (s.name.clone(), s.clone())).collect());
        self.clashed = !errors.is_empty();
        self.stale = false;
        errors
    }
}

fn remember(addresses: &mut HashMap<Ipv4Addr, String>, ports: &mut HashMap<u16, String>, spec: &Spec) {
    if let Some(a) = spec.net.as_ref().and_then(|n| n.address) {
        addresses.insert(a, spec.name.clone());
    }
    for e in spec.exposed() {
        ports.insert(e.host, spec.name.clone());
    }
}

fn forget(addresses: &mut HashMap<Ipv4Addr, String>, ports: &mut HashMap<u16, String>, spec: &Spec) {
    if let Some(a) = spec.net.as_ref().and_then(|n| n.address) {
        addresses.remove(&a);
    }
    for e in spec.exposed() {
        ports.remove(&e.host);
    }
}

fn report(spec: &Spec, text: &Arc<String>, message: String, label: &str) -> DeclError {
    Reporter::new(&spec.source.file, text.clone()).error(
        SourceSpan::from(spec.source.offset..spec.source.offset + 9),
        message,
        label,
        Some("keep one of the two declarations".into()),
    )
}

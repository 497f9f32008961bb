//! What a declaration means, fully validated: invalid specs cannot be constructed by the
//! parser, so everything downstream (plan, reconcile) can trust a `Spec`.
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Where a declaration was written (for status and errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Byte offset of the declaration, for diagnostics that point at it.
    pub offset: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub const NAMES: [&'static str; 3] = ["always", "on-failure", "never"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(RestartPolicy::Always),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "never" => Some(RestartPolicy::Never),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// A host port forwarded to a guest port (TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Expose {
    pub host: u16,
    pub guest: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetSpec {
    /// Declared address, or `None` for one from the pool.
    pub address: Option<Ipv4Addr>,
    pub expose: Vec<Expose>,
}

/// One declared unikernel service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub image: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// `KEY=VALUE` pairs appended to the command line, sorted by key.
    pub env: BTreeMap<String, String>,
    pub memory_bytes: u64,
    pub vcpus: u8,
    pub net: Option<NetSpec>,
    pub restart: RestartPolicy,
    pub source: Source,
    /// [`Spec::hash`], computed once (plans ask for it for every service on every reload).
    pub hash_cache: HashCache,
}

/// A memo of [`Spec::hash`] that takes no part in comparing specs.
#[derive(Clone, Debug, Default)]
pub struct HashCache(std::sync::OnceLock<String>);

impl PartialEq for HashCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HashCache {}

impl Spec {
    /// The fields that make two specs "the same VM", each with its name; `source` is not one.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("image", self.image.display().to_string()),
            (
                "initrd",
                self.initrd
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("cmdline", self.cmdline.clone()),
            ("env", format!("{:?}", self.env)),
            ("memory", self.memory_bytes.to_string()),
            ("vcpus", self.vcpus.to_string()),
            ("net", format!("{:?}", self.net)),
            ("restart", self.restart.as_str().to_string()),
        ]
    }

    /// Names of the fields that differ between `self` and `other`.
    pub fn changed_fields(&self, other: &Spec) -> Vec<&'static str> {
        self.fields()
            .into_iter()
            .zip(other.fields())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }

    /// A stable hash of [`Spec::fields`] (FNV-1a, hex): equal specs, equal hashes, across
    /// runs. Memoized: change a field of a spec only on a fresh clone of it, never in place.
    pub fn hash(&self) -> String {
        self.hash_cache.0.get_or_init(|| self.compute_hash()).clone()
    }

    fn compute_hash(&self) -> String {
        let mut text = String::new();
        for (k, v) in self.fields() {
            text.push_str(k);
            text.push('=');
            text.push_str(&v);
            text.push('\n');
        }
        format!("{:016x}", crate::net::mac::fnv1a(text.as_bytes()))
    }

    /// The guest command line: the declared one, then the environment.
    pub fn full_cmdline(&self) -> String {
        let mut parts = vec![self.cmdline.clone()];
        parts.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        parts.retain(|p| !p.is_empty());
        parts.join(" ")
    }
}

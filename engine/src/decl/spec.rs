//! What a declaration means, fully validated: invalid specs cannot be constructed by the
//! parser, so everything downstream (plan, reconcile) can trust a `Spec`.
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::template::{self, Values};

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
    /// The host address the port listens on (0.0.0.0: all of them).
    pub bind: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetSpec {
    /// Declared address, or `None` for one from the pool.
    pub address: Option<Ipv4Addr>,
    pub expose: Vec<Expose>,
    /// `connections max=N idle="60s"`: what the host ports accept (None: the defaults).
    pub connections: Connections,
}

/// Limits on a service's host-port connections, as declared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Connections {
    /// Open connections at most (more are closed at once).
    pub max: Option<u32>,
    /// A connection quiet both ways for this long is closed.
    pub idle: Option<std::time::Duration>,
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
    /// Scale to zero; `None`: the VM runs while declared.
    pub standby: Option<super::StandbySpec>,
    /// Resource limits of the VMM's systemd scope (applied in place).
    pub limits: super::LimitsSpec,
    pub source: Source,
    /// [`Spec::hash`], computed once (plans ask for it for every service on every reload).
    pub hash_cache: HashCache,
}

/// The guest's network, as placeholders and the default parameters spell it.
#[derive(Clone, Copy, Debug)]
pub struct GuestNet {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: contract::mac::MacAddr,
}

impl GuestNet {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0))
    }
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

/// Version of the spec hash's encoding. Bump it only when the meaning of a VM-affecting
/// field changes: a new version replaces every adopted VM once, on the upgrade.
pub const HASH_VERSION: &str = "uk-spec-v1";

impl Spec {
    /// The fields that make two specs "the same VM", each with its name, in a canonical
    /// text form. Fields applied to a running VM in place (`expose`, `restart`, `standby`,
    /// `connections`, `limits`) and the
    /// source place are not among them.
    pub fn vm_fields(&self) -> [(&'static str, String); 7] {
        let net = match &self.net {
            None => "none".to_string(),
            Some(n) => match n.address {
                Some(a) => format!("nic address={a}"),
                None => "nic address=pool".to_string(),
            },
        };
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        [
            ("image", self.image.display().to_string()),
            (
                "initrd",
                self.initrd
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("cmdline", self.cmdline.clone()),
            ("env", env.join("\0")),
            ("memory", self.memory_bytes.to_string()),
            ("vcpus", self.vcpus.to_string()),
            ("net", net),
        ]
    }

    /// The fields applied to a running VM without replacing it.
    pub fn live_fields(&self) -> [(&'static str, String); 5] {
        let expose: Vec<String> = self
            .exposed()
            .map(|e| match e.bind.is_unspecified() {
                true => format!("{}:{}", e.host, e.guest),
                false => format!("{}:{}:{}", e.bind, e.host, e.guest),
            })
            .collect();
        [
            ("expose", expose.join(",")),
            ("restart", self.restart.as_str().to_string()),
            (
                "standby",
                self.standby.map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
            ),
            ("connections", format!("{:?}", self.net.as_ref().map(|n| n.connections))),
            ("limits", self.limits.to_string()),
        ]
    }

    /// Every host port this spec exposes.
    pub fn exposed(&self) -> impl Iterator<Item = Expose> + '_ {
        self.net.iter().flat_map(|n| n.expose.iter().copied())
    }

    /// Names of the VM-affecting fields that differ between `self` and `other`.
    pub fn changed_fields(&self, other: &Spec) -> Vec<&'static str> {
        diff(&self.vm_fields(), &other.vm_fields())
    }

    /// Whether the live fields are equal (cheaper than [`Spec::changed_live_fields`]: no
    /// text; this runs for every service on every reload).
    pub fn same_live_fields(&self, other: &Spec) -> bool {
        self.restart == other.restart
            && self.standby == other.standby
            && self.exposed().eq(other.exposed())
            && self.net.as_ref().map(|n| n.connections) == other.net.as_ref().map(|n| n.connections)
            && self.limits == other.limits
    }

    /// Names of the live fields that differ (an in-place update when nothing else does).
    pub fn changed_live_fields(&self, other: &Spec) -> Vec<&'static str> {
        diff(&self.live_fields(), &other.live_fields())
    }

    /// A hash of the VM-affecting fields, stable across releases: FNV-1a (64 bits, hex) over
    /// [`HASH_VERSION`] and each field as `name`, length, value. Adding a field to `Spec`
    /// does not change it; the VM record keeps it, so an upgraded daemon adopts the VMs of
    /// the one before. Memoized: change a spec only on a fresh clone, never in place.
    pub fn hash(&self) -> String {
        self.hash_cache.0.get_or_init(|| self.compute_hash()).clone()
    }

    fn compute_hash(&self) -> String {
        let mut text = String::from(HASH_VERSION);
        text.push('\n');
        for (k, v) in self.vm_fields() {
            // Length-prefixed, so no value can forge the boundary to the next field.
            text.push_str(&format!("{k} {} {v}\n", v.len()));
        }
        format!("{:016x}", contract::fnv1a(text.as_bytes()))
    }

    /// The guest command line: the declared one with its placeholders filled in, then the
    /// environment as `KEY=VALUE`, then, when the guest has a network and the declaration
    /// did not say how to spell it (no network placeholder), `ip=A/P gw=G` as our example
    /// guests read it. Everything added is a kernel parameter: it goes before any ` -- `.
    pub fn guest_cmdline(&self, net: Option<&GuestNet>) -> String {
        let values = Values {
            name: &self.name,
            address: net.map(|n| n.address.to_string()),
            prefix: net.map(|n| n.prefix.to_string()),
            gateway: net.map(|n| n.gateway.to_string()),
            netmask: net.map(|n| n.netmask().to_string()),
            mac: net.map(|n| n.mac.to_string()),
        };
        let mut added: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", template::expand(v, &values)))
            .collect();
        let spelled = std::iter::once(&self.cmdline)
            .chain(self.env.values())
            .any(|t| template::placeholders(t).is_ok_and(|used| template::uses_network(&used)));
        if let (Some(n), false) = (net, spelled) {
            added.push(format!("ip={}/{} gw={}", n.address, n.prefix, n.gateway));
        }
        contract::cmdline::add_kernel_params(&template::expand(&self.cmdline, &values), &added)
    }
}

fn diff<const N: usize>(a: &[(&'static str, String); N], b: &[(&'static str, String); N]) -> Vec<&'static str> {
    a.iter().zip(b).filter(|(x, y)| x.1 != y.1).map(|(x, _)| x.0).collect()
}

#[cfg(test)]
mod tests {
    use crate::decl::parse::parse_file;
    use std::path::Path;

    fn one(text: &str) -> super::Spec {
        let (mut specs, diags) = parse_file(Path::new("/etc/unikernels/web.kdl"), text);
        assert!(diags.is_empty(), "{diags:?}");
        specs.remove(0)
    }

    /// The hash is a promise across releases (an upgraded daemon adopts VMs by it): this
    /// pins it (the values were also computed apart from this code, from the encoding
    /// documented on [`super::Spec::hash`]). If this test fails, every VM on every upgraded host would be replaced.
    #[test]
    fn the_hash_of_a_reference_spec_is_pinned() {
        let spec = one(r#"unikernel "web" {
    image "/usr/share/unikerneld/images/http"
    cmdline "port=80 name=web"
    env LOG="info" MODE="prod"
    memory "32M"
    vcpus 2
    initrd "/srv/initrd"
    net { address "10.200.0.9"; expose 8080 guest=80 }
    restart "on-failure"
}
"#);
        assert_eq!(spec.hash(), "82ee1ac3dc731a3f");
        assert_eq!(one("unikernel \"a\" { image \"/a\" }\n").hash(), "af1f05aca5d525d5");
    }

    #[test]
    fn ports_restart_policy_and_place_do_not_change_the_vm() {
        let a = one("unikernel \"w\" { image \"/a\"; net { expose 80 guest=80 } }\n");
        let b = one("\n\nunikernel \"w\" { image \"/a\"; restart \"never\"; net { expose 81 guest=80 } }\n");
        assert_eq!(a.hash(), b.hash());
        assert_eq!(b.changed_live_fields(&a), vec!["expose", "restart"]);
        assert!(b.changed_fields(&a).is_empty());
        let c = one("unikernel \"w\" { image \"/a\" }\n");
        assert_ne!(a.hash(), c.hash(), "a NIC is part of the VM");
        assert_eq!(c.changed_fields(&a), vec!["net"]);
    }

    fn net() -> super::GuestNet {
        super::GuestNet {
            address: "10.200.0.5".parse().unwrap(),
            prefix: 16,
            gateway: "10.200.0.1".parse().unwrap(),
            mac: contract::mac::MacAddr::derived("web"),
        }
    }

    #[test]
    fn the_guest_command_line_fills_placeholders_and_keeps_app_arguments_last() {
        let plain = one("unikernel \"web\" { image \"/a\"; cmdline \"port=80\"; env LOG=\"info\"; net { } }\n");
        assert_eq!(
            plain.guest_cmdline(Some(&net())),
            "port=80 LOG=info ip=10.200.0.5/16 gw=10.200.0.1",
            "no network placeholder: our own ip= gw= is added"
        );
        let unikraft = one(
            "unikernel \"web\" { image \"/a\"; cmdline \"netdev.ip={address}/{prefix}:{gateway} -- -p 80\"; env LOG=\"info\"; net { } }\n",
        );
        assert_eq!(
            unikraft.guest_cmdline(Some(&net())),
            "netdev.ip=10.200.0.5/16:10.200.0.1 LOG=info -- -p 80"
        );
        let linux = one(
            "unikernel \"web\" { image \"/a\"; cmdline \"console=ttyS0 ip={address}::{gateway}:{netmask}::eth0:off\"; env HOST=\"{name}\"; net { } }\n",
        );
        assert_eq!(
            linux.guest_cmdline(Some(&net())),
            "console=ttyS0 ip=10.200.0.5::10.200.0.1:255.255.0.0::eth0:off HOST=web"
        );
        let by_env = one("unikernel \"web\" { image \"/a\"; env IP=\"{address}\" MAC=\"{mac}\"; net { } }\n");
        assert_eq!(
            by_env.guest_cmdline(Some(&net())),
            format!("IP=10.200.0.5 MAC={}", contract::mac::MacAddr::derived("web")),
            "a network placeholder in env says how too"
        );
        let no_net = one("unikernel \"web\" { image \"/a\"; cmdline \"name={name} -- x\" }\n");
        assert_eq!(no_net.guest_cmdline(None), "name=web -- x");
    }
}

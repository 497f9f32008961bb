//! The command line of `unikerneld` (here, not in the binary, so that the man page and the
//! shell completions are generated from the same definition).
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::net::AddressPool;

/// The VMM's path when `--vmm` is not given, set when a package is built
/// (`UNIKERNELD_VMM=/usr/libexec/unikerneld/unikernel-vmm cargo build`): the VMM is not a
/// program users run, so it does not belong on PATH.
pub const BUILT_IN_VMM: Option<&str> = option_env!("UNIKERNELD_VMM");

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Network {
    /// Each tap is its own link with a /32 route and proxy ARP (no limit on VMs)
    Routed,
    /// Every tap is a port of one bridge holding the gateway (at most 1024 VMs)
    Bridged,
}

#[derive(Parser, Debug)]
#[command(
    name = "unikerneld",
    version,
    about = "Converge a directory of KDL declarations into running KVM unikernels.",
    after_help = "Edit the declarations and the daemon converges: new services boot, changed ones are \
replaced, removed ones stop. SIGHUP (systemctl reload) reloads at once. The daemon's exit never stops \
VMs: a new daemon adopts them from the state directory.\n\n\
Where systemd is PID 1, each VM runs in its own scope, unikernel-<name>.scope in unikernel.slice \
(systemctl status unikernel-web.scope, systemd-cgtop), with the declaration's limits. \
`systemctl stop unikerneld` leaves the VMs running (their host ports, served by the daemon, close \
until it starts again); `systemctl stop unikerneld unikernel.slice` stops everything.\n\n\
Logs go to the journal when it is there (each service's events and console lines carry \
UNIKERNEL=<name>), else to stderr; RUST_LOG filters (default info)."
)]
pub struct Cli {
    /// Directory of declarations (*.kdl)
    #[arg(long, value_name = "DIR", default_value = "/etc/unikernels")]
    pub config_dir: PathBuf,

    /// Runtime state: VM records, console sockets, status.json
    #[arg(long, value_name = "DIR", default_value = "/run/unikerneld")]
    pub state_dir: PathBuf,

    /// Snapshots of services on standby (one folder each; as large as the memory their
    /// guests touched)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/unikerneld/snapshots")]
    pub snapshot_dir: PathBuf,

    /// The per-VM monitor [default: the path built in (the package's is
    /// /usr/libexec/unikerneld/unikernel-vmm), else unikernel-vmm next to this program, else
    /// on PATH]
    #[arg(long, value_name = "PATH")]
    pub vmm: Option<PathBuf>,

    /// How guests reach the host
    #[arg(long, value_enum, default_value = "routed")]
    pub network: Network,

    /// Bridge name for --network bridged
    #[arg(long, value_name = "NAME", default_value = "ukbr0")]
    pub bridge: String,

    /// Guest addresses come from this pool; the first address is the host side (gateway)
    #[arg(long, value_name = "CIDR", default_value = "10.200.0.0/16")]
    pub pool: AddressPool,

    /// Full reload this often (seconds), whatever inotify reported
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub resync: u64,

    /// Jailed VMMs run as uids (and gids) from FIRST to FIRST+COUNT-1, one of its own each;
    /// no account needs to exist for them. Only a daemon running as root jails its VMMs
    #[arg(long, value_name = "FIRST:COUNT", default_value_t = crate::supervise::uids::UidRange::default())]
    pub vm_uids: crate::supervise::uids::UidRange,

    /// Keep up to N VMMs started ahead of need, their VMs created, for the memory sizes and
    /// vCPU counts started in the last 5 minutes (one each, more while starts come faster);
    /// a start takes one and skips creating its VM. 0: no pool
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub warm_pool: usize,

    /// Serve metrics in the Prometheus text format at ADDRESS:PORT (http://.../metrics) or
    /// unix:/PATH; off by default
    #[arg(long, value_name = "ENDPOINT")]
    pub metrics: Option<crate::metrics::server::Endpoint>,

    /// Follow this git repository (file://, https://, ssh:// URL) instead of reading
    /// --config-dir: each new commit of --git-ref is checked whole and applied, or refused
    /// whole
    #[arg(long, value_name = "URL")]
    pub git: Option<String>,

    /// The branch or tag to follow
    #[arg(long, value_name = "REF", default_value = "main")]
    pub git_ref: String,

    /// This host's folder in the repository; %H is the host name (e.g. hosts/%H)
    #[arg(long, value_name = "PATH", default_value = "")]
    pub git_path: String,

    /// How often to fetch ("30s", "5m"); `unikernelctl sync` fetches at once
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_poll)]
    pub git_poll: std::time::Duration,

    /// The mirror and the checked-out revisions (kept across reboots: a host starts on the
    /// revision it applied last, even with the remote unreachable)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/unikerneld/git")]
    pub git_dir: PathBuf,

    /// Refuse commits that are not signed (ssh signatures) by a key in this allowed-signers
    /// file (git's gpg.ssh.allowedSignersFile format)
    #[arg(long, value_name = "FILE")]
    pub git_allowed_signers: Option<PathBuf>,
}

fn parse_poll(s: &str) -> Result<std::time::Duration, String> {
    match crate::decl::standby::parse_duration(s) {
        Some(d) if d >= std::time::Duration::from_secs(1) => Ok(d),
        _ => Err(format!(
            "{s:?}: write a duration of at least 1s, like \"30s\" or \"5m\""
        )),
    }
}

//! `unikerneld`: makes a directory of KDL declarations the truth about which unikernels
//! this host runs.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tracing::error;
use unikerneld::daemon::{self, Config};
use unikerneld::net::{AddressPool, Mode};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Network {
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
Logs go to the journal when it is there (each service's events and console lines carry \
UNIKERNEL=<name>), else to stderr; RUST_LOG filters (default info)."
)]
struct Cli {
    /// Directory of declarations (*.kdl)
    #[arg(long, value_name = "DIR", default_value = "/etc/unikernels")]
    config_dir: PathBuf,

    /// Runtime state: VM records, console sockets, status.json
    #[arg(long, value_name = "DIR", default_value = "/run/unikerneld")]
    state_dir: PathBuf,

    /// Snapshots of services on standby (one folder each; as large as the memory their
    /// guests touched)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/unikerneld/snapshots")]
    snapshot_dir: PathBuf,

    /// The per-VM monitor [default: unikernel-vmm next to this program, else on PATH]
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,

    /// How guests reach the host
    #[arg(long, value_enum, default_value = "routed")]
    network: Network,

    /// Bridge name for --network bridged
    #[arg(long, value_name = "NAME", default_value = "ukbr0")]
    bridge: String,

    /// Guest addresses come from this pool; the first address is the host side (gateway)
    #[arg(long, value_name = "CIDR", default_value = "10.200.0.0/16")]
    pool: AddressPool,

    /// Full reload this often (seconds), whatever inotify reported
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    resync: u64,
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(contract::VMM_BINARY)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(contract::VMM_BINARY))
}

/// Each VM costs the daemon a few fds (pidfd, console socket, listening sockets): use the
/// whole hard limit, and say so (the unit's LimitNOFILE sets the hard limit).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!("RLIMIT_NOFILE: {old} -> {}", lim.rlim_cur);
            } else {
                tracing::warn!(
                    "cannot raise RLIMIT_NOFILE from {old} to {}: {}",
                    lim.rlim_cur,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn config(cli: Cli) -> Config {
    Config {
        config_dir: cli.config_dir,
        state_dir: cli.state_dir,
        snapshot_dir: cli.snapshot_dir,
        vmm: cli.vmm.unwrap_or_else(default_vmm),
        resync_every: Duration::from_secs(cli.resync.max(1)),
        mode: match cli.network {
            Network::Routed => Mode::Routed,
            Network::Bridged => Mode::Bridged { bridge: cli.bridge },
        },
        pool: cli.pool,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    unikerneld::systemd::init_logging();
    raise_fd_limit();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unikerneld: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(config(cli))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("unikerneld: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

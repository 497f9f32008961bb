//! `unikerneld`: makes a directory of KDL declarations the truth about which unikernels
//! this host runs.
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use unikerneld::dbus::{self, Published, Request, Shared};
use unikerneld::net::{sysctl, AddressPool, HostNetwork, Mode};
use unikerneld::reconcile::{Engine, Options};
use unikerneld::watch::Change;

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
        .and_then(|p| p.parent().map(|d| d.join("unikernel-vmm")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("unikernel-vmm"))
}

/// Each VM costs the daemon a few fds (pidfd, console socket): use the whole hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mode = match cli.network {
        Network::Routed => Mode::Routed,
        Network::Bridged => Mode::Bridged { bridge: cli.bridge },
    };
    let net = HostNetwork::new(mode.clone(), cli.pool)
        .await
        .map_err(|e| anyhow::anyhow!("host network: {e}"))?;
    let opts = Options {
        config_dir: cli.config_dir,
        state_dir: cli.state_dir,
        vmm: cli.vmm.unwrap_or_else(default_vmm),
        resync_every: Duration::from_secs(cli.resync.max(1)),
    };
    info!(
        "unikerneld {} starting: declarations in {}, state in {}, vmm {}",
        env!("CARGO_PKG_VERSION"),
        opts.config_dir.display(),
        opts.state_dir.display(),
        opts.vmm.display()
    );
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut engine = Engine::new(opts.clone(), net, tx.clone())
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", opts.state_dir.display()))?;

    let (changed_tx, mut changed) = mpsc::unbounded_channel();
    let mut watcher = None;
    let try_watch = |watcher: &mut Option<notify::RecommendedWatcher>| {
        if watcher.is_none() {
            match unikerneld::watch::watch(&opts.config_dir, changed_tx.clone()) {
                Ok(w) => *watcher = Some(w),
                Err(e) => warn!(
                    "cannot watch {} ({e}); relying on the {} s resync and SIGHUP",
                    opts.config_dir.display(),
                    opts.resync_every.as_secs()
                ),
            }
        }
    };
    try_watch(&mut watcher);

    engine.adopt().await;
    let mut declared = engine.reload().await.actions.len();
    sysctl::apply(&sysctl::wanted(declared.max(1024), &mode, false));

    // The D-Bus API reads what the loop publishes and sends it requests.
    let shared: Shared = Default::default();
    let (requests_tx, mut requests) = mpsc::unbounded_channel::<Request>();
    let (snapshots_tx, snapshots_rx) = mpsc::unbounded_channel();
    let publish_now = |engine: &mut Engine| {
        if let Some(snap) = engine.publish() {
            let mut p = shared.write().unwrap_or_else(|p| p.into_inner());
            *p = Published {
                snapshot: snap.clone(),
                consoles: engine.consoles(),
                config_dir: opts.config_dir.clone(),
                state_dir: opts.state_dir.clone(),
            };
            let _ = snapshots_tx.send((snap, engine.take_transitions()));
        }
    };
    publish_now(&mut engine);
    let bus = dbus::server::connect(shared.clone(), requests_tx.clone()).await;
    if let Some(conn) = bus.clone() {
        tokio::spawn(dbus::server::run(
            conn,
            shared.clone(),
            requests_tx.clone(),
            snapshots_rx,
        ));
    }
    unikerneld::systemd::ready();
    info!("ready: {}", engine.snapshot().summary());

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut resync = tokio::time::interval(opts.resync_every);
    resync.tick().await;
    // Status is published at most every PUBLISH_EVERY, and only after a change: an idle
    // daemon wakes for nothing but the resync (and the watchdog, when systemd asks).
    const PUBLISH_EVERY: Duration = Duration::from_millis(100);
    let mut publish_at: Option<tokio::time::Instant> = None;
    let watchdog_every = unikerneld::systemd::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    // Debounce: reload once the directory has been quiet for DEBOUNCE (or MAX_DELAY passed).
    let mut due: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
    // What inotify named since the last reload (file names), or None after a lost event.
    let mut dirty: Option<HashSet<OsString>> = Some(HashSet::new());
    loop {
        if engine.is_dirty() && publish_at.is_none() {
            publish_at = Some(tokio::time::Instant::now() + PUBLISH_EVERY);
        }
        let deadline = due.map(|(quiet, cap)| quiet.min(cap));
        tokio::select! {
            Some(change) = changed.recv() => {
                match change {
                    Change::Paths(paths) => {
                        if let Some(d) = dirty.as_mut() {
                            d.extend(paths.iter().filter_map(|p| p.file_name().map(OsString::from)));
                        }
                    }
                    Change::Unknown => dirty = None,
                }
                let now = tokio::time::Instant::now();
                let cap = due.map(|d| d.1).unwrap_or(now + unikerneld::watch::MAX_DELAY);
                due = Some((now + unikerneld::watch::DEBOUNCE, cap));
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                due = None;
                match dirty.replace(HashSet::new()) {
                    Some(names) => engine.reload_changed(&names).await,
                    None => engine.reload().await,
                };
            }
            Some(event) = events.recv() => engine.handle(event).await,
            Some(request) = requests.recv() => match request {
                Request::Reload(tx) => {
                    info!("reload requested (D-Bus)");
                    let _ = tx.send(engine.reload().await);
                }
                Request::Plan(tx) => {
                    let _ = tx.send(engine.dry_plan());
                }
                Request::Start(name, tx) => {
                    let _ = tx.send(engine.operator_start(&name).await);
                }
                Request::Stop(name, tx) => {
                    let _ = tx.send(engine.operator_stop(&name));
                }
                Request::Restart(name, tx) => {
                    let _ = tx.send(engine.operator_restart(&name).await);
                }
            },
            _ = resync.tick() => {
                try_watch(&mut watcher);
                engine.reload().await;
            }
            _ = hup.recv() => {
                info!("reload requested (SIGHUP)");
                engine.reload().await;
            }
            _ = async { tokio::time::sleep_until(publish_at.unwrap()).await }, if publish_at.is_some() => {
                publish_at = None;
                let n = engine.service_count();
                if n > declared {
                    declared = n;
                    sysctl::apply(&sysctl::wanted(n.max(1024), &mode, false));
                }
                publish_now(&mut engine);
            }
            _ = watchdog.tick(), if watchdog_every.is_some() => unikerneld::systemd::watchdog(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    publish_now(&mut engine);
    drop(bus);
    info!("stopping; the VMs keep running and the next unikerneld adopts them");
    drop(tx);
    Ok(())
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("unikerneld: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

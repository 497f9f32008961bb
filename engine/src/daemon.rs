//! The daemon's one control task: a `select!` over declaration changes, VM events, D-Bus
//! requests, signals, the resync and the watchdog. It never waits inside a branch for
//! anything slow: VMs end through events, and a dry `Plan()` (a full re-parse that any
//! user on the bus may ask for) runs on a blocking thread.
use std::collections::HashSet;
use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::controller::host::{HostNet, Launcher};
use crate::controller::{Controller, Event};
use crate::dbus::{self, Published, Request, Shared, SyncReply};
use crate::net::{sysctl, AddressPool, HostNetwork, Mode};
use crate::source::git::{Follower, GitConfig, Outcome};
use crate::state_dir::StateDir;
use crate::supervise::feed::ConsoleHub;
use crate::supervise::launcher::{AbortOnDrop, VmmLauncher};
use crate::watch::{self, Change};
use std::os::unix::fs::DirBuilderExt;

/// Settings of one daemon.
#[derive(Clone, Debug)]
pub struct Config {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Snapshots of services on standby.
    pub snapshot_dir: PathBuf,
    /// The `unikernel-vmm` binary.
    pub vmm: PathBuf,
    /// Full reload and drift repair this often, whatever inotify said.
    pub resync_every: Duration,
    pub mode: Mode,
    pub pool: AddressPool,
    /// Follow a git remote (`--git`): `config_dir` is then its `current` link.
    pub git: Option<crate::source::git::GitConfig>,
    /// Serve metrics there (`--metrics`).
    pub metrics: Option<crate::metrics::server::Endpoint>,
    /// The uids of jailed VMMs (`--vm-uids`).
    pub vm_uids: crate::supervise::uids::UidRange,
    /// At most this many VMMs started ahead of need (`--warm-pool`).
    pub warm_pool: usize,
}

/// Status is published at most this often, and only after a change: an idle daemon wakes
/// for nothing but the resync (and the watchdog, when systemd asks). The first change after
/// a quiet spell is published at once (a service that serves is `running` in status.json
/// and on D-Bus by then); a burst of changes is published once per period.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Runs the daemon until SIGTERM or SIGINT. Its exit never stops VMs.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let net = HostNetwork::new(config.mode.clone(), config.pool)
        .await
        .map_err(|e| anyhow::anyhow!("host network: {e}"))?;
    info!(
        "unikerneld {} starting: declarations in {}, state in {}, vmm {}",
        env!("CARGO_PKG_VERSION"),
        config.config_dir.display(),
        config.state_dir.display(),
        config.vmm.display()
    );
    // Snapshots hold guests' memory: the directory is root's alone.
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.snapshot_dir)
    {
        warn!(
            "snapshot directory {}: {e} (services cannot go to standby)",
            config.snapshot_dir.display()
        );
    }
    let state = StateDir::with_snapshots(&config.state_dir, &config.snapshot_dir)
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", config.state_dir.display()))?;
    let scopes = crate::systemd::scope::Scopes::connect().await;
    // SAFETY: geteuid has no preconditions.
    let jail = (unsafe { libc::geteuid() } == 0).then(|| crate::supervise::uids::UidPool::new(config.vm_uids));
    if jail.is_none() {
        warn!("not running as root: VMMs run unjailed, as this user (seccomp filters only)");
    }
    // Before anything in it is touched: a second daemon stops here.
    let lock = state
        .lock()
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", config.state_dir.display()))?;
    // The hub's queue of console frames is the sysctl's value when the hub is made.
    sysctl::apply(&[sysctl::CONSOLE_FEED_QUEUE]);
    let hub = ConsoleHub::bind(&state.console_feed_socket())
        .map_err(|e| anyhow::anyhow!("console hub {}: {e}", state.console_feed_socket().display()))?;
    // The pool starts VMMs on demand only, after adoption's sweep has run.
    let launcher =
        VmmLauncher::new(config.vmm.clone(), state.clone(), scopes, jail, hub).with_warm_pool(config.warm_pool);
    let (tx, events) = mpsc::unbounded_channel();
    let controller = Controller::new(config.config_dir.clone(), state, lock, launcher, net, tx);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let mode = config.mode.clone();
    let mut declared = None;
    let grow = move |n: usize| {
        // Host limits follow the number of services (never lowered).
        if declared.is_none_or(|d| n > d) {
            declared = Some(n);
            sysctl::apply(&sysctl::wanted(n.max(1024), &mode));
        }
    };
    serve(
        controller,
        events,
        config.resync_every,
        config.git,
        config.metrics,
        grow,
        shutdown,
    )
    .await?;
    info!("stopping; the VMs keep running and the next unikerneld adopts them");
    Ok(())
}

/// What a debounced reload reads.
enum Scope {
    /// The files inotify named.
    Names(HashSet<OsString>),
    /// Every file whose stamp moved (something a file points to changed).
    Stamps,
    /// Every file (a lost event: anything may have changed).
    All,
}

/// Debounced declaration changes: reload once the directory has been quiet for
/// [`watch::SETTLE`] if every file named since the last reload is whole, else for
/// [`watch::DEBOUNCE`] (or once [`watch::MAX_DELAY`] passed since the first change).
#[derive(Default)]
struct Pending {
    /// When the first change since the last reload was seen, and until when the
    /// directory must now stay quiet.
    due: Option<(tokio::time::Instant, tokio::time::Instant)>,
    /// What to read since the last reload.
    scope: Option<Scope>,
    /// Entries whose last event may be followed by more writes (created, modified, not
    /// yet closed): while one is, the full debounce applies.
    unsettled: HashSet<OsString>,
}

/// Whether a changed path that is not a declaration could change what declarations point
/// to: it exists and is not a plain file.
fn may_redirect(path: &std::path::Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file())
}

impl Pending {
    fn add(&mut self, change: Change) {
        if self.due.is_none() {
            self.scope = Some(Scope::Names(HashSet::new()));
        }
        match change {
            Change::Paths { paths, whole } => {
                for name in paths.iter().filter_map(|p| p.file_name()) {
                    if whole {
                        self.unsettled.remove(name);
                    } else {
                        self.unsettled.insert(name.to_os_string());
                    }
                }
                // A name that is not a declaration but is now a directory or a symlink
                // (`..data` swapped, a symlinked directory) may change what declarations
                // point to: compare stamps. Other names (an editor's or a tool's temporary
                // file, written then renamed over a declaration, so already gone) change
                // nothing: comparing every stamp for them would make each such save cost
                // a pass over every file.
                let other = paths
                    .iter()
                    .any(|p| p.extension().is_none_or(|x| x != "kdl") && may_redirect(p));
                match self.scope.as_mut() {
                    Some(Scope::Names(d)) if !other => {
                        d.extend(paths.iter().filter_map(|p| p.file_name().map(OsString::from)))
                    }
                    Some(Scope::Names(_)) => self.scope = Some(Scope::Stamps),
                    _ => {}
                }
            }
            Change::Stamps => {
                if matches!(self.scope, Some(Scope::Names(_)) | None) {
                    self.scope = Some(Scope::Stamps);
                }
            }
            Change::Unknown | Change::Replaced => self.scope = Some(Scope::All),
        }
        let quiet = match self.scope {
            Some(Scope::Names(_)) if self.unsettled.is_empty() => watch::SETTLE,
            _ => watch::DEBOUNCE,
        };
        let now = tokio::time::Instant::now();
        let since = self.due.map_or(now, |(since, _)| since);
        self.due = Some((since, now + quiet));
    }

    /// What to reload now that the deadline passed, and since when it changed.
    fn take(&mut self) -> Option<(Scope, tokio::time::Instant)> {
        // A file still being written says so again with its next event.
        self.unsettled.clear();
        self.scope.take().zip(self.due.take().map(|(since, _)| since))
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.due.map(|(since, quiet)| quiet.min(since + watch::MAX_DELAY))
    }
}

/// The control loop around a controller, until `shutdown` resolves. `grow` hears the
/// number of services whenever status is published (host limits follow it).
pub async fn serve<L: Launcher, N: HostNet>(
    mut ctl: Controller<L, N>,
    mut events: mpsc::UnboundedReceiver<Event>,
    resync_every: Duration,
    git: Option<GitConfig>,
    metrics: Option<crate::metrics::server::Endpoint>,
    mut grow: impl FnMut(usize),
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config_dir = ctl.config_dir().to_path_buf();
    // Where the declarations come from: a followed git remote, or the directory itself
    // (whose git HEAD, if it is a work tree, is reported as the revision).
    let (source_tx, mut source_events) = mpsc::unbounded_channel::<SourceEvent>();
    let syncs = match git {
        Some(cfg) => {
            let follower = Follower::new(cfg.clone());
            info!(
                "following {} ({}{}), fetching every {} s",
                cfg.url,
                cfg.reference,
                if cfg.path.is_empty() {
                    String::new()
                } else {
                    format!(":{}", cfg.path)
                },
                cfg.poll.as_secs()
            );
            let mut source = ctl.source().clone();
            source.applied_revision = follower.applied().cloned();
            ctl.set_source(source);
            let (sync_tx, sync_rx) = mpsc::unbounded_channel();
            tokio::spawn(follow_git(follower, cfg.poll, sync_rx, source_tx.clone()));
            Some(sync_tx)
        }
        None => None,
    };
    let mut worktree_busy = false;
    let check_worktree = |busy: &mut bool| {
        if syncs.is_none() && !*busy {
            *busy = true;
            let (dir, tx) = (config_dir.clone(), source_tx.clone());
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(SourceEvent::WorkTree(crate::source::worktree::head(&dir)));
            });
        }
    };
    check_worktree(&mut worktree_busy);
    let (changed_tx, mut changed) = mpsc::unbounded_channel();
    let mut watcher = None;
    let try_watch = |watcher: &mut Option<notify::RecommendedWatcher>| {
        if watcher.is_none() {
            match watch::watch(&config_dir, changed_tx.clone()) {
                Ok(w) => *watcher = Some(w),
                Err(e) => warn!(
                    "cannot watch {} ({e}); relying on the {} s resync and SIGHUP",
                    config_dir.display(),
                    resync_every.as_secs()
                ),
            }
        }
    };
    try_watch(&mut watcher);
    // The targets of symlinked declaration files, and the watch on them. `names`: the
    // files a reload named (only they can have changed), or `None` for a look at all.
    let mut targets: (watch::SymlinkTargets, Option<notify::RecommendedWatcher>) = Default::default();
    let follow_targets = |t: &mut (watch::SymlinkTargets, Option<notify::RecommendedWatcher>),
                          names: Option<&HashSet<OsString>>| {
        let changed = match names {
            Some(names) => t.0.update(&config_dir, names),
            None => t.0.rescan(&config_dir),
        };
        if changed {
            t.1 = None;
            let now = t.0.targets();
            if !now.is_empty() {
                match watch::watch_targets(&now, changed_tx.clone()) {
                    Ok(w) => t.1 = Some(w),
                    Err(e) => warn!(
                        "cannot watch the targets of symlinked declarations ({e}); the resync catches their changes"
                    ),
                }
            }
        }
    };

    ctl.adopt().await;
    ctl.converge().await;
    follow_targets(&mut targets, None);
    grow(ctl.service_count());

    // The D-Bus API reads what the loop publishes and sends it requests.
    let shared: Shared = Default::default();
    let (requests_tx, mut requests) = mpsc::unbounded_channel::<Request>();
    let (snapshots_tx, snapshots_rx) = mpsc::unbounded_channel();
    let state_dir = ctl.state_dir().to_path_buf();
    let publish_now = |ctl: &mut Controller<L, N>| {
        if let Some(snap) = ctl.publish() {
            let mut p = shared.write().unwrap_or_else(|p| p.into_inner());
            *p = Published {
                snapshot: snap.clone(),
                config_dir: config_dir.clone(),
                state_dir: state_dir.clone(),
                stats: ctl.stats().clone(),
                pool: ctl.pool_gauge(),
            };
            let _ = snapshots_tx.send((snap, ctl.take_transitions()));
        }
    };
    publish_now(&mut ctl);
    // status.json says what runs before READY=1 does.
    ctl.flush_status();
    // Metrics are opt-in and never worth the daemon: a port in use is reported, not fatal.
    let metrics_task = match metrics {
        Some(endpoint) => match crate::metrics::server::serve(endpoint.clone(), shared.clone()).await {
            Ok(task) => Some(AbortOnDrop(task)),
            Err(e) => {
                warn!("metrics: cannot listen on {endpoint}: {e}; the daemon runs on without them");
                None
            }
        },
        None => None,
    };
    let bus = dbus::server::connect(shared.clone(), requests_tx.clone()).await;
    match bus.clone() {
        Some(conn) => {
            tokio::spawn(dbus::server::run(
                conn,
                shared.clone(),
                requests_tx.clone(),
                snapshots_rx,
            ));
        }
        // Nobody mirrors the status: the channel goes, or every snapshot published
        // would stay queued in it for the daemon's life (a 5,000-service host without a
        // bus grew to 564 MiB that way).
        None => drop(snapshots_rx),
    }
    crate::systemd::ready();
    info!("ready: {}", ctl.snapshot().summary());

    let mut hup = signal(SignalKind::hangup())?;
    let plans = crate::single_flight::SingleFlight::<crate::plan::Plan>::default();
    let mut resync = tokio::time::interval(resync_every);
    resync.tick().await;
    let mut publish_at: Option<tokio::time::Instant> = None;
    let mut published_at = tokio::time::Instant::now();
    let watchdog_every = crate::systemd::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut pending = Pending::default();
    tokio::pin!(shutdown);
    loop {
        if ctl.is_dirty() && publish_at.is_none() {
            publish_at = Some((published_at + PUBLISH_EVERY).max(tokio::time::Instant::now()));
        }
        let deadline = pending.deadline();
        tokio::select! {
            Some(change) = changed.recv() => {
                if change == Change::Replaced {
                    // The old watch follows the old directory: watch the path afresh.
                    info!("{} was replaced: watching it again", config_dir.display());
                    watcher = None;
                    try_watch(&mut watcher);
                }
                pending.add(change);
            }
            _ = sleep_until(deadline) => {
                match pending.take() {
                    Some((Scope::Names(names), since)) => {
                        ctl.reload_changed(&names, since).await;
                        follow_targets(&mut targets, Some(&names));
                    }
                    Some((Scope::Stamps, _)) => {
                        ctl.converge().await;
                        follow_targets(&mut targets, None);
                    }
                    Some((Scope::All, _)) | None => {
                        ctl.reload().await;
                        follow_targets(&mut targets, None);
                    }
                };
                check_worktree(&mut worktree_busy);
            }
            Some(event) = events.recv() => ctl.handle(event).await,
            Some(request) = requests.recv() => match request {
                Request::Reload(tx) => {
                    info!("reload requested (D-Bus)");
                    let _ = tx.send(ctl.reload().await);
                    check_worktree(&mut worktree_busy);
                }
                Request::Sync(tx) => match &syncs {
                    Some(syncs) => {
                        info!("sync requested (D-Bus)");
                        let _ = syncs.send(tx);
                    }
                    None => {
                        let _ = tx.send(Err(format!(
                            "not following a git repository ({} is read as it is; start unikerneld with --git URL to follow one)",
                            config_dir.display()
                        )));
                    }
                },
                Request::Plan(tx) => {
                    // One parse at a time, shared by every caller that asks meanwhile.
                    if plans.join(tx) {
                        let (dir, observed) = ctl.plan_input();
                        let plans = plans.clone();
                        tokio::task::spawn_blocking(move || {
                            let loaded = crate::decl::Loader::default().load_dir(&dir);
                            plans.finish(crate::plan::plan(&loaded.specs, &observed));
                        });
                    }
                }
                Request::Start(name, tx) => {
                    let _ = tx.send(ctl.operator_start(&name).await);
                }
                Request::Stop(name, tx) => {
                    let _ = tx.send(ctl.operator_stop(&name));
                }
                Request::Standby(name, tx) => {
                    let _ = tx.send(ctl.operator_standby(&name));
                }
                Request::Wake(name, tx) => {
                    let _ = tx.send(ctl.operator_wake(&name).await);
                }
                Request::Restart(name, tx) => {
                    let _ = tx.send(ctl.operator_restart(&name).await);
                }
                Request::Console(name, tx) => {
                    let _ = tx.send(ctl.console(&name));
                }
            },
            _ = resync.tick() => {
                try_watch(&mut watcher);
                ctl.resync().await;
                // Its liveness counts change no status: the metrics get them here.
                shared.write().unwrap_or_else(|p| p.into_inner()).stats = ctl.stats().clone();
                follow_targets(&mut targets, None);
                check_worktree(&mut worktree_busy);
            }
            _ = hup.recv() => {
                info!("reload requested (SIGHUP)");
                ctl.reload().await;
                check_worktree(&mut worktree_busy);
            }
            Some(event) = source_events.recv() => match event {
                SourceEvent::WorkTree(revision) => {
                    worktree_busy = false;
                    let mut source = ctl.source().clone();
                    source.applied_revision = revision;
                    ctl.set_source(source);
                }
                SourceEvent::Git(outcome, done) => {
                    apply_outcome(&mut ctl, outcome).await;
                    follow_targets(&mut targets, None);
                    // `sync` answers once status.json and D-Bus say what it applied (a
                    // publish just before would otherwise hold this one back a period).
                    grow(ctl.service_count());
                    publish_now(&mut ctl);
                    ctl.flush_status();
                    published_at = tokio::time::Instant::now();
                    let _ = done.send(());
                }
            },
            _ = sleep_until(publish_at) => {
                publish_at = None;
                published_at = tokio::time::Instant::now();
                grow(ctl.service_count());
                publish_now(&mut ctl);
            }
            _ = watchdog.tick(), if watchdog_every.is_some() => crate::systemd::watchdog(),
            // A mass apply, a batch at a time: every other branch gets its turn between.
            _ = std::future::ready(()), if ctl.has_queued_starts() => ctl.start_queued().await,
            _ = &mut shutdown => break,
        }
    }
    publish_now(&mut ctl);
    ctl.leave_console_read_to();
    drop(bus);
    drop(metrics_task);
    Ok(())
}

/// What the source of the declarations reports to the control loop.
enum SourceEvent {
    /// The HEAD of the config directory's work tree (directory mode), if it is one.
    WorkTree(Option<crate::source::Revision>),
    /// A round of following the git remote; `done` once the loop has acted on it.
    Git(Outcome, oneshot::Sender<()>),
}

/// Follows the remote: a round every `poll`, and one at once for each `Sync()` (whose
/// caller hears the outcome after the loop has applied it). Rounds run on a blocking
/// thread: the control loop never waits for git.
async fn follow_git(
    mut follower: Follower,
    poll: Duration,
    mut syncs: mpsc::UnboundedReceiver<oneshot::Sender<SyncReply>>,
    to_loop: mpsc::UnboundedSender<SourceEvent>,
) {
    let mut tick = tokio::time::interval(poll);
    loop {
        let caller = tokio::select! {
            _ = tick.tick() => None,
            Some(caller) = syncs.recv() => Some(caller),
            else => return,
        };
        let Ok((f, outcome)) = tokio::task::spawn_blocking(move || {
            let outcome = follower.sync();
            (follower, outcome)
        })
        .await
        else {
            return;
        };
        follower = f;
        let (done_tx, done) = oneshot::channel();
        if to_loop.send(SourceEvent::Git(outcome.clone(), done_tx)).is_err() {
            return;
        }
        let _ = done.await;
        if let Some(caller) = caller {
            let _ = caller.send(match outcome {
                Outcome::Unchanged => Ok((
                    "unchanged".into(),
                    follower.applied().map(|r| r.commit.clone()).unwrap_or_default(),
                    Vec::new(),
                )),
                Outcome::Applied(r) => Ok(("applied".into(), r.commit, Vec::new())),
                Outcome::Refused(f) => Ok(("refused".into(), f.commit, f.errors)),
                Outcome::FetchFailed(e) => Err(e),
            });
        }
    }
}

/// Acts on a round of following: a new revision is loaded whole (it was checked whole
/// before `current` moved to it); a refused one, or a failed fetch, changes nothing that
/// runs and is reported.
async fn apply_outcome<L: Launcher, N: HostNet>(ctl: &mut Controller<L, N>, outcome: Outcome) {
    let mut source = ctl.source().clone();
    match outcome {
        Outcome::Unchanged => source.fetch_error = None,
        Outcome::Applied(revision) => {
            info!("revision {} applied: {}", revision.short(), revision.subject);
            source.fetch_error = None;
            source.failed_revision = None;
            source.applied_revision = Some(revision);
            ctl.set_source(source);
            ctl.reload().await;
            return;
        }
        Outcome::Refused(failed) => {
            let keeps = source
                .applied_revision
                .as_ref()
                .map(|r| format!("revision {} stays in force", r.short()))
                .unwrap_or_else(|| "nothing was applied yet".into());
            warn!(
                "revision {} refused, nothing of it applied ({keeps}): {} error(s) in \"{}\"",
                failed.short(),
                failed.errors.len(),
                failed.subject
            );
            for e in &failed.errors {
                warn!("  {e}");
            }
            source.fetch_error = None;
            source.failed_revision = Some(failed);
        }
        Outcome::FetchFailed(e) => {
            if source.fetch_error.as_ref() != Some(&e) {
                warn!("{e} (trying again at the next poll)");
            }
            source.fetch_error = Some(e);
        }
    }
    ctl.set_source(source);
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope_after(paths: &[&std::path::Path]) -> Option<Scope> {
        let mut pending = Pending::default();
        pending.add(Change::Paths {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            whole: true,
        });
        pending.scope
    }

    #[test]
    fn a_temporary_file_renamed_over_a_declaration_keeps_the_reload_to_named_files() {
        let dir = std::env::temp_dir().join(format!("uk-pending-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..2026_11_30")).unwrap();
        std::fs::write(dir.join(".a.kdl.swp"), "still being written").unwrap();
        std::os::unix::fs::symlink("..2026_11_30", dir.join("..data")).unwrap();
        let (gone, swap, data) = (dir.join(".b.kdl.tmp"), dir.join(".a.kdl.swp"), dir.join("..data"));
        let (a, b) = (dir.join("a.kdl"), dir.join("b.kdl"));
        // Gone (renamed over b.kdl) or a plain file: only the named declarations are read.
        match scope_after(&[&gone, &b, &swap, &a]) {
            Some(Scope::Names(names)) => assert!(names.contains(OsString::from("a.kdl").as_os_str())),
            _ => panic!("not by names"),
        }
        // A symlink or a directory may change what declarations point to.
        assert!(matches!(scope_after(&[&a, &data]), Some(Scope::Stamps)));
        assert!(matches!(scope_after(&[&dir.join("..2026_11_30")]), Some(Scope::Stamps)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_file_reloads_after_the_settle_time_one_being_written_after_the_debounce() {
        let after = |p: &Pending| p.deadline().unwrap() - tokio::time::Instant::now();
        let change = |name: &str, whole| Change::Paths {
            paths: vec![std::path::PathBuf::from("/etc/unikernels").join(name)],
            whole,
        };
        let mut pending = Pending::default();
        // `cat > a.kdl`: created and written (more may come), then closed.
        pending.add(change("a.kdl", false));
        assert_eq!(after(&pending), watch::DEBOUNCE);
        pending.add(change("a.kdl", true));
        assert_eq!(after(&pending), watch::SETTLE);
        // Another file still open keeps the full debounce for both.
        pending.add(change(".b.kdl.swp", false));
        pending.add(change("c.kdl", true));
        assert_eq!(after(&pending), watch::DEBOUNCE);
        // Renamed into place: whole.
        pending.add(Change::Paths {
            paths: vec!["/etc/unikernels/.b.kdl.swp".into(), "/etc/unikernels/b.kdl".into()],
            whole: true,
        });
        assert_eq!(after(&pending), watch::SETTLE);
        match pending.take() {
            Some((Scope::Names(names), _)) => {
                for n in ["a.kdl", "b.kdl", "c.kdl"] {
                    assert!(names.contains(OsString::from(n).as_os_str()), "{n}");
                }
            }
            _ => panic!("not by names"),
        }
        assert!(pending.deadline().is_none());
        // A lost event reads everything, after the full debounce.
        pending.add(Change::Unknown);
        assert_eq!(after(&pending), watch::DEBOUNCE);
    }
}

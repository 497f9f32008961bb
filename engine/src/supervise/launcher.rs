//! The real [`Launcher`]: `unikernel-vmm` processes watched through pidfds, their console
//! read from the daemon's console hub (an older VMM's, adopted, from its console socket),
//! readiness probed over TCP.
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use contract::args::VmmArgs;
use contract::console::ConsoleTarget;
use contract::size::MemSize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::console::{self, ConsoleRing};
use super::feed::{Attachment, ConsoleHub, FeedWatch};
use super::probe;
use super::process::{Ended, Launch, Process};
use super::uids::{UidLease, UidPool};
use super::warm::{Shape, WarmPool};
use crate::controller::host::{BoxFuture, Exit, LaunchRequest, Launcher, Liveness, Readiness, Signal, VmProcess};
use crate::state_dir::{ConsoleReadTo, StateDir, VmRecord};
use crate::steps::Steps;
use crate::systemd::scope::Scopes;
use std::sync::Arc;

/// How long the end of a VM waits for its console's last lines (the VMM is gone, so the
/// follower reaches the end at once unless the socket misbehaves).
const CONSOLE_DRAIN: Duration = Duration::from_millis(200);

pub struct VmmLauncher {
    vmm: PathBuf,
    state: StateDir,
    /// Where systemd runs the host: each VMM's own scope.
    scopes: Option<Scopes>,
    /// Where the daemon runs as root: each VMM jailed under a uid of its own.
    uids: Option<Arc<UidPool>>,
    /// VMMs started ahead of need (`--warm-pool`).
    warm: Option<WarmPool>,
    /// Where every VM's console comes in.
    hub: ConsoleHub,
    /// How far the last daemon read each VM's console (taken at the first adoption).
    read_to: Option<std::collections::HashMap<String, ConsoleReadTo>>,
}

impl VmmLauncher {
    pub fn new(
        vmm: PathBuf,
        state: StateDir,
        scopes: Option<Scopes>,
        uids: Option<Arc<UidPool>>,
        hub: ConsoleHub,
    ) -> VmmLauncher {
        VmmLauncher {
            vmm,
            state,
            scopes,
            uids,
            warm: None,
            hub,
            read_to: None,
        }
    }

    /// Keeps up to `bound` VMMs ready ahead of need (0: none). The first is started at
    /// the first start, after adoption's sweep (which ends what an earlier daemon's pool
    /// left) has run.
    pub fn with_warm_pool(mut self, bound: usize) -> VmmLauncher {
        self.warm = WarmPool::start(
            self.vmm.clone(),
            self.state.root().join("services"),
            self.state.cpuid_cache(),
            bound,
        );
        self
    }

    fn vmm(
        &self,
        name: &str,
        process: Process,
        uid: Option<UidLease>,
        feed: Option<Attachment>,
        first_line: Option<oneshot::Receiver<()>>,
        restored: bool,
    ) -> Vmm {
        Vmm {
            name: name.to_string(),
            state: self.state.clone(),
            process,
            log: self.state.vmm_log(name),
            control: self.state.control_socket(name),
            restored,
            watch: feed.as_ref().map(Attachment::watch),
            feed,
            follower: None,
            first_line,
            scopes: self.scopes.clone(),
            _uid: uid,
            from_pool: false,
            spawn_steps: None,
        }
    }
}

/// The guest command line in a sealed memfd, for `--cmdline-fd`: what it holds (secrets in
/// the declaration's args or env) never shows in /proc/PID/cmdline, which every local user
/// can read.
fn cmdline_memfd(cmdline: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh anonymous file; the name is a NUL-terminated string.
    let fd = unsafe {
        libc::memfd_create(
            c"unikernel-cmdline".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let mut file = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    file.write_all(cmdline.as_bytes())?;
    // The VMM reads from the shared offset.
    file.rewind()?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a memfd we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file.into())
}

/// A task that ends with its owner.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Vmm {
    name: String,
    state: StateDir,
    process: Process,
    log: PathBuf,
    /// Its control socket (snapshots).
    control: PathBuf,
    /// Resumed from a snapshot: it serves as soon as it runs.
    restored: bool,
    /// Its place on the console hub.
    feed: Option<Attachment>,
    /// Its VMM's heartbeats and console progress on that feed.
    watch: Option<FeedWatch>,
    /// Adopted: handing it a feed, or following an older VMM's console socket instead.
    follower: Option<AbortOnDrop>,
    first_line: Option<oneshot::Receiver<()>>,
    scopes: Option<Scopes>,
    /// Its jail's uid, free again once this VM is dropped.
    _uid: Option<UidLease>,
    /// Taken from the warm pool (its VM was created before the start).
    from_pool: bool,
    /// Where its spawn's time went (none for an adopted VMM).
    spawn_steps: Option<Steps>,
}

/// How much of the end of the VMM's stderr is searched for its error line (and of its
/// start for its start phases).
const LOG_TAIL: u64 = 4096;

/// The VMM's own explanation of why it stopped (its error line), if any. Reads only the
/// end of the log, a small file in the state directory (tmpfs): no blocking thread needed.
fn vmm_error(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL))).ok()?;
    let mut tail = Vec::new();
    file.take(LOG_TAIL).read_to_end(&mut tail).ok()?;
    contract::exit::last_error(&String::from_utf8_lossy(&tail)).map(str::to_string)
}

impl Launcher for VmmLauncher {
    type Vm = Vmm;

    fn spawn(&mut self, request: LaunchRequest<'_>) -> Result<Vmm, String> {
        let name = request.name;
        let spec = request.spec;
        let mut steps = Steps::new();
        let stderr = std::fs::File::create(self.state.vmm_log(name)).map_err(|e| format!("state directory: {e}"))?;
        steps.done("log file");
        let cmdline = spec.guest_cmdline(request.net.as_ref().map(|a| a.guest_net()).as_ref());
        let tap = request.net.map(|a| (a.tap_fd, a.mac));
        let uid = self.uids.as_ref().map(|pool| pool.lease()).transpose()?;
        let mut inherit = Vec::with_capacity(2);
        let cmdline_fd = match request.restore {
            Some(_) => None,
            None => {
                let fd = cmdline_memfd(&cmdline).map_err(|e| format!("guest command line: {e}"))?;
                let raw = fd.as_raw_fd();
                inherit.push(fd);
                Some(raw)
            }
        };
        steps.done("command line");
        // Bound here, so that a ping can connect from the moment of the spawn (a wake's
        // readiness is the first answer) rather than poll for the VMM's path to appear.
        let control: OwnedFd = contract::control::bind(&self.state.control_socket(name))
            .map_err(|e| format!("control socket: {e}"))?
            .into();
        let control_fd = control.as_raw_fd();
        inherit.push(control);
        steps.done("control socket");
        // The VMM's end of its console feed; the daemon keeps no descriptor for it.
        let (first_line_tx, first_line) = oneshot::channel();
        let (feed_fd, feed) = self
            .hub
            .attach(name, request.console.clone(), 0, Some(first_line_tx))
            .map_err(|e| format!("console feed: {e}"))?;
        let console_feed_fd = feed_fd.as_raw_fd();
        inherit.push(feed_fd);
        steps.done("console feed");
        let mut args = VmmArgs {
            initrd: spec.initrd.clone(),
            cmdline_fd,
            jail_uid: uid.as_ref().map(|l| l.uid),
            jail_gid: uid.as_ref().map(|l| l.uid),
            snapshot_dir: Some(self.state.snapshot_dir(name)),
            cpuid_cache: Some(self.state.cpuid_cache()),
            // Where each start goes, for the log (one line in vmm.log when the guest runs).
            trace_boot: true,
            memory: MemSize::from_bytes(spec.memory_bytes),
            vcpus: spec.vcpus,
            console: ConsoleTarget::Socket(self.state.console_socket(name)),
            console_feed_fd: Some(console_feed_fd),
            control_fd: Some(control_fd),
            // Inherited under its own number (see `Launch::tap`).
            net_fd: tap.as_ref().map(|(fd, _)| fd.as_raw_fd()),
            mac: tap.as_ref().map(|(_, mac)| *mac),
            ..VmmArgs::new(spec.image.clone())
        };
        if let Some(dir) = request.restore {
            // Everything but the devices' host ends comes from the snapshot.
            args.kernel = None;
            args.initrd = None;
            args.mac = None;
            args.restore = Some(dir.to_path_buf());
        }
        // The daemon's copy of the tap fd goes with `launch`: the VMM holds the only one.
        inherit.extend(tap.map(|(fd, _)| fd));
        let shape = Shape {
            memory: spec.memory_bytes,
            vcpus: spec.vcpus,
        };
        // A boot or a wake takes a VMM whose VM exists already, when the pool has one and
        // the arguments fit where the pooled VMM shows them (a margin for fd numbers). A
        // wake's snapshot has its service's size: the spec is the one it was saved under.
        let fits = || contract::pool::argv_bytes(self.vmm.as_os_str(), &args).len() + 32 <= contract::pool::ROOM;
        let warm = match &self.warm {
            Some(pool) if fits() => pool.take(shape),
            _ => None,
        };
        let mut pooled = None;
        if let Some(warm) = warm {
            // The hand-off names descriptors by their place in `inherit`.
            let place = |fd: Option<RawFd>| {
                fd.and_then(|fd| inherit.iter().position(|o| o.as_raw_fd() == fd))
                    .and_then(|i| RawFd::try_from(i).ok())
            };
            let handoff = VmmArgs {
                cmdline_fd: place(args.cmdline_fd),
                net_fd: place(args.net_fd),
                control_fd: place(args.control_fd),
                console_feed_fd: place(args.console_feed_fd),
                ..args.clone()
            };
            match warm.hand_off(&handoff, &stderr, &inherit) {
                Ok(process) => pooled = Some(process),
                Err(e) => tracing::warn!(UNIKERNEL = %name, "warm pool hand-off failed ({e}): starting a VMM"),
            }
        }
        let from_pool = pooled.is_some();
        let process = match pooled {
            Some(process) => {
                steps.done("hand-off");
                process
            }
            None => {
                let process = Process::spawn(Launch {
                    vmm: self.vmm.clone(),
                    args: args.to_argv(),
                    inherit,
                    stderr: Some(stderr),
                })
                .map_err(|e| format!("cannot run {}: {e}", self.vmm.display()))?;
                steps.done("fork and exec");
                process
            }
        };
        if let Some(scopes) = &self.scopes {
            scopes.place(name, process.pid, spec.limits);
            steps.done("scope");
        }
        let mut vmm = self.vmm(
            name,
            process,
            uid,
            Some(feed),
            Some(first_line),
            request.restore.is_some(),
        );
        vmm.from_pool = from_pool;
        vmm.spawn_steps = Some(steps);
        Ok(vmm)
    }

    fn adopt(&mut self, name: &str, record: &VmRecord, console: ConsoleRing) -> Option<Vmm> {
        let process = Process::adopt(record.pid, record.start_ticks)?;
        // Started by a daemon without scopes (an older one, or systemd came later): its
        // scope now; one already in its scope stays there.
        if let Some(scopes) = &self.scopes {
            scopes.place(name, process.pid, Default::default());
        }
        // Its uid stays its own: no new VMM gets it while it runs.
        let uid = self
            .uids
            .as_ref()
            .and_then(|pool| super::uids::uid_of(process.pid).and_then(|uid| pool.claim(uid)));
        // The VMM replays its recent output into the feed: into the ring, and to the
        // journal from where the last daemon stopped reading (what the guest wrote while
        // no daemon ran), if it said; else none of it (no line is logged twice).
        let read_to = self.read_to.get_or_insert_with(|| self.state.take_console_read_to());
        let log_from = read_to
            .remove(name)
            .filter(|r| (r.pid, r.start_ticks) == (record.pid, record.start_ticks))
            .map_or(super::feed::NOT_LOGGED, |r| r.offset);
        let (first_line_tx, first_line) = oneshot::channel();
        let (fd, feed) = match self.hub.attach(name, console.clone(), log_from, Some(first_line_tx)) {
            Ok(attached) => attached,
            Err(e) => {
                tracing::warn!(UNIKERNEL = %name, "console feed: {e}; its console is not read");
                return Some(self.vmm(name, process, uid, None, None, false));
            }
        };
        let mut vmm = self.vmm(name, process, uid, Some(feed), Some(first_line), false);
        let (service, control, socket) = (name.to_string(), vmm.control.clone(), self.state.console_socket(name));
        vmm.follower = Some(AbortOnDrop(tokio::spawn(async move {
            match super::control::request_with_fd(&control, &contract::control::Request::ConsoleFeed, fd).await {
                Ok(contract::control::Reply::Ok(_)) => {}
                // A VMM older than the feed: follow its console socket, as it expects.
                Ok(contract::control::Reply::Err(e)) => {
                    tracing::info!(UNIKERNEL = %service, "the VMM takes no console feed ({e}): following its console socket");
                    console::follow(service, socket, console, false, None).await;
                }
                Err(e) => tracing::warn!(UNIKERNEL = %service, "cannot hand the VMM a console feed: {e}"),
            }
        })));
        Some(vmm)
    }

    fn read_consoles(&mut self) {
        self.hub.read_now();
    }

    fn pool_gauge(&self) -> Option<super::warm::PoolGauge> {
        self.warm.as_ref().map(WarmPool::gauge)
    }

    fn sweep(&mut self, keep: &std::collections::HashSet<u32>) -> Vec<(String, u32)> {
        let services = self.state.root().join("services");
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut ended = Vec::new();
        for entry in procs.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if keep.contains(&pid) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let Some(name) = service_of(&cmdline, &services) else {
                continue;
            };
            // Through a pidfd, after checking it is still that process (no pid reuse).
            let Some(process) = super::process::start_ticks(pid)
                .ok()
                .and_then(|ticks| Process::adopt(pid, ticks))
            else {
                continue;
            };
            if process.signal(libc::SIGKILL).is_ok() {
                ended.push((name, pid));
            }
        }
        ended
    }
}

/// The service a process's arguments name, if it is a VMM of the state directory whose
/// services live under `services` (its console socket is `<services>/<name>/console.sock`).
fn service_of(cmdline: &[u8], services: &Path) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if !args.first()?.ends_with(contract::VMM_BINARY.as_bytes()) {
        return None;
    }
    // A pooled VMM names the folder it belongs to; which service it runs (if it was handed
    // one) only its record says.
    if let Some(w) = args.windows(2).find(|w| w[0] == b"--pool-of") {
        return (w[1] == services.as_os_str().as_encoded_bytes()).then(|| "(warm pool)".to_string());
    }
    let console = args.windows(2).find(|w| w[0] == b"--console")?[1];
    let prefix = format!("unix:{}/", services.display());
    let rest = console.strip_prefix(prefix.as_bytes())?;
    let name = std::str::from_utf8(rest.strip_suffix(b"/console.sock")?).ok()?;
    (!name.contains('/')).then(|| name.to_string())
}

/// A VMM whose feed heartbeat (sent at least every `FEED_HEARTBEAT_EVERY`) came this
/// recently is not pinged: one lost heartbeat costs a ping, not a restart.
const HEARD_WITHIN: Duration = contract::console::FEED_HEARTBEAT_EVERY.saturating_add(Duration::from_secs(4));

impl VmProcess for Vmm {
    fn heard_lately(&self) -> bool {
        self.watch.as_ref().is_some_and(|h| h.heard_within(HEARD_WITHIN))
    }

    fn console_read_to(&self) -> Option<u64> {
        self.watch.as_ref().and_then(FeedWatch::read_to)
    }

    fn responsive(&self) -> BoxFuture<Liveness> {
        let control = self.control.clone();
        Box::pin(async move {
            if !control.exists() {
                return Liveness::Answered;
            }
            super::control::ping(&control).await
        })
    }

    fn snapshot(&self, dir: PathBuf) -> BoxFuture<Result<crate::controller::host::Saved, String>> {
        let control = self.control.clone();
        Box::pin(async move {
            use contract::control::{AfterSnapshot, Request};
            let reply = super::control::request(
                &control,
                &Request::Snapshot {
                    dir,
                    then: AfterSnapshot::Exit,
                },
            )
            .await
            .map_err(|e| format!("control socket {}: {e}", control.display()))?;
            reply.saved()
        })
    }

    fn pid(&self) -> u32 {
        self.process.pid
    }

    fn apply_limits(&self, limits: &crate::decl::LimitsSpec) {
        match &self.scopes {
            Some(scopes) => scopes.set_limits(&self.name, *limits),
            None => {
                tracing::warn!(UNIKERNEL = %self.name, "limits {limits} not applied: systemd does not run this host (no scope)")
            }
        }
    }

    fn start_ticks(&self) -> u64 {
        self.process.start_ticks
    }

    fn pooled(&self) -> bool {
        self.from_pool
    }

    fn spawn_steps(&self) -> Option<String> {
        self.spawn_steps.as_ref().map(Steps::to_string)
    }

    fn start_phases(&self) -> Option<String> {
        let phases = log_head(&self.log).and_then(|head| {
            let started = head
                .lines()
                .find_map(|l| l.strip_prefix(contract::exit::STARTED_PREFIX))?;
            // When the guest ended its first line, as the VMM saw it: the time from there
            // to "running" is the receiving end's (or, with a port, the guest's until it
            // serves).
            let first_line = head
                .lines()
                .find_map(|l| l.strip_prefix(contract::exit::FIRST_LINE_PREFIX));
            Some(match first_line {
                Some(at) => format!("{started}, guest's first line at {at}"),
                None => started.to_string(),
            })
        });
        // Where the VMM came from is known here, whether its log says anything yet or not
        // (a restored VM answers its control socket a moment before it prints its line).
        match (self.from_pool, phases) {
            (true, Some(phases)) => Some(format!("from the warm pool, {phases}")),
            (true, None) => Some("from the warm pool".to_string()),
            (false, phases) => phases,
        }
    }

    fn signal(&self, signal: Signal) -> std::io::Result<()> {
        self.process.signal(match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        })
    }

    fn ended(&mut self) -> BoxFuture<Exit> {
        let wait = self.process.wait();
        let feed = self.feed.take();
        let follower = self.follower.take();
        let log = self.log.clone();
        let socket = self.state.console_socket(&self.name);
        Box::pin(async move {
            let ended = wait.await.unwrap_or(Ended::Unknown);
            // The guest's last words are what status shows for a crash: read them to the
            // console's end. The feed has them queued already. A follower (an older
            // VMM's socket) reads to its end; a VMM refused before it made its console
            // socket (a bad image or snapshot) has none to read: no wait, so the cold boot
            // that follows a snapshot that does not restore starts at once.
            if let Some(mut c) = follower.filter(|_| socket.exists()) {
                let _ = tokio::time::timeout(CONSOLE_DRAIN, &mut c.0).await;
            }
            if let Some(feed) = feed {
                feed.finish();
            }
            let reason = vmm_error(&log);
            Exit { ended, reason }
        })
    }

    fn ready(&mut self, probe_at: Option<SocketAddrV4>) -> BoxFuture<Readiness> {
        let first_line = self.first_line.take();
        if self.restored {
            // The guest was serving when it was saved: it serves once its vCPUs run, which
            // is when the VMM's event loop answers on the control socket.
            let control = self.control.clone();
            return Box::pin(async move {
                super::control::until_running(&control).await;
                Readiness::default()
            });
        }
        let asked = std::time::Instant::now();
        Box::pin(async move {
            let Some(first_line) = first_line else {
                return std::future::pending().await;
            };
            match probe_at {
                Some(addr) => {
                    // Probing before the guest is up only queues SYNs it must answer
                    // later: start at its first console line (a hint, not the proof), or
                    // after a moment for guests that print nothing.
                    let line = tokio::time::timeout(Duration::from_millis(50), first_line).await;
                    let first_line = matches!(line, Ok(Ok(()))).then(|| asked.elapsed());
                    probe::until_accepts(addr).await;
                    Readiness { first_line }
                }
                None => {
                    // No port to try: the guest's first console line is its readiness line.
                    if first_line.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    Readiness {
                        first_line: Some(asked.elapsed()),
                    }
                }
            }
        })
    }
}

/// The start of the VMM's log, where it prints its started line as the guest is entered
/// (whatever the guest makes it warn about later comes after).
fn log_head(log: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(log)
        .ok()?
        .take(LOG_TAIL)
        .read_to_end(&mut head)
        .ok()?;
    Some(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmm_of_this_state_directory_is_recognised_by_its_console_socket() {
        let services = Path::new("/run/unikerneld/services");
        let argv = |v: &[&str]| v.join("\0").into_bytes();
        let ours = argv(&[
            "/usr/libexec/unikerneld/unikernel-vmm",
            "--kernel",
            "/k",
            "--console",
            "unix:/run/unikerneld/services/web/console.sock",
        ]);
        assert_eq!(service_of(&ours, services).as_deref(), Some("web"));
        let other_dir = argv(&[
            "unikernel-vmm",
            "--console",
            "unix:/tmp/other/services/web/console.sock",
        ]);
        assert_eq!(service_of(&other_dir, services), None);
        let not_a_vmm = argv(&[
            "/bin/socat",
            "--console",
            "unix:/run/unikerneld/services/web/console.sock",
        ]);
        assert_eq!(service_of(&not_a_vmm, services), None);
        let nested = argv(&[
            "unikernel-vmm",
            "--console",
            "unix:/run/unikerneld/services/a/b/console.sock",
        ]);
        assert_eq!(service_of(&nested, services), None);
        let pooled = argv(&[
            "unikernel-vmm",
            "--pool-fd",
            "3",
            "--pool-of",
            "/run/unikerneld/services",
        ]);
        assert_eq!(service_of(&pooled, services).as_deref(), Some("(warm pool)"));
        let other_pool = argv(&["unikernel-vmm", "--pool-fd", "3", "--pool-of", "/tmp/other/services"]);
        assert_eq!(service_of(&other_pool, services), None);
    }

    #[test]
    fn the_error_line_is_found_at_the_end_of_a_long_log() {
        let dir = std::env::temp_dir().join(format!("uk-vmmlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("vmm.log");
        let mut text = "unikernel-vmm: warning: noise\n".repeat(1000);
        text.push_str(&contract::exit::error_line(&"triple fault at rip 0x1000"));
        text.push('\n');
        std::fs::write(&log, text).unwrap();
        assert_eq!(vmm_error(&log).as_deref(), Some("triple fault at rip 0x1000"));
        std::fs::write(&log, "").unwrap();
        assert_eq!(vmm_error(&log), None);
        assert_eq!(vmm_error(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

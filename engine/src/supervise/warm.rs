//! The warm pool: `unikernel-vmm` processes started ahead of need, each with its KVM VM,
//! memory and vCPUs already created, asleep on a socket until a start hands them what to
//! run (`contract::pool`). A start takes one and the pool refills in the background, off
//! the start path.
//!
//! A pooled VM has a fixed memory size and vCPU count (adding the memory slot after the
//! irqchip costs milliseconds on nested KVM), so the pool keeps VMMs per [`Shape`], for
//! the shapes recently started. How many follows demand ([`Demand::targets`]): one per
//! shape started in the last [`IDLE`], more while starts come faster, at most the
//! operator's bound in all (`--warm-pool`); an idle host keeps none. A waiting VMM costs
//! no CPU (it sleeps in `recvmsg`) and its process's memory (its guest memory is
//! reserved, not touched). It runs as root until the hand-off, when it jails itself like
//! any other VMM; it has seen no guest input before that.
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use contract::args::VmmArgs;
use contract::pool;
use contract::size::MemSize;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::process::{Launch, Process};

/// A shape with no start for this long keeps no VMM in the pool.
pub const IDLE: Duration = Duration::from_secs(300);

/// Starts within this window count towards the demand.
const WINDOW: Duration = Duration::from_secs(1);

/// A refill waits this long after the last take: the start that took a VMM is still
/// booting its guest, and on a small host a new VMM creating its VM beside it would
/// slow that boot down (measured: +4 ms on 2 cores).
const REFILL_AFTER: Duration = Duration::from_millis(100);

/// How long a pooled VMM may take to create its VM.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// After a pooled VMM failed, no new one is started for this long (a host without KVM
/// must not spawn VMMs in a loop).
const FAILED_PAUSE: Duration = Duration::from_secs(10);

/// What a pooled VM is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub memory: u64,
    pub vcpus: u8,
}

/// The starts of recent seconds, per shape.
#[derive(Debug, Default)]
pub struct Demand {
    /// Per shape, its starts inside [`WINDOW`] and its last start.
    shapes: HashMap<Shape, (Vec<Instant>, Instant)>,
}

impl Demand {
    pub fn record(&mut self, shape: Shape, now: Instant) {
        let entry = self.shapes.entry(shape).or_insert_with(|| (Vec::new(), now));
        entry.0.retain(|t| now.duration_since(*t) < WINDOW);
        entry.0.push(now);
        entry.1 = now;
    }

    /// How many pooled VMMs each shape should have: as many as it had starts in the last
    /// second (at least one) while it was started in the last [`IDLE`]; `bound` in all,
    /// shared out from the most recently started shape down. Shapes idle for longer are
    /// forgotten.
    pub fn targets(&mut self, now: Instant, bound: usize) -> Vec<(Shape, usize)> {
        self.shapes.retain(|_, (_, last)| now.duration_since(*last) < IDLE);
        let mut shapes: Vec<(Shape, usize, Instant)> = self
            .shapes
            .iter()
            .map(|(shape, (recent, last))| {
                let recent = recent.iter().filter(|t| now.duration_since(**t) < WINDOW).count();
                (*shape, recent.max(1), *last)
            })
            .collect();
        shapes.sort_by_key(|s| std::cmp::Reverse(s.2));
        let mut left = bound;
        shapes
            .into_iter()
            .map(|(shape, want, _)| {
                let n = want.min(left);
                left -= n;
                (shape, n)
            })
            .collect()
    }
}

/// A pooled VMM that said it is ready.
pub struct WarmVmm {
    pub process: Process,
    socket: UnixStream,
}

impl WarmVmm {
    /// Hands the VMM what to run: `args` name `fds` by index (`contract::pool`).
    pub fn hand_off(self, args: &VmmArgs, stderr: &std::fs::File, fds: &[OwnedFd]) -> Result<Process, String> {
        let fds: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        match pool::send(&self.socket, args, stderr.as_fd(), &fds) {
            Ok(()) => Ok(self.process),
            Err(e) => {
                // Killed while it waited, say: it is reaped and the start goes cold.
                reap(self.process);
                Err(e.to_string())
            }
        }
    }
}

impl WarmVmm {
    /// Lets a VMM that is no longer wanted go: its socket closes, it exits by itself
    /// (see `contract::pool`), and it is reaped.
    fn release(self) {
        drop(self.socket);
        tokio::spawn(async move {
            let _ = self.process.wait().await;
        });
    }
}

/// Ends a pooled VMM nobody will use (it may not be listening), and reaps it.
fn reap(process: Process) {
    let _ = process.signal(libc::SIGKILL);
    tokio::spawn(async move {
        let _ = process.wait().await;
    });
}

struct State {
    ready: HashMap<Shape, Vec<WarmVmm>>,
    starting: HashMap<Shape, usize>,
    demand: Demand,
    paused_until: Option<Instant>,
    last_take: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// Held by the refill task too, which must not keep the pool alive.
    wake: Arc<Notify>,
    vmm: PathBuf,
    /// The state directory's services folder, on each pooled VMM's command line (so that
    /// a later daemon's sweep recognises it).
    services: PathBuf,
    cpuid_cache: PathBuf,
    bound: usize,
}

/// The pool; dropping it closes every waiting VMM's socket, and they exit.
pub struct WarmPool {
    shared: Arc<Shared>,
}

/// A live view of a pool's size that does not keep the pool alive.
#[derive(Clone, Debug)]
pub struct PoolGauge(Weak<Shared>);

impl PoolGauge {
    /// Pooled VMMs ready now (0 once the pool is gone).
    pub fn ready(&self) -> usize {
        self.0
            .upgrade()
            .map_or(0, |s| lock(&s.state).ready.values().map(Vec::len).sum())
    }
}

impl WarmPool {
    /// A pool of at most `bound` VMMs (None for 0: no pool), refilled by a task on the
    /// current tokio runtime.
    pub fn start(vmm: PathBuf, services: PathBuf, cpuid_cache: PathBuf, bound: usize) -> Option<WarmPool> {
        if bound == 0 {
            return None;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: HashMap::new(),
                starting: HashMap::new(),
                demand: Demand::default(),
                paused_until: None,
                last_take: None,
            }),
            wake: Arc::new(Notify::new()),
            vmm,
            services,
            cpuid_cache,
            bound,
        });
        tokio::spawn(refill(Arc::downgrade(&shared), shared.wake.clone()));
        Some(WarmPool { shared })
    }

    /// A ready VMM of `shape`, if the pool has one. Every call counts as demand for
    /// `shape`, so a miss grows the pool for the next start.
    pub fn take(&self, shape: Shape) -> Option<WarmVmm> {
        let taken = {
            let mut state = lock(&self.shared.state);
            let now = Instant::now();
            state.demand.record(shape, now);
            state.last_take = Some(now);
            state.ready.get_mut(&shape).and_then(Vec::pop)
        };
        self.shared.wake.notify_one();
        taken
    }

    pub fn gauge(&self) -> PoolGauge {
        PoolGauge(Arc::downgrade(&self.shared))
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.shared.wake.notify_one();
        let ready: Vec<WarmVmm> = lock(&self.shared.state).ready.drain().flat_map(|(_, v)| v).collect();
        // Reaped if a runtime is left; without one the daemon is exiting anyway.
        if tokio::runtime::Handle::try_current().is_ok() {
            ready.into_iter().for_each(WarmVmm::release);
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps the pool at its targets: starts what is missing, ends what is no longer wanted.
/// Runs until the pool is dropped.
async fn refill(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let Some(pool) = shared.upgrade() else { return };
        let quiet_at = lock(&pool.state).last_take.map(|t| t + REFILL_AFTER);
        if let Some(at) = quiet_at.filter(|at| *at > Instant::now()) {
            drop(pool);
            tokio::time::sleep_until(at).await;
            continue;
        }
        let now = Instant::now();
        let mut to_start = Vec::new();
        let mut surplus = Vec::new();
        {
            let mut state = lock(&pool.state);
            let paused = state.paused_until.is_some_and(|t| now < t);
            let targets: HashMap<Shape, usize> = state.demand.targets(now, pool.bound).into_iter().collect();
            let shapes: Vec<Shape> = state.ready.keys().chain(targets.keys()).copied().collect();
            for shape in shapes {
                let want = targets.get(&shape).copied().unwrap_or(0);
                let starting = state.starting.get(&shape).copied().unwrap_or(0);
                let ready = state.ready.entry(shape).or_default();
                while ready.len() + starting > want && !ready.is_empty() {
                    surplus.extend(ready.pop());
                }
                let have = ready.len() + starting;
                if !paused && have < want {
                    to_start.extend(std::iter::repeat_n(shape, want - have));
                }
            }
            state.ready.retain(|_, v| !v.is_empty());
            for shape in &to_start {
                *state.starting.entry(*shape).or_default() += 1;
            }
        }
        surplus.into_iter().for_each(WarmVmm::release);
        for shape in to_start {
            match spawn(&pool, shape) {
                Ok((process, socket)) => {
                    tokio::spawn(until_ready(Arc::downgrade(&pool), shape, process, socket));
                }
                Err(e) => {
                    tracing::warn!("warm pool: cannot start a VMM: {e}");
                    failed(&pool, shape);
                }
            }
        }
        // Woken by a take (or the pool's end), or once a second to let an idle shape's
        // VMMs go.
        drop(pool);
        let _ = tokio::time::timeout(WINDOW, wake.notified()).await;
    }
}

fn failed(pool: &Shared, shape: Shape) {
    let mut state = lock(&pool.state);
    if let Some(n) = state.starting.get_mut(&shape) {
        *n = n.saturating_sub(1);
    }
    state.paused_until = Some(Instant::now() + FAILED_PAUSE);
}

fn spawn(pool: &Shared, shape: Shape) -> std::io::Result<(Process, UnixStream)> {
    let (ours, theirs) = pool::socket_pair()?;
    let args = VmmArgs {
        kernel: None,
        pool_fd: Some(theirs.as_raw_fd()),
        pool_of: Some(pool.services.clone()),
        pool_room: Some(" ".repeat(pool::ROOM)),
        memory: MemSize::from_bytes(shape.memory),
        vcpus: shape.vcpus,
        cpuid_cache: Some(pool.cpuid_cache.clone()),
        ..VmmArgs::new(PathBuf::new())
    };
    let launch = Launch {
        vmm: pool.vmm.clone(),
        args: args.to_argv(),
        inherit: vec![theirs.into()],
        // Until the hand-off, its words (why it could not create a VM) go to ours.
        stderr: None,
    };
    let process = Process::spawn(launch)?;
    ours.set_nonblocking(true)?;
    Ok((process, ours))
}

/// Waits for a new pooled VMM's READY, then puts it in the pool.
async fn until_ready(pool: Weak<Shared>, shape: Shape, process: Process, socket: UnixStream) {
    let ready = async {
        let socket = tokio::net::UnixStream::from_std(socket)?;
        let mut buf = [0u8; 16];
        loop {
            socket.readable().await?;
            match socket.try_read(&mut buf) {
                Ok(n) => return Ok(pool::is_ready(&buf[..n])?.then_some(socket.into_std()?)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    };
    let result = tokio::time::timeout(READY_WITHIN, ready).await;
    let Some(pool) = pool.upgrade() else {
        reap(process);
        return;
    };
    match result {
        Ok(Ok(Some(socket))) => {
            let mut state = lock(&pool.state);
            if let Some(n) = state.starting.get_mut(&shape) {
                *n = n.saturating_sub(1);
            }
            state.ready.entry(shape).or_default().push(WarmVmm { process, socket });
        }
        other => {
            let why = match other {
                Ok(Ok(None)) => "it exited (see the lines before)".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("not ready within {READY_WITHIN:?}"),
                Ok(Ok(Some(_))) => unreachable!(),
            };
            tracing::warn!(
                "warm pool: a VMM for {} x{} failed: {why}; no pool for {FAILED_PAUSE:?}",
                MemSize::from_bytes(shape.memory),
                shape.vcpus
            );
            reap(process);
            failed(&pool, shape);
        }
    }
    pool.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Shape = Shape {
        memory: 16 << 20,
        vcpus: 1,
    };
    const B: Shape = Shape {
        memory: 64 << 20,
        vcpus: 2,
    };

    #[tokio::test(start_paused = true)]
    async fn the_pool_follows_demand_within_its_bound() {
        let mut demand = Demand::default();
        let t0 = Instant::now();
        assert!(demand.targets(t0, 4).is_empty(), "an idle host keeps none");
        demand.record(A, t0);
        assert_eq!(demand.targets(t0, 4), vec![(A, 1)]);
        // Five starts within a second: five wanted, but at most the bound.
        for i in 1..5 {
            demand.record(A, t0 + Duration::from_millis(100 * i));
        }
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(demand.targets(t1, 4), vec![(A, 4)]);
        assert_eq!(demand.targets(t1, 8), vec![(A, 5)]);
        // A quiet second later: back to one.
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(demand.targets(t2, 4), vec![(A, 1)]);
        // A second shape, started last, is served first when the bound is tight.
        demand.record(B, t2);
        assert_eq!(demand.targets(t2, 1), vec![(B, 1), (A, 0)]);
        let mut both = demand.targets(t2, 4);
        both.sort_by_key(|(s, _)| s.memory);
        assert_eq!(both, vec![(A, 1), (B, 1)]);
        // Idle for IDLE: forgotten.
        let t3 = t2 + IDLE;
        assert!(demand.targets(t3, 4).is_empty());
    }
}

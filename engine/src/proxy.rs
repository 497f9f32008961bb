//! Host ports: the daemon listens on each `expose` host port and splices connections to
//! the guest. A user-space proxy rather than DNAT because the daemon must hold the
//! listening socket anyway for scale to zero (the first connection wakes the VM), because
//! it works the same for connections from the host itself (DNAT needs route_localnet and
//! an OUTPUT rule for those), and because a connection that arrives while the VM boots,
//! restarts or wakes waits for it instead of being refused.
//!
//! Each service's listeners share a [`Gate`]: where connections go (the guest address
//! while it serves), the traffic seen ([`Activity`], which the controller's idle clock
//! reads), and how to ask for a wake. A connection open across a standby keeps its
//! daemon-side socket to the guest: the guest's end of it is in the snapshot, so the
//! next byte from the client waits for the wake and then goes on as if nothing happened.
//!
//! Remote clients must not be able to exhaust the daemon ([`Limits`]): each service has a
//! cap on open connections and a smaller one on connections waiting for its guest,
//! connecting to the guest times out, and a connection that carries nothing for the idle
//! timeout is closed. A full fd table (EMFILE) is logged with its name and accepting
//! resumes by itself when descriptors free up.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a connection waits for a booting or waking VM before it is closed.
const WAIT_FOR_GUEST: Duration = Duration::from_secs(10);
const CHUNK: usize = 16 * 1024;

/// What one service's host ports accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections through all its host ports; more are closed at once.
    pub max_open: usize,
    /// Of those, connections waiting for a guest (booting, waking, stopped); a stopped
    /// service must not collect thousands of sockets.
    pub max_waiting: usize,
    pub connect_timeout: Duration,
    /// A connection without a byte either way for this long is closed (also one held
    /// through a standby).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_open: 4096,
            max_waiting: 256,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// Where connections go: the guest address while the service is running, else `None`.
pub type Target = watch::Receiver<Option<Ipv4Addr>>;

/// Traffic through a service's host ports, read by the controller's idle clock.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    open: AtomicUsize,
    /// Milliseconds after `base` of the last byte, connection or close.
    last_ms: AtomicU64,
    waiting: AtomicUsize,
    /// Connections closed at once because a limit was reached (for the log).
    refused: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: Instant::now(),
            open: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because a limit was reached, since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How long since the last byte, connection or close.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// Counts a connection while it lives.
pub struct OpenGuard(Arc<Activity>);

impl OpenGuard {
    pub fn new(a: Arc<Activity>) -> Self {
        a.open.fetch_add(1, Ordering::Relaxed);
        a.touch();
        OpenGuard(a)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every listener of one service shares.
#[derive(Clone)]
pub struct Gate {
    pub target: Target,
    pub activity: Arc<Activity>,
    /// Asks the controller to wake the service (it ignores this unless it is on standby).
    pub wake: Arc<dyn Fn() + Send + Sync>,
    pub limits: Limits,
}

/// Counts a connection waiting for a guest while it waits.
struct WaitGuard<'a>(&'a Activity);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// The guest address, waiting (and asking for a wake) while there is none.
    async fn guest(&mut self) -> std::io::Result<Ipv4Addr> {
        if let Some(a) = *self.target.borrow_and_update() {
            return Ok(a);
        }
        if self.activity.waiting.fetch_add(1, Ordering::Relaxed) >= self.limits.max_waiting {
            self.activity.waiting.fetch_sub(1, Ordering::Relaxed);
            self.activity.refused.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "{} connections already wait for the guest",
                self.limits.max_waiting
            )));
        }
        let _waiting = WaitGuard(&self.activity);
        (self.wake)();
        let address = tokio::time::timeout(WAIT_FOR_GUEST, self.target.wait_for(Option::is_some))
            .await
            .map_err(|_| std::io::Error::other("the service did not become ready in time"))?
            .map_err(|_| std::io::Error::other("the service is gone"))?;
        (*address).ok_or_else(|| std::io::Error::other("no guest address"))
    }
}

/// Binds `bind` (0.0.0.0 for every address; the bind error, e.g. port in use, is
/// immediate) and serves it until the returned task is aborted.
pub fn listen(service: &str, bind: SocketAddrV4, guest_port: u16, gate: Gate) -> std::io::Result<JoinHandle<()>> {
    let host_port = bind.port();
    let std_listener = std::net::TcpListener::bind(SocketAddr::V4(bind))?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let service = service.to_string();
    Ok(tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(e) => {
                    // EMFILE/ENFILE/ENOMEM: the connection stays queued in the kernel and
                    // is accepted once descriptors free up. Said once a minute, not per try.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(
                            UNIKERNEL = %service,
                            "cannot accept on host port {host_port}: {e}{}",
                            if e.raw_os_error() == Some(libc::EMFILE) {
                                " (the daemon's file descriptor limit, RLIMIT_NOFILE, is reached)"
                            } else {
                                ""
                            }
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if gate.activity.open() >= gate.limits.max_open {
                gate.activity.refused.fetch_add(1, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        UNIKERNEL = %service,
                        "host port {host_port}: {} connections are open, the most a service takes; closing new ones",
                        gate.limits.max_open
                    );
                }
                continue;
            }
            let gate = gate.clone();
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(e) = forward(client, guest_port, gate).await {
                    tracing::debug!(UNIKERNEL = %service, "proxied connection on port {host_port}: {e}");
                }
            });
        }
    }))
}

async fn forward(client: TcpStream, guest_port: u16, mut gate: Gate) -> std::io::Result<()> {
    let activity = gate.activity.clone();
    let limits = gate.limits;
    let _open = OpenGuard::new(activity.clone());
    let address = gate.guest().await?;
    let guest = tokio::time::timeout(
        limits.connect_timeout,
        TcpStream::connect(SocketAddrV4::new(address, guest_port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to the guest timed out"))??;
    // This connection's last byte, either way (the service's idle clock is `activity`).
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || {
        activity.touch();
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    };
    client.set_nodelay(true)?;
    guest.set_nodelay(true)?;
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut guest_rx, mut guest_tx) = guest.into_split();
    let upstream = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = client_rx.read(&mut buf).await?;
            touch();
            if n == 0 {
                return guest_tx.shutdown().await;
            }
            // The service may have gone to standby while this connection was quiet.
            gate.guest().await?;
            guest_tx.write_all(&buf[..n]).await?;
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = guest_rx.read(&mut buf).await?;
            touch();
            if n == 0 {
                return client_tx.shutdown().await;
            }
            client_tx.write_all(&buf[..n]).await?;
        }
    };
    let idle = async {
        loop {
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= limits.idle_timeout {
                return;
            }
            tokio::time::sleep(limits.idle_timeout - quiet).await;
        }
    };
    tokio::select! {
        (up, down) = async { tokio::join!(upstream, downstream) } => up.and(down),
        () = idle => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle for too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn gate(rx: Target) -> (Gate, Arc<AtomicBool>) {
        let woken = Arc::new(AtomicBool::new(false));
        let w = woken.clone();
        let gate = Gate {
            target: rx,
            activity: Arc::new(Activity::default()),
            wake: Arc::new(move || w.store(true, Ordering::SeqCst)),
            limits: Limits::default(),
        };
        (gate, woken)
    }

    fn any(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
    }

    fn free_port() -> u16 {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn waits_for_the_target_asks_for_a_wake_then_splices() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_port = backend.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(None);
        let host_port = free_port();
        let (gate, woken) = gate(rx);
        let activity = gate.activity.clone();
        let task = listen("t", any(host_port), backend_port, gate).unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(("127.0.0.1", host_port)).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.unwrap();
            buf
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!client.is_finished(), "no target yet: the connection waits");
        assert!(woken.load(Ordering::SeqCst), "and asked for a wake");
        assert_eq!(activity.open(), 1);
        tx.send(Some(Ipv4Addr::LOCALHOST)).unwrap();
        let (mut s, _) = backend.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(activity.open(), 0, "closed on both sides");
        assert!(activity.quiet_for() < Duration::from_secs(1));
        task.abort();
        let _ = task.await;
        // The port is free again once the task is gone.
        std::net::TcpListener::bind(("0.0.0.0", host_port)).unwrap();
    }

    #[tokio::test]
    async fn a_held_connection_waits_through_a_standby_and_goes_on() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_port = backend.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(Some(Ipv4Addr::LOCALHOST));
        let host_port = free_port();
        let (gate, woken) = gate(rx);
        let _task = listen("t", any(host_port), backend_port, gate).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", host_port)).await.unwrap();
        c.write_all(b"one").await.unwrap();
        let (mut s, _) = backend.accept().await.unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.unwrap();
        assert!(!woken.load(Ordering::SeqCst));
        // Standby: no target. The client's next bytes wait, and ask for the wake.
        tx.send(None).unwrap();
        c.write_all(b"two").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(woken.load(Ordering::SeqCst));
        tx.send(Some(Ipv4Addr::LOCALHOST)).unwrap();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"two");
    }

    #[tokio::test]
    async fn waiting_and_open_connections_are_capped_and_quiet_ones_closed() {
        let (tx, rx) = watch::channel(None);
        let host_port = free_port();
        let (mut capped, _) = gate(rx);
        capped.limits = Limits {
            max_open: 6,
            max_waiting: 4,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_millis(300),
        };
        let activity = capped.activity.clone();
        let _task = listen("t", any(host_port), 1, capped).unwrap();
        // No guest: four wait, the others are closed at once.
        let mut clients = Vec::new();
        for _ in 0..7 {
            clients.push(TcpStream::connect(("127.0.0.1", host_port)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut closed = 0;
        for c in &mut clients {
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(50), c.read(&mut b)).await {
                closed += 1;
            }
        }
        assert_eq!(closed, 3, "7 clients, 4 may wait");
        assert_eq!(activity.open(), 4);
        assert_eq!(activity.refused(), 3);
        drop(clients);

        // A guest: a connection that says nothing is closed after the idle timeout.
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx2, rx2) = watch::channel(Some(Ipv4Addr::LOCALHOST));
        let port2 = free_port();
        let (mut gate2, _) = gate(rx2);
        gate2.limits.idle_timeout = Duration::from_millis(300);
        let _task2 = listen("t", any(port2), backend.local_addr().unwrap().port(), gate2).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", port2)).await.unwrap();
        let (_s, _) = backend.accept().await.unwrap();
        let t = std::time::Instant::now();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "closed by the proxy");
        assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
        drop((tx, tx2));
    }

    #[tokio::test]
    async fn a_taken_port_is_an_immediate_error() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (_tx, rx) = watch::channel(None);
        assert!(listen("t", any(port), 80, gate(rx).0).is_err());
    }
}

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

/// Where connections go: the guest address while the service is running, else `None`.
pub type Target = watch::Receiver<Option<Ipv4Addr>>;

/// Traffic through a service's host ports, read by the controller's idle clock.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    open: AtomicUsize,
    /// Milliseconds after `base` of the last byte, connection or close.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: Instant::now(),
            open: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
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
}

impl Gate {
    /// The guest address, waiting (and asking for a wake) while there is none.
    async fn guest(&mut self) -> std::io::Result<Ipv4Addr> {
        if let Some(a) = *self.target.borrow_and_update() {
            return Ok(a);
        }
        (self.wake)();
        let address = tokio::time::timeout(WAIT_FOR_GUEST, self.target.wait_for(Option::is_some))
            .await
            .map_err(|_| std::io::Error::other("the service did not become ready in time"))?
            .map_err(|_| std::io::Error::other("the service is gone"))?;
        (*address).ok_or_else(|| std::io::Error::other("no guest address"))
    }
}

/// Binds `host_port` on all addresses (so the bind error, e.g. port in use, is immediate)
/// and serves it until the returned task is aborted.
pub fn listen(service: &str, host_port: u16, guest_port: u16, gate: Gate) -> std::io::Result<JoinHandle<()>> {
    let std_listener = std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], host_port)))?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let service = service.to_string();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
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
    let _open = OpenGuard::new(activity.clone());
    let address = gate.guest().await?;
    let guest = TcpStream::connect(SocketAddrV4::new(address, guest_port)).await?;
    client.set_nodelay(true)?;
    guest.set_nodelay(true)?;
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut guest_rx, mut guest_tx) = guest.into_split();
    let upstream = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = client_rx.read(&mut buf).await?;
            activity.touch();
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
            activity.touch();
            if n == 0 {
                return client_tx.shutdown().await;
            }
            client_tx.write_all(&buf[..n]).await?;
        }
    };
    let (up, down): (std::io::Result<()>, std::io::Result<()>) = tokio::join!(upstream, downstream);
    up.and(down)
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
        };
        (gate, woken)
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
        let task = listen("t", host_port, backend_port, gate).unwrap();
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
        let _task = listen("t", host_port, backend_port, gate).unwrap();
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
    async fn a_taken_port_is_an_immediate_error() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (_tx, rx) = watch::channel(None);
        assert!(listen("t", port, 80, gate(rx).0).is_err());
    }
}

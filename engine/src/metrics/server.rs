//! The metrics endpoint: a TCP address or a unix socket (`unix:/run/unikerneld/metrics.sock`)
//! answering `GET /metrics` with the text exposition format. Deliberately small: one
//! request per connection, headers bounded in size and time, a few connections at once,
//! and the per-VM figures read from /proc on a blocking thread, off the control loop.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::{render, Process};
use crate::dbus::Shared;

/// Where the endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{s:?}: a unix socket needs an absolute path, like unix:/run/unikerneld/metrics.sock"
                ));
            }
            return Ok(Endpoint::Unix(path));
        }
        s.parse::<SocketAddr>()
            .map(Endpoint::Tcp)
            .map_err(|_| format!("{s:?}: write ADDRESS:PORT (127.0.0.1:9633) or unix:/PATH"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "http://{a}/metrics"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 8;

/// A listening socket of either kind.
trait Listener: Send + 'static {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl std::future::Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Conn> {
        self.accept().await.map(|(conn, _)| conn)
    }
}

impl Listener for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Conn> {
        self.accept().await.map(|(conn, _)| conn)
    }
}

/// Binds `endpoint` (errors are the caller's to report) and serves it until the task is
/// aborted.
pub async fn serve(endpoint: Endpoint, shared: Shared) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let task = match &endpoint {
        Endpoint::Tcp(addr) => accept_loop(tokio::net::TcpListener::bind(addr).await?, shared),
        Endpoint::Unix(path) => {
            let _ = std::fs::remove_file(path);
            accept_loop(tokio::net::UnixListener::bind(path)?, shared)
        }
    };
    info!("metrics on {endpoint}");
    Ok(task)
}

fn accept_loop<L: Listener>(listener: L, shared: Shared) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            match listener.accept_one().await {
                Ok(conn) => spawn_answer(conn, shared.clone(), slots.clone()),
                Err(e) => pause_on_error(e).await,
            }
        }
    })
}

/// Out of fds (or another accept error): say so, and try again shortly rather than spin.
async fn pause_on_error(e: std::io::Error) {
    warn!("metrics: accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_answer<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(conn: S, shared: Shared, slots: Arc<Semaphore>) {
    // A scraper that opens more than a few connections at once waits for a slot: the
    // daemon never holds more than MAX_CONNECTIONS answers in flight.
    let Ok(permit) = slots.try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(conn, shared)).await;
    });
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S, shared: Shared) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, target) {
        ("GET", "/metrics" | "/") => ("200 OK", body(shared).await),
        ("GET", _) => ("404 Not Found", "not found: the metrics are at /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

async fn body(shared: Shared) -> String {
    tokio::task::spawn_blocking(move || {
        let (snapshot, stats) = {
            let p = shared.read().unwrap_or_else(|p| p.into_inner());
            let mut stats = p.stats.clone();
            stats.pool_ready = p.pool.as_ref().map_or(0, |g| g.ready() as u64);
            (p.snapshot.clone(), stats)
        };
        let memory: Vec<(String, u64)> = snapshot
            .services
            .iter()
            .filter_map(|s| {
                let pid = s.pid?;
                Some((s.name.clone(), Process::read(Some(pid))?.resident_bytes))
            })
            .collect();
        render(&snapshot, &stats, Process::read(None).unwrap_or_default(), &memory)
    })
    .await
    .unwrap_or_else(|e| format!("# metrics unavailable: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_say_how_when_they_do_not() {
        assert_eq!(
            "127.0.0.1:9633".parse::<Endpoint>(),
            Ok(Endpoint::Tcp("127.0.0.1:9633".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/unikerneld/metrics.sock".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/run/unikerneld/metrics.sock".into()))
        );
        assert!("unix:metrics.sock"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("absolute path"));
        assert!("localhost".parse::<Endpoint>().unwrap_err().contains("ADDRESS:PORT"));
    }
}

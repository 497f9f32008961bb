//! Host ports: the daemon listens on each `expose` host port and splices connections to
//! the guest. A user-space proxy rather than DNAT because the daemon must hold the
//! listening socket anyway for scale to zero (the first connection wakes the VM), because
//! it works the same for connections from the host itself (DNAT needs route_localnet and
//! an OUTPUT rule for those), and because a connection that arrives while the VM boots or
//! restarts waits for it instead of being refused.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a connection waits for a booting VM before it is closed.
const WAIT_FOR_GUEST: Duration = Duration::from_secs(10);

/// Where connections go: the guest address while the service is running, else `None`.
pub type Target = watch::Receiver<Option<Ipv4Addr>>;

/// Binds `host_port` on all addresses (so the bind error, e.g. port in use, is immediate)
/// and serves it until the returned task is aborted.
pub fn listen(service: &str, host_port: u16, guest_port: u16, target: Target) -> std::io::Result<JoinHandle<()>> {
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
            let target = target.clone();
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(e) = forward(client, guest_port, target).await {
                    tracing::debug!(UNIKERNEL = %service, "proxied connection on port {host_port}: {e}");
                }
            });
        }
    }))
}

async fn forward(mut client: TcpStream, guest_port: u16, mut target: Target) -> std::io::Result<()> {
    let address = tokio::time::timeout(WAIT_FOR_GUEST, target.wait_for(Option::is_some))
        .await
        .map_err(|_| std::io::Error::other("the service did not become ready in time"))?
        .map_err(|_| std::io::Error::other("the service is gone"))?
        .expect("waited for Some");
    let mut guest = TcpStream::connect(SocketAddrV4::new(address, guest_port)).await?;
    client.set_nodelay(true)?;
    guest.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut guest).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn waits_for_the_target_then_splices() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_port = backend.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(None);
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host_port = free.local_addr().unwrap().port();
        drop(free);
        let task = listen("t", host_port, backend_port, rx).unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(("127.0.0.1", host_port)).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.unwrap();
            buf
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!client.is_finished(), "no target yet: the connection waits");
        tx.send(Some(Ipv4Addr::LOCALHOST)).unwrap();
        let (mut s, _) = backend.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
        task.abort();
        let _ = task.await;
        // The port is free again once the task is gone.
        std::net::TcpListener::bind(("0.0.0.0", host_port)).unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_an_immediate_error() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (_tx, rx) = watch::channel(None);
        assert!(listen("t", port, 80, rx).is_err());
    }
}

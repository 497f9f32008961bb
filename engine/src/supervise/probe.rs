//! Readiness: a service is `running` when its guest accepts a TCP connection on its
//! (first) exposed guest port — not when a process exists.
use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::net::TcpStream;

/// Tries until the guest accepts. Tight at first (a guest boots in milliseconds), slower
/// after a second so a slow or broken guest costs little.
pub async fn until_accepts(addr: SocketAddrV4) {
    let start = tokio::time::Instant::now();
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(20), TcpStream::connect(addr)).await;
        if let Ok(Ok(_stream)) = attempt {
            return;
        }
        let pause = if start.elapsed() < Duration::from_secs(1) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_once_something_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
        let probe = tokio::spawn(until_accepts(addr));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!probe.is_finished(), "nothing listens yet");
        let _l = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .unwrap()
            .unwrap();
    }
}

//! The daemon's side of a VMM's control socket (protocol: `contract::control`).
use std::path::Path;
use std::time::Duration;

use contract::control::{Reply, Request};

use crate::controller::host::Liveness;
use std::os::fd::{AsFd, OwnedFd};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

/// A snapshot of a 1 GiB guest that touched all its memory takes about a second here;
/// anything much longer is a VMM that no longer answers.
const REPLY_LIMIT: Duration = Duration::from_secs(30);

/// How long a VMM may take to answer a liveness ping (its event loop answers in
/// microseconds; this allows for a host under heavy load).
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(5);

/// Sends one request and reads its reply.
pub async fn request(path: &Path, request: &Request) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(format!("{request}\n").as_bytes()).await?;
    reply(stream).await
}

/// Sends one request with `fd` riding along (SCM_RIGHTS), and reads its reply.
pub async fn request_with_fd(path: &Path, request: &Request, fd: OwnedFd) -> std::io::Result<Reply> {
    let stream = UnixStream::connect(path).await?;
    let line = format!("{request}\n");
    loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            contract::control::send_with_fd(stream.as_fd(), line.as_bytes(), fd.as_fd())
        }) {
            // A short line on a fresh connection goes whole.
            Ok(n) if n == line.len() => break,
            Ok(_) => return Err(std::io::Error::other("the request was sent in part")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    reply(stream).await
}

async fn reply(stream: UnixStream) -> std::io::Result<Reply> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    tokio::time::timeout(REPLY_LIMIT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the VMM did not answer"))??;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the VMM closed the control socket without an answer",
        ));
    }
    Ok(Reply::parse(&line))
}

/// One liveness ping. A failure that is the daemon's own (no descriptor or memory left
/// for the socket) is [`Liveness::NotChecked`]: the VMM is not to blame for it.
pub async fn ping(path: &Path) -> Liveness {
    match tokio::time::timeout(LIVENESS_LIMIT, request(path, &Request::Ping)).await {
        Ok(Ok(Reply::Ok(_))) => Liveness::Answered,
        Ok(Err(e)) if super::out_of_resources(&e) => Liveness::NotChecked(e.to_string()),
        _ => Liveness::Silent,
    }
}

/// Returns once the VMM answers a ping: its event loop runs, and so do its vCPUs. The
/// daemon binds the socket before the spawn (`--control-fd`), so the first ping connects
/// at once and waits in its read for the answer; a retry only follows a VMM that closed
/// the socket (it ended).
pub async fn until_running(path: &Path) {
    loop {
        if let Ok(Reply::Ok(_)) = request(path, &Request::Ping).await {
            return;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

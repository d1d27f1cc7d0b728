//! "Does this address answer HTTP?" — the readiness test for a starting workspace, over TCP or
//! over the Unix socket of an isolated local workspace.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use wakeway_proxy::Upstream;

/// True when `addr` accepts a connection and answers a `GET /` with any HTTP status line.
pub async fn answers_http(addr: &Upstream) -> bool {
    let attempt = async {
        match addr {
            Upstream::Tcp(addr) => asks(TcpStream::connect(addr).await.ok()?).await,
            Upstream::Unix(path) => asks(UnixStream::connect(&**path).await.ok()?).await,
        }
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Some(true)))
}

async fn asks(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> Option<bool> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: wakeway-probe\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await.ok()?;
    Some(&head == b"HTTP/")
}

/// Poll `addr` until it answers HTTP, `deadline` passes (false), or `gave_up` resolves (false).
/// Polls quickly at first (a local process is often up within milliseconds), then every 100 ms.
pub async fn wait_until_answers(
    addr: &Upstream,
    deadline: tokio::time::Instant,
    gave_up: impl std::future::Future<Output = ()>,
) -> bool {
    let poll = async {
        let mut delay = Duration::from_millis(2);
        loop {
            if answers_http(addr).await {
                return true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    };
    tokio::select! {
        ok = tokio::time::timeout_at(deadline, poll) => ok.unwrap_or(false),
        _ = gave_up => false,
    }
}

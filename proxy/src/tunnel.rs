//! WebSockets after their `101`: both connections relayed by a small task of ours.
//!
//! An open VS Code tab holds two WebSockets for hours, nearly always idle. Relayed by pingora, each
//! kept the whole request alive: the connection's task, the request's future, two 64 KiB body
//! buffers, the sessions' headers and digests (~52 KiB per socket against nginx's ~18). Once the
//! workspace has answered `101`, pingora hands us both streams (`ProxyHttp::upgraded_tunnel`, a
//! patch of the vendored pingora-proxy) and [`relay`] moves the bytes: no buffer is held while a
//! socket waits — reads go into one scratch buffer per thread, and only a chunk the other side
//! cannot take yet is kept. Every chunk is still counted, classified and checked against
//! revocation by the same [`Meter`] the body filters use.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use pingora::proxy::{Tunnel, Upgraded};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::activity::ClientStream;
use crate::handle::{OpenConnection, SessionHandle, WebSocketSlot};
use crate::service::{Meter, was_revoked};

/// The most read from one side at a time (the largest TLS record).
const CHUNK: usize = 16 * 1024;

thread_local! {
    /// Where every tunnel on this thread reads into; a chunk is copied out at its exact size.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// What a tunnel's bytes pass through: each chunk once, before it is written on. An error ends
/// the tunnel.
pub(crate) trait Observer {
    fn client_chunk(&mut self, chunk: &[u8]) -> io::Result<()>;
    fn upstream_chunk(&mut self, chunk: &[u8]) -> io::Result<()>;
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// One side closed; the other was told (its write side shut down) after everything read was
    /// passed on.
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Relay `client` ⇄ `upstream` until either side closes, an I/O error or the observer ends it,
/// or nothing moves for `idle`. The bytes already read on each side are passed on first.
pub(crate) async fn relay<C, U, O>(
    mut client: C,
    client_read: Option<Bytes>,
    mut upstream: U,
    upstream_read: Option<Bytes>,
    idle: Duration,
    observer: &mut O,
) -> io::Result<Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    O: Observer,
{
    let mut up = Half::default();
    let mut down = Half::default();
    if let Some(chunk) = client_read.filter(|c| !c.is_empty()) {
        observer.client_chunk(&chunk)?;
        up.pending = chunk;
    }
    if let Some(chunk) = upstream_read.filter(|c| !c.is_empty()) {
        observer.upstream_chunk(&chunk)?;
        down.pending = chunk;
    }
    // The `101` may still sit in the client stream's write buffer.
    down.flush = true;
    let mut last_moved = Instant::now();
    let mut timer = pin!(tokio::time::sleep_until(last_moved + idle));
    poll_fn(|cx| {
        let mut moved = false;
        let up_done = up.poll(cx, &mut client, &mut upstream, &mut moved, |c| observer.client_chunk(c))?;
        let down_done = down.poll(cx, &mut upstream, &mut client, &mut moved, |c| observer.upstream_chunk(c))?;
        if up_done.is_ready() || down_done.is_ready() {
            return Poll::Ready(Ok(Ended::Closed));
        }
        // The timer is armed once and moved only when it fires: no timer work per chunk.
        if moved {
            last_moved = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            if last_moved + idle <= Instant::now() {
                return Poll::Ready(Ok(Ended::Idle));
            }
            timer.as_mut().reset(last_moved + idle);
        }
        Poll::Pending
    })
    .await
}

/// One direction of a tunnel.
#[derive(Default)]
struct Half {
    /// Read, observed, not yet all written.
    pending: Bytes,
    /// Written since the last flush.
    flush: bool,
    /// The reading side closed: shut the writing side down once `pending` is out.
    eof: bool,
}

impl Half {
    /// Move bytes `from` → `to` until one side has to wait (`Pending`) or `from` closed and `to`
    /// was shut down (`Ready`).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        moved: &mut bool,
        mut observe: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<Poll<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while !self.pending.is_empty() {
                let n = match Pin::new(&mut *to).poll_write(cx, &self.pending)? {
                    Poll::Ready(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(n) => n,
                    Poll::Pending => return Ok(Poll::Pending),
                };
                self.pending.advance(n);
                self.flush = true;
            }
            if self.flush {
                if Pin::new(&mut *to).poll_flush(cx)?.is_pending() {
                    return Ok(Poll::Pending);
                }
                self.flush = false;
            }
            if self.eof {
                return Ok(Pin::new(&mut *to).poll_shutdown(cx)?);
            }
            let chunk = match read_chunk(cx, from)? {
                Poll::Ready(chunk) => chunk,
                Poll::Pending => return Ok(Poll::Pending),
            };
            if chunk.is_empty() {
                self.eof = true;
                continue;
            }
            observe(&chunk)?;
            *moved = true;
            self.pending = chunk;
        }
    }
}

/// One read from `from` through the thread's scratch buffer, copied out at its size (empty: EOF).
fn read_chunk<R: AsyncRead + Unpin>(cx: &mut Context<'_>, from: &mut R) -> Poll<io::Result<Bytes>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        ready!(Pin::new(from).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled())))
    })
}

/// A WebSocket to a workspace after its `101`: what the request's context held that the bytes
/// still need, and the places it holds (its WebSocket slot, its open connection) until it ends.
pub(crate) struct WebSocketTunnel {
    pub(crate) handle: Arc<SessionHandle>,
    /// The client→workspace messages' classifier (None: the socket does not count as activity).
    pub(crate) ws: Option<Box<ClientStream>>,
    pub(crate) admitted_generation: Option<u64>,
    pub(crate) meter: Meter,
    pub(crate) idle_timeout: Duration,
    pub(crate) _slot: Option<WebSocketSlot>,
    pub(crate) _open: Option<OpenConnection>,
}

impl Observer for WebSocketTunnel {
    fn client_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.check_revoked()?;
        self.meter.client_chunk(&self.handle, self.ws.as_deref_mut(), chunk);
        Ok(())
    }

    fn upstream_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.check_revoked()?;
        self.meter.workspace_chunk(&self.handle, chunk);
        Ok(())
    }
}

impl WebSocketTunnel {
    fn check_revoked(&self) -> io::Result<()> {
        match was_revoked(&self.handle, self.admitted_generation) {
            true => Err(io::Error::other("the workspace's cookies were revoked")),
            false => Ok(()),
        }
    }
}

impl Tunnel for WebSocketTunnel {
    fn run(self: Box<Self>, streams: Upgraded) -> BoxFuture<'static, ()> {
        let mut tunnel = *self;
        Box::pin(async move {
            let Upgraded { downstream, downstream_read, upstream, upstream_read } = streams;
            let idle = tunnel.idle_timeout;
            match relay(downstream, downstream_read, upstream, upstream_read, idle, &mut tunnel).await {
                Ok(Ended::Closed) => {}
                Ok(Ended::Idle) => tracing::debug!(session = %tunnel.handle.id, "idle WebSocket closed"),
                Err(e) => tracing::debug!(session = %tunnel.handle.id, error = %e, "WebSocket ended"),
            }
        })
    }
}

#[cfg(test)]
mod tests;

//! wakeway's pingora proxy: routes `vs-code-<id>.<domain>` hosts to their workspace, records
//! activity, wakes sleeping workspaces and holds or answers requests while they start. Everything
//! else goes to the management API. It knows the lifecycle only through the [`Lifecycle`] trait.
//! It never blocks on the file system: `proxy/clippy.toml` denies `std::fs` and `Path` calls that
//! touch the disk, since every request runs on pingora's async runtimes.
#![forbid(unsafe_code)]

pub mod activity;
pub mod auth;
pub mod classify;
pub mod clock;
pub mod error;
pub mod front;
pub mod handle;
pub mod host;
pub mod pages;
#[cfg(test)]
mod proptests;
pub mod ratelimit;
pub mod refusal;
pub mod service;
pub mod stats;
pub mod tls;
mod tunnel;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::error_body;
pub use handle::{Activity, ActivitySource, Phase, SessionHandle, Upstream};
pub use host::{HostRoute, SessionId};
pub use service::WakewayProxy;
pub use stats::ProxyStats;

/// What the proxy needs from the lifecycle. Implemented by `wakeway-lifecycle`'s manager; tests
/// can implement it with a few lines.
#[async_trait::async_trait]
pub trait Lifecycle: Send + Sync + 'static {
    /// The session's in-memory handle, if the id is known (no I/O: called on every request).
    fn session(&self, id: &SessionId) -> Option<Arc<SessionHandle>>;

    /// Ask for the session to be awake. Returns at once; idempotent and single-flight: however
    /// many requests call it, one start happens. Progress is published on the handle's phase.
    fn request_wake(&self, handle: &Arc<SessionHandle>, source: ActivitySource);

    /// Activity on the session ended a quiet spell ([`Activity::touch`] said so): with several
    /// replicas, tell the others now rather than at the next checkpoint.
    fn active_again(&self, _handle: &Arc<SessionHandle>) {}

    /// A connection to `addr`, the session's published address, was refused: the workspace went
    /// away (stopped by another replica, crashed). Find out and publish where it is now (waking it
    /// if it sleeps), so the request can be retried once the phase settles.
    fn upstream_failed(&self, handle: &Arc<SessionHandle>, addr: &Upstream);

    /// Exchange a one-time sign-in token for access to session `id` (consumes it): the cookie
    /// generation to sign the cookie with. None for an unknown, expired, used, revoked, or other
    /// session's token.
    async fn redeem_token(&self, id: &SessionId, token: &str) -> Option<u64>;

    /// Serve one management API request (body already read and size-checked).
    async fn api(&self, request: http::Request<Bytes>, client: Option<IpAddr>) -> http::Response<ApiBody>;
}

/// A management API response body: whole, or a stream of chunks written as they come (a backup
/// download is never held in memory). A stream's response carries its own `Content-Length`.
pub enum ApiBody {
    Full(Bytes),
    Stream(futures::stream::BoxStream<'static, std::io::Result<Bytes>>),
}

impl From<Bytes> for ApiBody {
    fn from(bytes: Bytes) -> Self {
        ApiBody::Full(bytes)
    }
}

//! wakeway's lifecycle: the session state machine and idle policy, the backends that run
//! workspaces, the stores that keep sessions, verified backups, and the management API.
#![forbid(unsafe_code)]

pub mod acme;
pub mod api;
pub mod backend;
pub mod backup;
pub mod catalog;
pub mod failpoint;
pub mod manager;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod restore;
pub mod session;
pub mod store;
pub mod webhook;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::HttpBody as _;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::ServiceExt;
use wakeway_config::{BackendKind, Config};
use wakeway_proxy::{ActivitySource, ApiBody, Clock, ProxyStats, SessionHandle, SessionId};

pub use manager::{LifecycleError, Manager};

/// The lifecycle as the proxy sees it: the manager plus the API router.
#[derive(Clone)]
pub struct Wakeway {
    pub manager: Manager,
    router: Router,
}

impl Wakeway {
    pub fn new(manager: Manager, router: Router) -> Self {
        Wakeway { manager, router }
    }
}

#[async_trait::async_trait]
impl wakeway_proxy::Lifecycle for Wakeway {
    fn session(&self, id: &SessionId) -> Option<Arc<SessionHandle>> {
        self.manager.handle(id)
    }

    fn request_wake(&self, handle: &Arc<SessionHandle>, source: ActivitySource) {
        self.manager.request_wake(handle, source)
    }

    fn upstream_failed(&self, handle: &Arc<SessionHandle>, addr: std::net::SocketAddr) {
        self.manager.upstream_failed(handle, addr)
    }

    async fn redeem_token(&self, id: &SessionId, token: &str) -> Option<u64> {
        self.manager.redeem_token(id, token).await
    }

    async fn api(&self, request: http::Request<Bytes>, _client: Option<IpAddr>) -> http::Response<ApiBody> {
        // The request's extensions (the client's `FailureBudget`) go with it to the router.
        let request = request.map(axum::body::Body::from);
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        // A body of known size (every JSON answer) is collected; anything else (a backup
        // download) is handed over as a stream and written chunk by chunk.
        if body.size_hint().exact().is_none() {
            let chunks = body.into_data_stream().map(|chunk| chunk.map_err(std::io::Error::other));
            return http::Response::from_parts(parts, ApiBody::Stream(chunks.boxed()));
        }
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                tracing::error!(error = %e, "API response body failed");
                Bytes::new()
            }
        };
        http::Response::from_parts(parts, ApiBody::Full(bytes))
    }
}

/// Where to find code-server when `workspace_command` is empty: PATH, then the tools folder that
/// `scripts/install-code-server.sh` fills (`$WAKEWAY_TOOLS`, default `~/.local/share/wakeway/tools`).
pub fn find_code_server() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("code-server"));
    let tools = std::env::var_os("WAKEWAY_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/wakeway/tools")))
        .map(|t| t.join("bin/code-server"));
    on_path.chain(tools).find(|p| p.is_file())
}

/// The workspace command template to run: the configured one, or code-server with the flags a
/// proxied, per-user workspace needs.
pub fn workspace_command(config: &Config) -> Result<String, String> {
    if !config.workspace_command.trim().is_empty() {
        return Ok(config.workspace_command.clone());
    }
    let Some(code_server) = find_code_server() else {
        return Err("code-server was not found on PATH or in ~/.local/share/wakeway/tools/bin.\n  \
            Install it with:  scripts/install-code-server.sh\n  \
            or run another workspace server with WAKEWAY_WORKSPACE_COMMAND='your-server --port {port} {workspace}'"
            .into());
    };
    let quoted = format!("'{}'", code_server.to_string_lossy().replace('\'', r"'\''"));
    Ok(format!(
        "exec {quoted} --bind-addr 127.0.0.1:{{port}} --auth none --disable-telemetry --disable-update-check \
         --disable-workspace-trust --user-data-dir {{state}}/code-server {{workspace}}"
    ))
}

/// Everything `wakeway serve` runs, built from config: the embedded store and the local or
/// kubernetes backend.
pub struct Built {
    pub wakeway: Wakeway,
    pub events: mpsc::UnboundedReceiver<backend::BackendEvent>,
    /// The API key, when it was generated just now (print it once).
    pub new_api_key: Option<String>,
    /// The secret that signs workspace cookies.
    pub cookie_secret: Vec<u8>,
    /// The session store (shared with certificates).
    pub store: Arc<dyn store::Store>,
}

/// Build the manager, store, backend and API for `config`. Run it on the lifecycle runtime `rt`:
/// the Kubernetes client and its pod watcher live there.
pub async fn build(
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    stats: Arc<ProxyStats>,
    rt: tokio::runtime::Handle,
) -> Result<Built, String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    let backups = config.backup_dir();
    if let Err(e) = std::fs::create_dir_all(&backups) {
        tracing::error!(dir = %backups.display(), error = %e, "the backup folder cannot be created: deletions will fail (and keep the data) until it can");
    }
    let store: Arc<dyn store::Store> = match config.store_kind() {
        wakeway_config::StoreKind::Redis => Arc::new(
            store::RedisStore::connect(&config.redis_url)
                .await
                .map_err(|e| format!("{e} (is Redis running at the redis_url?)"))?,
        ),
        wakeway_config::StoreKind::Embedded => {
            Arc::new(store::EmbeddedStore::open(&config.data_dir.join("wakeway.redb")).map_err(|e| e.to_string())?)
        }
    };
    let (tx, events) = mpsc::unbounded_channel();
    let backend: Arc<dyn backend::Backend> = match config.backend {
        BackendKind::Local => {
            let command = workspace_command(&config)?;
            let paths = backend::local::LocalPaths::new(&config.data_dir, backups);
            let ports = config.workspace_port_range().ok_or("workspace_ports is not a port range")?;
            backend::LocalBackend::new(command, paths, ports, config.stop_grace, tx)
        }
        BackendKind::Kubernetes => {
            backend::KubernetesBackend::connect(config.clone(), tx).await.map_err(|e| e.to_string())?
        }
    };
    let (keys, new_api_key) = if config.api_keys.is_empty() {
        let (key, created) = api::load_or_generate_secret(&config.data_dir.join("api-key"))
            .map_err(|e| format!("cannot keep the API key in data_dir: {e}"))?;
        (vec![key.clone()], created.then_some(key))
    } else {
        (config.api_keys.clone(), None)
    };
    let cookie_secret = if config.cookie_secret.is_empty() {
        let path = config.data_dir.join("cookie-secret");
        api::load_or_generate_secret(&path)
            .map_err(|e| format!("cannot keep the cookie secret in {}: {e}", path.display()))?
            .0
    } else {
        config.cookie_secret.clone()
    };
    let manager = Manager::new(config.clone(), store.clone(), backend, clock.clone(), stats, rt);
    let state = api::ApiState {
        manager: manager.clone(),
        keys: Arc::new(api::ApiKeys::new(&keys)),
        limiter: Arc::new(api::RateLimiter::new(config.rate_limit_per_minute, clock)),
    };
    let router = api::router(state);
    Ok(Built {
        wakeway: Wakeway::new(manager, router),
        events,
        new_api_key,
        cookie_secret: cookie_secret.into_bytes(),
        store,
    })
}

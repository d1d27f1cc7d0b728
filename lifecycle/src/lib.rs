//! wakeway's lifecycle: the session state machine and idle policy, the backends that run
//! workspaces, the stores that keep sessions, verified backups, and the management API.
#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod api;
pub mod backend;
pub mod backup;
pub mod catalog;
pub mod failpoint;
pub mod manager;
pub mod metrics;
mod names;
pub mod policy;
pub mod probe;
pub mod restore;
pub mod session;
pub mod store;
pub mod usage;
pub mod web;
pub mod webhook;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
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

    fn active_again(&self, handle: &Arc<SessionHandle>) {
        self.manager.note_active_again(&handle.id)
    }

    fn upstream_failed(&self, handle: &Arc<SessionHandle>, addr: &wakeway_proxy::Upstream) {
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
/// `scripts/install-code-server.sh` fills (`$WAKEWAY_TOOLS`; else `/opt/wakeway/tools`, where root
/// installs it so every workspace uid can run it, then `~/.local/share/wakeway/tools`).
pub fn find_code_server() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("code-server"));
    let tools = match std::env::var_os("WAKEWAY_TOOLS") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => std::iter::once(PathBuf::from("/opt/wakeway/tools"))
            .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/wakeway/tools")))
            .collect(),
    };
    on_path.chain(tools.into_iter().map(|t| t.join("bin/code-server"))).find(|p| p.is_file())
}

/// The workspace command template to run: the configured one, or code-server with the flags a
/// proxied, per-user workspace needs — serving on its Unix socket (always: even a workspace that
/// is not isolated then has no TCP port another local user could reach).
pub fn workspace_command(config: &Config) -> Result<String, String> {
    if let Some(command) = config.workspaces.command.as_ref().filter(|c| !c.trim().is_empty()) {
        return Ok(command.clone());
    }
    let Some(code_server) = find_code_server() else {
        return Err("code-server was not found on PATH, in /opt/wakeway/tools/bin or in \
            ~/.local/share/wakeway/tools/bin.\n  \
            Install it with:  scripts/install-code-server.sh\n  \
            or run another workspace server with WAKEWAY_WORKSPACE_COMMAND='your-server --socket {socket} {workspace}'"
            .into());
    };
    let quoted = format!("'{}'", code_server.to_string_lossy().replace('\'', r"'\''"));
    Ok(format!(
        "exec {quoted} --socket {{socket}} --socket-mode 600 --auth none --disable-telemetry --disable-update-check \
         --disable-workspace-trust --user-data-dir {{state}}/code-server {{workspace}}"
    ))
}

/// How local workspaces will run: the command, and whether each runs under a uid of its own.
#[derive(Debug, Clone)]
pub struct LocalPlan {
    pub command: String,
    pub isolated: bool,
    /// Why they are not isolated (for the start-up warning and `/health`), when they are not.
    pub not_isolated: Option<String>,
}

/// Decide [`LocalPlan`] from `[local] isolation`: isolation needs root (only root can give a
/// process another uid), a command that serves on `{socket}`, a `data_dir` other uids can pass
/// through, and a workspace program other uids can run. `on` refuses to start without all of
/// them; `auto` isolates when it can and says why when it cannot.
pub fn local_plan(config: &Config) -> Result<LocalPlan, String> {
    use wakeway_config::Isolation;
    let command = workspace_command(config)?;
    let not = |why: String| Ok(LocalPlan { command: command.clone(), isolated: false, not_isolated: Some(why) });
    if config.local.isolation == Isolation::Off {
        return not("local workspaces are not isolated ([local] isolation = \"off\"): every workspace runs as \
             wakeway's own user and can read the others' files and wakeway's (single-tenant use only)"
            .into());
    }
    let obstacle = if !nix::unistd::geteuid().is_root() {
        Some("wakeway does not run as root".to_string())
    } else if command.contains("{port}") {
        Some(wakeway_config::ISOLATED_PORT_COMMAND.to_string())
    } else if let Some(blocked) = backend::local::isolation::blocked_ancestor(&config.server.data_dir) {
        // Above data_dir only: data_dir and its folders are wakeway's, opened to 0711 as it lays them out.
        Some(format!(
            "other users cannot pass through {} to reach data_dir (chmod o+x it, or choose another data_dir)",
            blocked.display()
        ))
    } else if let Some(program) = backend::local::isolation::command_program(&command)
        && !backend::local::isolation::runnable_by_others(&program)
    {
        Some(format!(
            "other users cannot run {} (a folder above it, such as /root, is private; as root, \
             scripts/install-code-server.sh installs into /opt/wakeway/tools)",
            program.display()
        ))
    } else {
        None
    };
    match (obstacle, config.local.isolation) {
        (None, _) => Ok(LocalPlan { command, isolated: true, not_isolated: None }),
        (Some(why), Isolation::On) => Err(format!("[local] isolation = \"on\", but {why}")),
        (Some(why), _) => not(format!(
            "local workspaces are not isolated: {why}. Every workspace runs as wakeway's own user and can read the \
             others' files and wakeway's (single-tenant use only; see the README's Isolation section)"
        )),
    }
}

/// Create `data_dir` if missing and make it and the files directly in it (the store, the API key,
/// the cookie secret) wakeway's alone: 0700 and 0600. The local backend opens the folder up to
/// 0711 when workspaces run under their own uids (they pass through to their own folders).
fn secure_data_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    backend::local::isolation::ensure_dir(dir, 0o700)
        .map_err(|e| format!("cannot prepare data_dir {}: {e}", dir.display()))?;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
        }
    }
    Ok(())
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
    secure_data_dir(&config.server.data_dir)?;
    // The local backend prepares backup_dir as it lays out its folders (`lay_out`). On Kubernetes
    // it is the shared backup volume, which backup Jobs (another uid) write to: the backend checks
    // it (mounted, readable, writable), never creates or chmods it.
    let backups = config.backup_dir();
    let store: Arc<dyn store::Store> = match config.store_kind() {
        wakeway_config::StoreKind::Redis => Arc::new(
            store::RedisStore::connect(config.store.redis_url.as_deref().unwrap_or_default())
                .await
                .map_err(|e| format!("{e} (is Redis running at the redis_url?)"))?,
        ),
        wakeway_config::StoreKind::Embedded => Arc::new(
            store::EmbeddedStore::open(&config.server.data_dir.join("wakeway.redb")).map_err(|e| e.to_string())?,
        ),
    };
    let (tx, events) = mpsc::unbounded_channel();
    let mut problems = Vec::new();
    let backend: Arc<dyn backend::Backend> = match config.workspaces.backend {
        BackendKind::Local => {
            let plan = local_plan(&config)?;
            if let Some(why) = plan.not_isolated {
                tracing::warn!("{why}");
                problems.push((manager::Component::Isolation, why));
            }
            let settings = backend::local::LocalSettings {
                command: plan.command,
                port_range: config.workspaces.ports.range(),
                stop_grace: config.lifecycle.stop_grace,
                uids: plan.isolated.then(|| config.local.uid_range()),
                env: config.local.env.clone(),
                writer: manager::replica_name(config.store.replica_id.as_deref()),
            };
            let paths = backend::local::LocalPaths::new(&config.server.data_dir, backups);
            backend::LocalBackend::new(settings, paths, tx)?
        }
        BackendKind::Kubernetes => {
            backend::KubernetesBackend::connect(config.clone(), tx).await.map_err(|e| e.to_string())?
        }
    };
    let (keys, new_api_key) = if config.access.api_keys.is_empty() {
        let (key, created) = api::load_or_generate_secret(&config.server.data_dir.join("api-key"))
            .map_err(|e| format!("cannot keep the API key in data_dir: {e}"))?;
        (vec![key.clone()], created.then_some(key))
    } else {
        (config.access.api_keys.clone(), None)
    };
    let cookie_secret = match &config.access.cookie_secret {
        Some(secret) => secret.clone(),
        None => {
            let path = config.server.data_dir.join("cookie-secret");
            api::load_or_generate_secret(&path)
                .map_err(|e| format!("cannot keep the cookie secret in {}: {e}", path.display()))?
                .0
        }
    };
    let manager = Manager::new(config.clone(), store.clone(), backend, clock.clone(), stats, rt);
    for (component, problem) in problems {
        manager.set_problem(component, Some(problem));
    }
    let state = api::ApiState {
        manager: manager.clone(),
        keys: Arc::new(api::ApiKeys::new(&keys)),
        limiter: Arc::new(api::RateLimiter::new(config.limits.rate_limit_per_minute, clock)),
    };
    let admin = admin::router(manager.clone(), state.keys.clone(), store.clone(), cookie_secret.as_bytes());
    let mut router = api::router(state).merge(admin);
    if config.access.workspace_auth == wakeway_config::WorkspaceAuth::Oidc {
        router = router.merge(web::router(manager.clone(), store.clone(), cookie_secret.as_bytes()));
    }
    Ok(Built {
        wakeway: Wakeway::new(manager, router),
        events,
        new_api_key,
        cookie_secret: cookie_secret.into_bytes(),
        store,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use wakeway_config::Isolation;

    use super::*;

    fn config(dir: &Path, isolation: Isolation, command: &str) -> Config {
        let mut c = Config::default();
        c.server.data_dir = dir.join("data");
        c.local.isolation = isolation;
        c.workspaces.command = Some(command.into()).filter(|c: &String| !c.is_empty());
        c
    }

    #[test]
    fn isolation_is_decided_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let socket = "exec python3 -m x {socket}";
        let off = local_plan(&config(dir.path(), Isolation::Off, socket)).unwrap();
        assert!(!off.isolated && off.not_isolated.unwrap().contains("\"off\""));
        let auto = local_plan(&config(dir.path(), Isolation::Auto, socket)).unwrap();
        if nix::unistd::geteuid().is_root() {
            assert!(auto.isolated && auto.not_isolated.is_none());
            // A command built around a port cannot be isolated: `auto` says why, `on` refuses.
            let port = local_plan(&config(dir.path(), Isolation::Auto, "srv --port {port}")).unwrap();
            assert!(!port.isolated && port.not_isolated.unwrap().contains("{socket}"));
            let err = local_plan(&config(dir.path(), Isolation::On, "srv --port {port}")).unwrap_err();
            assert!(err.contains("isolation = \"on\""), "{err}");
            // data_dir itself may be private yet (wakeway opens it as it lays it out) ...
            std::fs::create_dir(dir.path().join("data")).unwrap();
            std::fs::set_permissions(dir.path().join("data"), std::fs::Permissions::from_mode(0o700)).unwrap();
            assert!(local_plan(&config(dir.path(), Isolation::Auto, socket)).unwrap().isolated);
            // ... but a data_dir below a private folder is out of the workspaces' reach.
            let private = dir.path().join("private");
            std::fs::create_dir(&private).unwrap();
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
            let blocked = local_plan(&config(&private, Isolation::Auto, socket)).unwrap();
            assert!(blocked.not_isolated.unwrap().contains("chmod o+x"));
        } else {
            assert!(!auto.isolated && auto.not_isolated.unwrap().contains("not run as root"));
            assert!(local_plan(&config(dir.path(), Isolation::On, socket)).is_err());
        }
    }
}

//! The `wakeway` binary: parse the command line and config, then compose the pingora server
//! (proxy + API on one listener) with the lifecycle (its own runtime: sweep, checkpoints,
//! workspace processes). All logic lives in the `config`, `proxy` and `lifecycle` crates.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TlsAccept};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use wakeway_config::{Config, LogFormat, ProcessEnv};
use wakeway_lifecycle::acme::Certificates;
use wakeway_proxy::front::{Front, FrontSettings};
use wakeway_proxy::service::ProxySettings;
use wakeway_proxy::tls::{CertStore, Resolver};
use wakeway_proxy::{Clock, ProxyStats, SystemClock, WakewayProxy};

/// pingora's rustls listener takes its settings through a callbacks constructor; certificates come
/// from the resolver, so there is nothing to do in the callbacks.
struct NoHandshakeCallbacks;

#[async_trait::async_trait]
impl TlsAccept for NoHandshakeCallbacks {}

/// wakeway: browser VS Code workspaces that sleep when nobody uses them and wake the moment
/// their user comes back.
///
/// One listener serves the management API and every `vs-code-<id>.<domain>` workspace host.
/// Every setting can come from a TOML file (--config) and be overridden by WAKEWAY_<KEY>
/// environment variables (see `wakeway check-config` and config/wakeway.example.toml).
#[derive(Parser)]
#[command(version, about, long_about, after_help = EXAMPLES)]
struct Cli {
    /// TOML config file (see config/wakeway.example.toml).
    #[arg(short, long, global = true, env = "WAKEWAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    command: Option<Command>,
}

const EXAMPLES: &str = "Examples:
  wakeway                                   serve on 127.0.0.1:8080 with data in ./wakeway-data
  WAKEWAY_IDLE_TIMEOUT=5m wakeway serve     sleep workspaces after 5 idle minutes
  wakeway check-config -c /etc/wakeway.toml validate a config file and print the result
  wakeway backup --src /workspace --home /home/coder --dest /backups/workspace-abc12345-20250101-120000.zip
  wakeway render --session abc12345 | kubectl apply --dry-run=server -f -
  wakeway restore --src /backups/workspace-abc12345-20250101-120000.zip --dest /workspace --home-dest /home/coder";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy, the management API and the lifecycle (the default).
    Serve,
    /// Validate the configuration and print the effective values (API keys masked).
    CheckConfig,
    /// Zip a workspace folder (and its HOME) into a verified backup: written as .partial, fsynced,
    /// verified, renamed. The zip holds `workspace/…` and, with --home, `home/…` (layout 2).
    /// Sockets, FIFOs, devices and files of other users that may not be read are skipped and
    /// listed. Prints the result as JSON. Used by the Kubernetes backup Job; handy by hand too.
    Backup {
        /// Folder to back up (the zip's `workspace` root).
        #[arg(long)]
        src: PathBuf,
        /// HOME to back up with it (the zip's `home` root). Without it the zip holds no `home`
        /// root, and restoring it leaves HOME as it is.
        #[arg(long)]
        home: Option<PathBuf>,
        /// Zip file to create (must not exist). Its catalog record is written next to it
        /// (`<name>.json`).
        #[arg(long)]
        dest: PathBuf,
        /// The user the backup belongs to, for the catalog.
        #[arg(long)]
        user_id: Option<String>,
        /// Why it was taken, for the catalog (the lifecycle passes policy, api, pre_restore, …).
        #[arg(long, default_value = "command")]
        reason: String,
    },
    /// Restore a backup zip into a folder: every entry is checked first (no absolute paths, no
    /// `..`, no symlink escapes, size and zip-bomb limits), the zip is extracted next to DEST,
    /// flushed to disk, then swapped in. Prints the result as JSON. Used by the Kubernetes
    /// restore Job; handy by hand too.
    Restore {
        /// The backup zip. When its catalog record (`<name>.json`) is next to it, the zip must
        /// still have the SHA-256 it was verified with.
        #[arg(long)]
        src: PathBuf,
        /// Folder to restore the workspace into (created if missing; its parent must be on the
        /// same filesystem).
        #[arg(long)]
        dest: PathBuf,
        /// Folder to restore the zip's `home` root into (HOME). Without it that root is not
        /// restored (the result says so); a zip without one leaves this folder as it is.
        #[arg(long)]
        home_dest: Option<PathBuf>,
        /// Replace DEST (and HOME_DEST) even when it holds files (they are discarded: back them up
        /// first).
        #[arg(long)]
        replace: bool,
        /// Skip symlinks pointing outside DEST (reported) instead of refusing the zip.
        #[arg(long)]
        skip_escaping_symlinks: bool,
        /// Restore inside DEST (and HOME_DEST) instead of swapping the folder itself: the new tree is
        /// extracted into a hidden folder in it, then the entries are moved with renames
        /// (resumable). Chosen automatically for a mount point (a volume mounted at /workspace).
        #[arg(long)]
        in_place: bool,
    },
    /// Bring a session's volume (the whole PVC, mounted at VOLUME) to layout 2: a volume written
    /// before it (the workspace at its root) is moved into VOLUME/workspace/ and gets
    /// VOLUME/home/; crash-safe and resumable, a no-op on a migrated volume. Prints the result as
    /// JSON. Run by the Kubernetes backend as the init container of every pod mounting a PVC.
    MigrateVolume {
        /// Where the whole volume is mounted (the init container uses /data).
        volume: PathBuf,
    },
    /// Print the Kubernetes objects of a session (PVC, Deployment, Service; with --jobs also a
    /// backup and a restore Job) as the kubernetes backend would apply them, for review or
    /// `kubectl apply --dry-run=server -f -`. Reads the config (the [kubernetes] table); needs no cluster.
    Render {
        /// Session id (8 to 32 hex digits, e.g. abc12345).
        #[arg(long)]
        session: String,
        /// The user id recorded in the objects' annotation.
        #[arg(long, default_value = "user@example.com")]
        user: String,
        /// Tier (default: the configured default tier).
        #[arg(long)]
        tier: Option<String>,
        /// Also print the backup and restore Jobs (for a backup taken now).
        #[arg(long)]
        jobs: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "yaml")]
        output: RenderFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RenderFormat {
    /// Multi-document YAML.
    Yaml,
    /// A `v1 List` in JSON.
    Json,
}

fn main() -> ExitCode {
    // One crypto provider for everything TLS (pingora, ACME client): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wakeway: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Render { session, user, tier, jobs, output } => {
            let config = Config::load(cli.config.as_deref(), &ProcessEnv)?;
            print!("{}", render(&config, &session, &user, tier, jobs, output)?);
            Ok(())
        }
        Command::Backup { src, home, dest, user_id, reason } => backup(&src, home.as_deref(), &dest, user_id, reason),
        Command::MigrateVolume { volume } => migrate_volume(&volume),
        Command::Restore { src, dest, home_dest, replace, skip_escaping_symlinks, in_place } => {
            let config = Config::load(cli.config.as_deref(), &ProcessEnv)?;
            let command = wakeway_lifecycle::restore::Command { replace, skip_escaping_symlinks, in_place };
            restore(&config, command, &src, &dest, home_dest.as_deref())
        }
        Command::CheckConfig => {
            let config = Config::load(cli.config.as_deref(), &ProcessEnv)?;
            print!("{}", config.to_masked_toml());
            if config.workspaces.backend == wakeway_config::BackendKind::Local {
                match wakeway_lifecycle::local_plan(&config) {
                    Ok(plan) => {
                        eprintln!("# workspace command: {}", plan.command);
                        match plan.not_isolated {
                            None => eprintln!(
                                "# local workspaces run isolated, each under a uid from {}",
                                config.local.uids
                            ),
                            Some(why) => eprintln!("# warning: {why}"),
                        }
                    }
                    Err(e) => eprintln!("# warning: {e}"),
                }
            }
            eprintln!("# configuration is valid");
            Ok(())
        }
        Command::Serve => {
            let mut config = Config::load(cli.config.as_deref(), &ProcessEnv)?;
            if let Some(format) = cli.log_format {
                config.server.log_format = match format {
                    LogFormatArg::Text => LogFormat::Text,
                    LogFormatArg::Json => LogFormat::Json,
                };
            }
            init_logging(config.server.log_format);
            // Everything wakeway writes (store, keys, backups, logs, records) is its own alone;
            // workspaces get the usual 022 back in their own shell.
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            serve(config)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WAKEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

fn backup(
    src: &std::path::Path,
    home: Option<&std::path::Path>,
    dest: &std::path::Path,
    user_id: Option<String>,
    reason: String,
) -> anyhow::Result<()> {
    let now = chrono_now();
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let origin = wakeway_lifecycle::catalog::Origin {
        session: wakeway_lifecycle::catalog::session_of(name.trim_end_matches(".zip")).map(String::from),
        user_id,
        reason: reason.into(),
        writer: None,
    };
    let sources = wakeway_lifecycle::backup::Sources { workspace: src, home };
    match wakeway_lifecycle::backup::write_verified_backup(&sources, dest, now, &origin) {
        Ok(info) => {
            let roots: Vec<&str> = sources.roots().iter().map(|(root, _)| root.name()).collect();
            let layout = wakeway_lifecycle::backup::Layout::V2.version();
            let line = serde_json::json!({
                "ok": true, "path": dest, "layout": layout, "roots": roots, "skipped": info.skipped, "backup": info,
            });
            println!("{line}");
            Ok(())
        }
        Err(e) => {
            println!("{}", serde_json::json!({ "ok": false, "error": e.to_string() }));
            bail!("backup failed: {e}")
        }
    }
}

fn migrate_volume(volume: &std::path::Path) -> anyhow::Result<()> {
    match wakeway_lifecycle::backend::kubernetes::volume::migrate(volume) {
        Ok(done) => {
            println!("{}", serde_json::json!({ "ok": true, "volume": volume, "migrated": done }));
            Ok(())
        }
        Err(e) => {
            println!("{}", serde_json::json!({ "ok": false, "volume": volume, "error": e.to_string() }));
            bail!("volume migration failed: {e}")
        }
    }
}

fn render(
    config: &Config,
    id: &str,
    user: &str,
    tier: Option<String>,
    jobs: bool,
    output: RenderFormat,
) -> anyhow::Result<String> {
    use wakeway_lifecycle::backend::kubernetes::objects;
    let Some(id) = wakeway_proxy::SessionId::parse(id) else {
        bail!("{id:?} is not a session id (8 to 32 hex digits, e.g. abc12345)")
    };
    let tier = tier.unwrap_or_else(|| config.workspaces.default_tier.clone());
    if !config.workspaces.tiers.contains_key(&tier) {
        bail!("no tier {tier:?} (the tiers are {:?})", config.workspaces.tiers.keys().collect::<Vec<_>>());
    }
    let now = chrono_now();
    let session = wakeway_lifecycle::session::Session::new(&id, user, &tier, now);
    let mut values = objects::workspace_objects(config, &session);
    if jobs {
        let file = wakeway_lifecycle::backup::backup_file_name(id.as_str(), now);
        values.push(serde_json::to_value(objects::backup_job(config, &session, &file, now, "command"))?);
        values.push(serde_json::to_value(objects::restore_job(
            config,
            &session,
            &file,
            now,
            &wakeway_lifecycle::restore::Limits::from_config(config),
            false,
        ))?);
    }
    Ok(match output {
        RenderFormat::Yaml => objects::to_yaml(&values),
        RenderFormat::Json => objects::to_json_list(&values) + "\n",
    })
}

fn restore(
    config: &Config,
    command: wakeway_lifecycle::restore::Command,
    src: &std::path::Path,
    dest: &std::path::Path,
    home_dest: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let limits = wakeway_lifecycle::restore::Limits::from_config(config);
    let line = command.run_roots(src, dest, home_dest, &limits);
    println!("{line}");
    match line["error"].as_str() {
        Some(error) => bail!("restore failed: {error}"),
        None => Ok(()),
    }
}

/// Client connections read straight into pingora's own header and body buffers, without the 64 KiB
/// read-ahead buffer pingora puts in front of every socket by default: that buffer is allocated
/// zeroed and held for the connection's whole life, which for an idle WebSocket (a tab left open)
/// is most of what the connection costs. Writes keep pingora's small coalescing buffer.
fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(SystemClock.now_ms()).unwrap_or_default()
}

fn serve(mut config: Config) -> anyhow::Result<()> {
    make_paths_absolute(&mut config)?;
    // Fail with a clear message instead of a panic deep in the listener.
    drop(std::net::TcpListener::bind(config.server.listen).with_context(|| {
        format!("cannot listen on {} (in use? set WAKEWAY_LISTEN or `listen` in the config)", config.server.listen)
    })?);
    let config = Arc::new(config);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stats = Arc::new(ProxyStats::default());
    let lifecycle_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wakeway-lifecycle")
        .enable_all()
        .build()
        .context("cannot start the lifecycle runtime")?;

    let built = lifecycle_rt
        .block_on(wakeway_lifecycle::build(config.clone(), clock.clone(), stats.clone(), lifecycle_rt.handle().clone()))
        .map_err(anyhow::Error::msg)?;
    let manager = built.wakeway.manager.clone();
    lifecycle_rt.block_on(manager.recover()).context("cannot load sessions from the store")?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let background = {
        let (manager, shutdown_rx) = (manager.clone(), shutdown_rx.clone());
        lifecycle_rt.spawn(async move { manager.run_background(built.events, shutdown_rx).await })
    };

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();
    let settings = ProxySettings::from(config.as_ref());
    let mut proxy = WakewayProxy::new(settings, &built.cookie_secret, Arc::new(built.wakeway), clock, stats.clone());
    let certs = CertStore::new();
    if config.tls.listen.is_some() {
        let certificates = Certificates::new(config.clone(), built.store.clone(), certs.clone(), manager.clone());
        lifecycle_rt.block_on(certificates.load()).map_err(anyhow::Error::msg)?;
        lifecycle_rt.spawn(certificates.run(shutdown_rx));
        proxy = proxy.with_certs(certs.clone());
    }
    let mut app = pingora::proxy::http_proxy(&server.configuration, proxy);
    // HTTP/2 without TLS (prior knowledge) too: clients in a cluster often speak it.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    app.server_options = Some(options);
    // Connection cap, request-head deadline and framing checks before pingora parses a request.
    let front = Front::new(app, FrontSettings::from(config.as_ref()), stats.clone());
    server.add_service(listening_service(&config, front, certs)?);

    print_banner(&config, built.new_api_key.as_deref());
    server.run(RunArgs::default());

    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    lifecycle_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), background).await;
        if config.workspaces.stop_workspaces_on_exit {
            let stop = tokio::time::timeout(config.lifecycle.stop_grace + Duration::from_secs(10), manager.stop_all());
            if stop.await.is_err() {
                tracing::warn!("some workspaces did not stop in time; they are adopted or stopped on the next start");
            }
        }
    });
    lifecycle_rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Workspace processes run in their own folders: every path we hand them must be absolute.
fn make_paths_absolute(config: &mut Config) -> anyhow::Result<()> {
    config.server.data_dir = std::path::absolute(&config.server.data_dir).context("data_dir")?;
    if let Some(dir) = &config.server.backup_dir {
        config.server.backup_dir = Some(std::path::absolute(dir).context("backup_dir")?);
    }
    Ok(())
}

/// Idle upstream connections pingora keeps for reuse, across every workspace.
const UPSTREAM_POOL: usize = 1024;

/// pingora's server settings: threads, one runtime per thread, shutdown grace, its files.
fn server_conf(config: &Config) -> ServerConf {
    let mut conf = ServerConf::default();
    conf.threads = if config.server.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        config.server.threads
    };
    // One single-threaded runtime per proxy thread (a connection stays on the thread that accepted
    // it) instead of one work-stealing pool: +10% requests/s through one thread in benches/ab.py,
    // lower p99. Nothing on the proxy path blocks; lifecycle work runs on its own runtime.
    conf.work_stealing = false;
    // Idle upstream connections kept for reuse (pingora's default: 128). An HTTP/2 client multiplexes
    // many requests, each proxied on its own upstream HTTP/1 connection: with more in flight than the
    // pool keeps, every burst ends in closed connections and the next one in new connects (h2c, 8
    // clients × 32 streams: 13,490 → 21,316 req/s, medians of 5 rounds in one A/B; nothing else moved).
    conf.upstream_keepalive_pool_size = UPSTREAM_POOL;
    conf.grace_period_seconds = Some(config.server.shutdown_grace.as_secs());
    conf.graceful_shutdown_timeout_seconds = Some(5);
    conf.pid_file = config.server.data_dir.join("wakeway.pid").to_string_lossy().into_owned();
    conf.upgrade_sock = config.server.data_dir.join("wakeway-upgrade.sock").to_string_lossy().into_owned();
    conf
}

/// The listening service: `listen` in plain HTTP, and `tls_listen` with certificates from
/// `certs` (chosen per SNI) when TLS is on.
fn listening_service<A>(
    config: &Config,
    front: A,
    certs: Arc<CertStore>,
) -> anyhow::Result<pingora::services::listening::Service<A>>
where
    A: pingora::apps::ServerApp + Send + Sync + 'static,
{
    let mut service = pingora::services::listening::Service::new("wakeway".to_string(), front);
    service.add_listener(ListenerConfig::tcp(config.server.listen.to_string()).l4_buffer(client_buffers()));
    if let Some(addr) = config.tls.listen {
        let mut tls = TlsSettings::with_callbacks(Box::new(NoHandshakeCallbacks)).context("TLS settings")?;
        tls.set_cert_resolver(Arc::new(Resolver(certs)));
        tls.enable_h2();
        service.add_listener(ListenerConfig::tcp(addr.to_string()).tls(tls).l4_buffer(client_buffers()));
        tracing::info!(%addr, acme = ?config.tls.acme, "TLS listener");
    }
    Ok(service)
}

/// Where wakeway serves, and the API key to use (shown once, when it was just generated).
fn print_banner(config: &Config, new_api_key: Option<&str>) {
    let base = format!("http://{}", config.server.listen);
    tracing::info!(listen = %config.server.listen, domain = %config.server.domain, data_dir = %config.server.data_dir.display(), "wakeway serving");
    eprintln!(
        "wakeway {} is serving the API at {base} and workspaces at {}",
        env!("CARGO_PKG_VERSION"),
        config.workspace_url("<id>")
    );
    if let Some(key) = new_api_key {
        eprintln!(
            "A new API key was generated (shown once; kept in {}):\n\n    {key}\n",
            config.server.data_dir.join("api-key").display()
        );
        eprintln!(
            "Create a session:  curl -X POST {base}/session/create -H 'X-API-Key: {key}' -d '{{\"user_id\":\"me@example.com\"}}'"
        );
    } else if config.access.api_keys.is_empty() {
        eprintln!("API key: see {}", config.server.data_dir.join("api-key").display());
    }
}

//! The configuration's parts, one concern each. In TOML their keys stay flat (each part is
//! flattened into the top level, under the key names it always had); in code a key is reached
//! through its part: `config.lifecycle.idle_timeout`, `config.tls.listen`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::typed::{self, PortRange, PublicUrl, WebhookUrl};
use crate::{AcmeMode, BackendKind, LogFormat, StoreKind, Tier, WorkspaceAuth};

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;

/// Where wakeway listens, what it is called, and where it keeps its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address of the one listener serving the management API and every workspace host.
    pub listen: SocketAddr,
    /// Workspaces are reached at `vs-code-<id>.<domain>`.
    pub domain: String,
    /// Base URL users reach wakeway at; workspace URLs are built from its scheme, host and port
    /// (`<scheme>://vs-code-<id>.<host>[:port]`). Unset: `http://<domain>:<listen port>`.
    #[serde(with = "typed::opt_public_url")]
    pub public_url: Option<PublicUrl>,
    /// Folder for the embedded store, workspace folders, backups and logs.
    pub data_dir: PathBuf,
    /// Folder for backup zips. Unset: `<data_dir>/backups`.
    #[serde(with = "typed::opt_path")]
    pub backup_dir: Option<PathBuf>,
    /// Proxy worker threads (0: one per core).
    pub threads: usize,
    /// On SIGTERM, how long in-flight requests get before the listener closes.
    #[serde(with = "duration::serde_fmt")]
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            domain: "localhost".into(),
            public_url: None,
            data_dir: PathBuf::from("wakeway-data"),
            backup_dir: None,
            threads: 0,
            shutdown_grace: Duration::from_secs(5),
            log_format: LogFormat::Text,
        }
    }
}

/// The TLS listener and where its certificates come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Address of the TLS listener (HTTPS, HTTP/2 and HTTP/1.1 by ALPN). Unset: no TLS.
    #[serde(rename = "tls_listen", with = "typed::opt_addr")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain served when no better certificate matches (e.g. a `*.<domain>`
    /// wildcard from cert-manager). Re-read when the file changes.
    #[serde(rename = "tls_cert_file", with = "typed::opt_path")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `tls_cert_file`.
    #[serde(rename = "tls_key_file", with = "typed::opt_path")]
    pub key_file: Option<PathBuf>,
    /// With TLS on, answer plain-HTTP requests with a redirect to HTTPS (except ACME challenges).
    pub redirect_http_to_https: bool,
    /// Certificates from an ACME CA: `none`, `http01` (per workspace host) or `dns01` (wildcard).
    pub acme: AcmeMode,
    /// The ACME directory URL (Let's Encrypt by default).
    pub acme_directory: String,
    /// Contact e-mail for the ACME account (optional).
    #[serde(with = "typed::opt_string")]
    pub acme_email: Option<String>,
    /// Extra PEM root to trust for the ACME directory's own HTTPS (test CAs such as Pebble).
    #[serde(with = "typed::opt_path")]
    pub acme_ca_file: Option<PathBuf>,
    /// For `dns01`: an executable called as `<hook> set|clear <record name> <value>` that sets or
    /// removes the TXT record with your DNS provider.
    #[serde(with = "typed::opt_path")]
    pub acme_dns_hook: Option<PathBuf>,
    /// Renew a certificate this long before it expires.
    #[serde(with = "duration::serde_fmt")]
    pub acme_renew_before: Duration,
    /// How often certificates are checked (new sessions also trigger a check at once).
    #[serde(with = "duration::serde_fmt")]
    pub acme_check_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: None,
            cert_file: None,
            key_file: None,
            redirect_http_to_https: false,
            acme: AcmeMode::None,
            acme_directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            acme_email: None,
            acme_ca_file: None,
            acme_dns_hook: None,
            acme_renew_before: Duration::from_secs(30 * 24 * HOUR),
            acme_check_interval: Duration::from_secs(10 * MINUTE),
        }
    }
}

/// Who may use the API and open workspaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessConfig {
    /// API keys accepted in `X-API-Key`. Empty: a key is generated once and kept in `data_dir`.
    pub api_keys: Vec<String>,
    /// Who may open a workspace: `none` (anyone with the URL), `token` (sign-in link → cookie) or
    /// `oidc` (the `oidc_*` provider, then a sign-in link → cookie).
    pub workspace_auth: WorkspaceAuth,
    /// How long a sign-in token (in `access_url`) can be used, once.
    #[serde(with = "duration::serde_fmt")]
    pub access_token_ttl: Duration,
    /// How long the workspace cookie a sign-in token is exchanged for stays valid.
    #[serde(with = "duration::serde_fmt")]
    pub cookie_ttl: Duration,
    /// Secret that signs workspace cookies (same on every replica). Unset: generated once and
    /// kept in `data_dir/cookie-secret`.
    #[serde(with = "typed::opt_string")]
    pub cookie_secret: Option<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            api_keys: Vec::new(),
            workspace_auth: WorkspaceAuth::None,
            access_token_ttl: Duration::from_secs(5 * MINUTE),
            cookie_ttl: Duration::from_secs(12 * HOUR),
            cookie_secret: None,
        }
    }
}

/// What one client, one session or the whole proxy may ask for at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Failures per minute per client address: failed workspace sign-ins, requests for
    /// workspace hosts with no session, missing or wrong API keys (then 429).
    pub unauthenticated_per_minute: u32,
    /// Time a client has to send a whole request head (HTTP/1; then 408 and the connection closes).
    #[serde(with = "duration::serde_fmt")]
    pub header_timeout: Duration,
    /// Connections open at once per client address (more are answered 429 and closed).
    pub max_connections_per_address: usize,
    /// Wakes a session may be asked for per minute (each may start a workspace).
    pub wake_attempts_per_minute: u32,
    /// WebSockets open at once per session.
    pub max_websockets_per_session: usize,
    /// Largest request header block, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Requests held at once for one session; more get 503.
    pub max_held_per_session: usize,
    /// Requests held at once in total; more get 503.
    pub max_held_total: usize,
    /// Management API requests per minute per API key and endpoint.
    pub rate_limit_per_minute: u32,
    /// Largest management API request body, in bytes.
    pub max_api_body_bytes: usize,
    /// User-Agent substrings (case-insensitive) of bots and probes that never wake a session.
    pub bot_user_agents: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            unauthenticated_per_minute: 120,
            header_timeout: Duration::from_secs(10),
            max_connections_per_address: 256,
            wake_attempts_per_minute: 30,
            max_websockets_per_session: 64,
            max_header_bytes: 32 * 1024,
            max_held_per_session: 2_000,
            max_held_total: 10_000,
            rate_limit_per_minute: 100,
            max_api_body_bytes: 64 * 1024,
            bot_user_agents: [
                "bot",
                "crawler",
                "spider",
                "slurp",
                "kube-probe",
                "ELB-HealthChecker",
                "GoogleHC",
                "facebookexternalhit",
                "WhatsApp",
                "Slack",
                "Discord",
                "preview",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Where session state lives and how replicas share it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Where session state lives (`store`).
    #[serde(rename = "store")]
    pub kind: StoreKind,
    /// Redis URL (`redis://host:6379/0`). Set: sessions, activity, certificates and the sweep
    /// lease live in Redis, so several replicas can serve together (`store` is then `redis`).
    #[serde(with = "typed::opt_string")]
    pub redis_url: Option<String>,
    /// This replica's name in leases and activity (unset: hostname and process id).
    #[serde(with = "typed::opt_string")]
    pub replica_id: Option<String>,
    /// How long the sweep lease and each session's operation lease last without renewal (another
    /// replica takes over, or resumes the step, after that).
    #[serde(with = "duration::serde_fmt")]
    pub lease_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { kind: StoreKind::Embedded, redis_url: None, replica_id: None, lease_ttl: Duration::from_secs(10) }
    }
}

/// When sessions sleep, are deleted and are warned, and how long each step may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LifecycleConfig {
    /// Sleep a session after this long without user activity.
    #[serde(with = "duration::serde_fmt")]
    pub idle_timeout: Duration,
    /// Back up and delete a session after it has been asleep this long.
    #[serde(with = "duration::serde_fmt")]
    pub sleep_to_delete: Duration,
    /// Delete backups older than this (unless a backup is marked `keep`). At least one day and at
    /// least `sleep_to_delete`.
    #[serde(with = "duration::serde_fmt")]
    pub backup_retention: Duration,
    /// The longest `idle_timeout` a session may be given through `PATCH /session/{uuid}/policy`.
    #[serde(with = "duration::serde_fmt")]
    pub max_idle_timeout: Duration,
    /// The longest `sleep_to_delete` a session may be given through `PATCH /session/{uuid}/policy`.
    #[serde(with = "duration::serde_fmt")]
    pub max_sleep_to_delete: Duration,
    /// Send a `sleep_warning` event this long before an idle session is put to sleep (at most half
    /// its idle timeout; 0s: never).
    #[serde(with = "duration::serde_fmt")]
    pub warn_before_sleep: Duration,
    /// Send a `delete_warning` event this long before a sleeping session is backed up and deleted
    /// (0s: never).
    #[serde(with = "duration::serde_fmt")]
    pub warn_before_delete: Duration,
    /// How often the lifecycle sweep looks at every session.
    #[serde(with = "duration::serde_fmt")]
    pub sweep_interval: Duration,
    /// How often in-memory activity is written to the store.
    #[serde(with = "duration::serde_fmt")]
    pub checkpoint_interval: Duration,
    /// A session with an open but idle tab is put to sleep after at most this long awake.
    #[serde(with = "duration::serde_fmt")]
    pub max_awake_with_open_tab: Duration,
    /// How long a non-navigation request is held while its workspace wakes, before 503.
    #[serde(with = "duration::serde_fmt")]
    pub hold_timeout: Duration,
    /// How long a workspace may take to answer HTTP after it was started.
    #[serde(with = "duration::serde_fmt")]
    pub start_timeout: Duration,
    /// After SIGTERM, how long a workspace gets before SIGKILL.
    #[serde(with = "duration::serde_fmt")]
    pub stop_grace: Duration,
    /// First retry delay after a failed backup (doubles each time, up to 1 h).
    #[serde(with = "duration::serde_fmt")]
    pub backup_retry: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            idle_timeout: Duration::from_secs(15 * MINUTE),
            sleep_to_delete: Duration::from_secs(24 * HOUR),
            backup_retention: Duration::from_secs(30 * 24 * HOUR),
            max_idle_timeout: Duration::from_secs(8 * HOUR),
            max_sleep_to_delete: Duration::from_secs(30 * 24 * HOUR),
            warn_before_sleep: Duration::from_secs(2 * MINUTE),
            warn_before_delete: Duration::from_secs(HOUR),
            sweep_interval: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(30),
            max_awake_with_open_tab: Duration::from_secs(8 * HOUR),
            hold_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
            backup_retry: Duration::from_secs(5 * MINUTE),
        }
    }
}

/// Where workspaces run, how they start, and their sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkspacesConfig {
    /// Where workspaces run.
    pub backend: BackendKind,
    /// Command that starts one workspace (run by `sh -c`). Placeholders: `{socket}` (the Unix
    /// socket path to serve on; the only choice for isolated workspaces), `{port}` (a loopback port
    /// to serve on instead, for workspaces that are not isolated), `{workspace}`, `{state}` (HOME),
    /// `{cpu}`, `{memory_mib}`, `{id}`. Unset: code-server, found on PATH or in the tools folder
    /// that `scripts/install-code-server.sh` fills.
    #[serde(rename = "workspace_command", with = "typed::opt_string")]
    pub command: Option<String>,
    /// Loopback ports local workspaces listen on, `first-last`. Outside the kernel's ephemeral
    /// range (32768–60999 on Linux) so outgoing connections never take a workspace's port.
    #[serde(rename = "workspace_ports", with = "typed::port_range")]
    pub ports: PortRange,
    /// Resource tiers by name.
    pub tiers: BTreeMap<String, Tier>,
    /// Tier of a new session.
    pub default_tier: String,
    /// Tier after `{"scale": "up"}`.
    pub scale_up_tier: String,
    /// Tier after `{"scale": "down"}`.
    pub scale_down_tier: String,
    /// Stop every local workspace when wakeway exits (they are adopted again after a crash).
    pub stop_workspaces_on_exit: bool,
}

impl Default for WorkspacesConfig {
    fn default() -> Self {
        WorkspacesConfig {
            backend: BackendKind::Local,
            command: None,
            ports: PortRange { first: 20000, last: 29999 },
            tiers: BTreeMap::from([
                ("small".into(), Tier { cpu: 1.0, memory_mib: 1024 }),
                ("large".into(), Tier { cpu: 2.0, memory_mib: 2048 }),
            ]),
            default_tier: "small".into(),
            scale_up_tier: "large".into(),
            scale_down_tier: "small".into(),
            stop_workspaces_on_exit: true,
        }
    }
}

/// Signed lifecycle events sent to another system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// URL that receives lifecycle events and warnings as signed JSON (`POST`). Unset: none sent.
    #[serde(rename = "webhook_url", with = "typed::opt_webhook_url")]
    pub url: Option<WebhookUrl>,
    /// Secret that signs webhook bodies (HMAC-SHA256 in `X-Wakeway-Signature`); required with a URL.
    #[serde(rename = "webhook_secret", with = "typed::opt_string")]
    pub secret: Option<String>,
    /// First retry delay of a failed webhook delivery (doubles each time, up to 5 min).
    #[serde(rename = "webhook_retry", with = "duration::serde_fmt")]
    pub retry: Duration,
    /// Delivery attempts per webhook event before it is given up (and counted as failed).
    #[serde(rename = "webhook_max_attempts")]
    pub max_attempts: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig { url: None, secret: None, retry: Duration::from_secs(1), max_attempts: 8 }
    }
}

/// What a restore accepts: the zip-bomb guards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreConfig {
    /// A restore refuses a zip that would expand to more than this many bytes.
    #[serde(rename = "restore_max_bytes")]
    pub max_bytes: u64,
    /// A restore refuses a zip with more entries than this.
    #[serde(rename = "restore_max_entries")]
    pub max_entries: u64,
    /// A restore refuses a zip that would expand to more than this many times its own size (checked
    /// once it expands past 64 MiB): the zip-bomb guard.
    #[serde(rename = "restore_max_ratio")]
    pub max_ratio: u64,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig { max_bytes: 64 << 30, max_entries: 2_000_000, max_ratio: 200 }
    }
}

/// What each state costs per hour, for `/usage` (the handoff's price table by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageConfig {
    /// Price per hour of a running workspace, by tier. A tier not listed costs what
    /// `default_tier` costs.
    #[serde(rename = "cost_running_per_hour")]
    pub running_per_hour: BTreeMap<String, f64>,
    /// Price per hour of a sleeping workspace (its volume or folder kept, no process).
    #[serde(rename = "cost_sleeping_per_hour")]
    pub sleeping_per_hour: f64,
    /// Price per hour of a deleted workspace whose backup is kept (until `backup_retention`).
    #[serde(rename = "cost_deleted_per_hour")]
    pub deleted_per_hour: f64,
    /// Price per hour of the always-on baseline `/usage` compares against: one running workspace
    /// per session from its creation until its deletion (a small one by default).
    #[serde(rename = "cost_baseline_per_hour")]
    pub baseline_per_hour: f64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            running_per_hour: BTreeMap::from([("small".into(), 0.05), ("large".into(), 0.10)]),
            sleeping_per_hour: 0.001,
            deleted_per_hour: 0.0001,
            baseline_per_hour: 0.05,
        }
    }
}

impl UsageConfig {
    /// The hourly price of a running workspace of `tier` (the default tier's when not listed).
    pub fn running_price(&self, tier: &str, default_tier: &str) -> f64 {
        self.running_per_hour.get(tier).or_else(|| self.running_per_hour.get(default_tier)).copied().unwrap_or(0.0)
    }
}

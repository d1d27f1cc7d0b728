//! wakeway's typed configuration: built-in defaults, an optional TOML file, then `WAKEWAY_*`
//! environment overrides, then validation. Reading the file is the only I/O done here.
#![forbid(unsafe_code)]

mod duration;
mod env;
mod kubernetes;
mod local;
mod secrets;
#[cfg(test)]
mod tests;
mod workspace_env;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use duration::{format_duration, parse_duration};

/// The longest any duration key may be (100 years): every deadline wakeway computes (a time plus
/// a duration) then fits in a timestamp, with room to spare.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The shortest `backup_retention`: a backup made today outlives at least one day.
pub const MIN_BACKUP_RETENTION: Duration = Duration::from_secs(86_400);
pub use env::{Env, MapEnv, ProcessEnv};
pub use kubernetes::KubernetesConfig;
pub use local::{Isolation, LocalConfig};

/// Everything that can go wrong while loading configuration. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?} is not valid: {message}")]
    Env { var: String, value: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which store keeps session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A file-backed embedded database in `data_dir` (single replica).
    Embedded,
    /// Redis (`redis_url`), shared by several replicas.
    Redis,
}

/// Where workspaces run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Local processes on this machine, one process group per workspace.
    Local,
    /// A Deployment, Service and PVC per session in a Kubernetes cluster (the `[kubernetes]` table).
    Kubernetes,
}

/// How certificates for the TLS listener are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AcmeMode {
    /// Only the files in `tls_cert_file` / `tls_key_file`.
    #[default]
    None,
    /// One certificate per workspace host (`vs-code-<id>.<domain>`), validated over HTTP
    /// (`/.well-known/acme-challenge/` on the plain listener). Only for hosts of existing sessions.
    Http01,
    /// One wildcard certificate `*.<domain>`, validated through DNS TXT records that
    /// `acme_dns_hook` sets.
    Dns01,
}

/// Who may open a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceAuth {
    /// Anyone who knows the URL (local use).
    #[default]
    None,
    /// A one-time sign-in token (`access_url`) is exchanged for a signed, host-only cookie.
    Token,
}

impl WorkspaceAuth {
    /// Whether signed-in users get a cookie signed with `cookie_secret` (every mode but `none`).
    pub fn signs_cookies(self) -> bool {
        !matches!(self, WorkspaceAuth::None)
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Resources of one tier (the seed's "scale up" / "scale down" sizes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// CPU cores (fractions allowed).
    pub cpu: f64,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// The whole configuration. Field names are the TOML keys; `WAKEWAY_<KEY>` overrides each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the one listener serving the management API and every workspace host.
    pub listen: SocketAddr,
    /// Workspaces are reached at `vs-code-<id>.<domain>`.
    pub domain: String,
    /// Base URL users reach wakeway at; workspace URLs are built from its scheme, host and port
    /// (`<scheme>://vs-code-<id>.<host>[:port]`). Empty: `http://<domain>:<listen port>`.
    pub public_url: String,
    /// API keys accepted in `X-API-Key`. Empty: a key is generated once and kept in `data_dir`.
    pub api_keys: Vec<String>,
    /// Address of the TLS listener (HTTPS, HTTP/2 and HTTP/1.1 by ALPN). Empty: no TLS.
    pub tls_listen: String,
    /// PEM certificate chain served when no better certificate matches (e.g. a `*.<domain>`
    /// wildcard from cert-manager). Re-read when the file changes.
    pub tls_cert_file: PathBuf,
    /// PEM private key for `tls_cert_file`.
    pub tls_key_file: PathBuf,
    /// With TLS on, answer plain-HTTP requests with a redirect to HTTPS (except ACME challenges).
    pub redirect_http_to_https: bool,
    /// Certificates from an ACME CA: `none`, `http01` (per workspace host) or `dns01` (wildcard).
    pub acme: AcmeMode,
    /// The ACME directory URL (Let's Encrypt by default).
    pub acme_directory: String,
    /// Contact e-mail for the ACME account (optional).
    pub acme_email: String,
    /// Extra PEM root to trust for the ACME directory's own HTTPS (test CAs such as Pebble).
    pub acme_ca_file: PathBuf,
    /// For `dns01`: an executable called as `<hook> set|clear <record name> <value>` that sets or
    /// removes the TXT record with your DNS provider.
    pub acme_dns_hook: PathBuf,
    /// Renew a certificate this long before it expires.
    #[serde(with = "duration::serde_fmt")]
    pub acme_renew_before: Duration,
    /// How often certificates are checked (new sessions also trigger a check at once).
    #[serde(with = "duration::serde_fmt")]
    pub acme_check_interval: Duration,
    /// Who may open a workspace: `none` (anyone with the URL) or `token` (sign-in link → cookie).
    pub workspace_auth: WorkspaceAuth,
    /// How long a sign-in token (in `access_url`) can be used, once.
    #[serde(with = "duration::serde_fmt")]
    pub access_token_ttl: Duration,
    /// How long the workspace cookie a sign-in token is exchanged for stays valid.
    #[serde(with = "duration::serde_fmt")]
    pub cookie_ttl: Duration,
    /// Secret that signs workspace cookies (same on every replica). Empty: generated once and kept
    /// in `data_dir/cookie-secret`.
    pub cookie_secret: String,
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
    /// Folder for the embedded store, workspace folders, backups and logs.
    pub data_dir: PathBuf,
    /// Folder for backup zips. Empty: `<data_dir>/backups`.
    pub backup_dir: PathBuf,
    /// Where session state lives.
    pub store: StoreKind,
    /// Redis URL (`redis://host:6379/0`). Set: sessions, activity, certificates and the sweep
    /// lease live in Redis, so several replicas can serve together (`store` is then `redis`).
    pub redis_url: String,
    /// This replica's name in leases and activity (empty: hostname and process id).
    pub replica_id: String,
    /// How long the sweep lease and each session's operation lease last without renewal (another
    /// replica takes over, or resumes the step, after that).
    #[serde(with = "duration::serde_fmt")]
    pub lease_ttl: Duration,
    /// Where workspaces run.
    pub backend: BackendKind,
    /// The kubernetes backend's settings (used when `backend = "kubernetes"`).
    pub kubernetes: KubernetesConfig,
    /// The local backend's settings: isolation of each workspace (used when `backend = "local"`).
    pub local: LocalConfig,
    /// Command that starts one workspace (run by `sh -c`). Placeholders: `{socket}` (the Unix
    /// socket path to serve on; the only choice for isolated workspaces), `{port}` (a loopback port
    /// to serve on instead, for workspaces that are not isolated), `{workspace}`, `{state}` (HOME),
    /// `{cpu}`, `{memory_mib}`, `{id}`. Empty: code-server, found on PATH or in
    /// the tools folder that `scripts/install-code-server.sh` fills.
    pub workspace_command: String,
    /// Sleep a session after this long without user activity.
    #[serde(with = "duration::serde_fmt")]
    pub idle_timeout: Duration,
    /// Loopback ports local workspaces listen on, `first-last`. Outside the kernel's ephemeral
    /// range (32768–60999 on Linux) so outgoing connections never take a workspace's port.
    pub workspace_ports: String,
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
    /// URL that receives lifecycle events and warnings as signed JSON (`POST`). Empty: none sent.
    pub webhook_url: String,
    /// Secret that signs webhook bodies (HMAC-SHA256 in `X-Wakeway-Signature`); required with a URL.
    pub webhook_secret: String,
    /// First retry delay of a failed webhook delivery (doubles each time, up to 5 min).
    #[serde(with = "duration::serde_fmt")]
    pub webhook_retry: Duration,
    /// Delivery attempts per webhook event before it is given up (and counted as failed).
    pub webhook_max_attempts: u32,
    /// Send a `sleep_warning` event this long before an idle session is put to sleep (at most half
    /// its idle timeout; 0s: never).
    #[serde(with = "duration::serde_fmt")]
    pub warn_before_sleep: Duration,
    /// Send a `delete_warning` event this long before a sleeping session is backed up and deleted
    /// (0s: never).
    #[serde(with = "duration::serde_fmt")]
    pub warn_before_delete: Duration,
    /// A restore refuses a zip that would expand to more than this many bytes.
    pub restore_max_bytes: u64,
    /// A restore refuses a zip with more entries than this.
    pub restore_max_entries: u64,
    /// A restore refuses a zip that would expand to more than this many times its own size (checked
    /// once it expands past 64 MiB): the zip-bomb guard.
    pub restore_max_ratio: u64,
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
    /// On SIGTERM, how long in-flight requests get before the listener closes.
    #[serde(with = "duration::serde_fmt")]
    pub shutdown_grace: Duration,
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
    /// Resource tiers by name.
    pub tiers: BTreeMap<String, Tier>,
    /// Tier of a new session.
    pub default_tier: String,
    /// Tier after `{"scale": "up"}`.
    pub scale_up_tier: String,
    /// Tier after `{"scale": "down"}`.
    pub scale_down_tier: String,
    /// Proxy worker threads (0: one per core).
    pub threads: usize,
    /// Stop every local workspace when wakeway exits (they are adopted again after a crash).
    pub stop_workspaces_on_exit: bool,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        let minute = 60;
        let hour = 60 * minute;
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            domain: "localhost".into(),
            public_url: String::new(),
            api_keys: Vec::new(),
            tls_listen: String::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            redirect_http_to_https: false,
            acme: AcmeMode::None,
            acme_directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            acme_email: String::new(),
            acme_ca_file: PathBuf::new(),
            acme_dns_hook: PathBuf::new(),
            acme_renew_before: Duration::from_secs(30 * 24 * hour),
            acme_check_interval: Duration::from_secs(10 * minute),
            workspace_auth: WorkspaceAuth::None,
            access_token_ttl: Duration::from_secs(5 * minute),
            cookie_ttl: Duration::from_secs(12 * hour),
            cookie_secret: String::new(),
            unauthenticated_per_minute: 120,
            header_timeout: Duration::from_secs(10),
            max_connections_per_address: 256,
            wake_attempts_per_minute: 30,
            max_websockets_per_session: 64,
            max_header_bytes: 32 * 1024,
            data_dir: PathBuf::from("wakeway-data"),
            backup_dir: PathBuf::new(),
            store: StoreKind::Embedded,
            redis_url: String::new(),
            replica_id: String::new(),
            lease_ttl: Duration::from_secs(10),
            backend: BackendKind::Local,
            kubernetes: KubernetesConfig::default(),
            local: LocalConfig::default(),
            workspace_command: String::new(),
            workspace_ports: "20000-29999".into(),
            idle_timeout: Duration::from_secs(15 * minute),
            sleep_to_delete: Duration::from_secs(24 * hour),
            backup_retention: Duration::from_secs(30 * 24 * hour),
            max_idle_timeout: Duration::from_secs(8 * hour),
            max_sleep_to_delete: Duration::from_secs(30 * 24 * hour),
            webhook_url: String::new(),
            webhook_secret: String::new(),
            webhook_retry: Duration::from_secs(1),
            webhook_max_attempts: 8,
            warn_before_sleep: Duration::from_secs(2 * minute),
            warn_before_delete: Duration::from_secs(hour),
            restore_max_bytes: 64 << 30,
            restore_max_entries: 2_000_000,
            restore_max_ratio: 200,
            sweep_interval: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(30),
            max_awake_with_open_tab: Duration::from_secs(8 * hour),
            hold_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
            backup_retry: Duration::from_secs(5 * minute),
            shutdown_grace: Duration::from_secs(5),
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
            tiers: BTreeMap::from([
                ("small".into(), Tier { cpu: 1.0, memory_mib: 1024 }),
                ("large".into(), Tier { cpu: 2.0, memory_mib: 2048 }),
            ]),
            default_tier: "small".into(),
            scale_up_tier: "large".into(),
            scale_down_tier: "small".into(),
            threads: 0,
            stop_workspaces_on_exit: true,
            log_format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then the environment; validated.
    pub fn load(file: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        env::apply(&mut config, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parse a TOML file over the defaults (missing keys keep their default).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parse TOML text over the defaults.
    /// Tiers named in the file are added to (or replace) the built-in `small` and `large`.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, tier) in Config::default().tiers {
            config.tiers.entry(name).or_insert(tier);
        }
        Ok(config)
    }

    /// Check that values make sense together. Messages name the key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.durations_are_bounded()?;
        if !valid_domain(&self.domain) {
            return bad(format!(
                "domain {:?} is not a lowercase DNS name (e.g. \"localhost\" or \"preview.example.com\")",
                self.domain
            ));
        }
        if !self.public_url.is_empty() && parse_public_url(&self.public_url).is_none() {
            return bad(format!(
                "public_url {:?} must look like http://host[:port] or https://host[:port]",
                self.public_url
            ));
        }
        for (name, value) in [
            ("idle_timeout", self.idle_timeout),
            ("sweep_interval", self.sweep_interval),
            ("checkpoint_interval", self.checkpoint_interval),
            ("hold_timeout", self.hold_timeout),
            ("start_timeout", self.start_timeout),
            ("backup_retry", self.backup_retry),
            ("max_awake_with_open_tab", self.max_awake_with_open_tab),
        ] {
            if value < Duration::from_millis(100) {
                return bad(format!("{name} must be at least 100ms (it is {})", format_duration(value)));
            }
        }
        for (n, key) in self.api_keys.iter().enumerate() {
            if key.len() < 16 {
                return bad("every API key must be at least 16 characters long".into());
            }
            if key.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return bad("API keys must be printable ASCII without spaces".into());
            }
            let which = format!("api_keys (WAKEWAY_API_KEYS), key {} of {},", n + 1, self.api_keys.len());
            strong_secret(&which, key)?;
        }
        for (name, tier) in [
            ("default_tier", &self.default_tier),
            ("scale_up_tier", &self.scale_up_tier),
            ("scale_down_tier", &self.scale_down_tier),
        ] {
            if !self.tiers.contains_key(tier) {
                let known: Vec<_> = self.tiers.keys().cloned().collect();
                return bad(format!("{name} = {tier:?} is not one of the tiers {known:?}"));
            }
        }
        for (name, tier) in &self.tiers {
            if tier.cpu.is_nan() || tier.cpu <= 0.0 || tier.memory_mib == 0 {
                return bad(format!("tier {name:?} needs cpu > 0 and memory_mib > 0"));
            }
        }
        if self.store == StoreKind::Redis && self.redis_url.is_empty() {
            return bad("store = \"redis\" needs redis_url (WAKEWAY_REDIS_URL)".into());
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return bad("lease_ttl must be at least 1s".into());
        }
        if self.workspace_port_range().is_none() {
            return bad(format!("workspace_ports {:?} must look like \"20000-29999\"", self.workspace_ports));
        }
        if !self.tls_listen.is_empty() && self.tls_listen.parse::<SocketAddr>().is_err() {
            return bad(format!("tls_listen {:?} must be an address like 0.0.0.0:8443 (or empty)", self.tls_listen));
        }
        if self.tls_cert_file.as_os_str().is_empty() != self.tls_key_file.as_os_str().is_empty() {
            return bad("tls_cert_file and tls_key_file go together".into());
        }
        if self.acme != AcmeMode::None && self.tls_listen.is_empty() {
            return bad("acme needs tls_listen".into());
        }
        if self.acme == AcmeMode::Dns01 && self.acme_dns_hook.as_os_str().is_empty() {
            return bad("acme = \"dns01\" needs acme_dns_hook (the program that sets TXT records)".into());
        }
        if !self.tls_listen.is_empty() && self.acme == AcmeMode::None && self.tls_cert_file.as_os_str().is_empty() {
            return bad("tls_listen needs a certificate: set tls_cert_file/tls_key_file or acme".into());
        }
        if !self.cookie_secret.is_empty() {
            if self.cookie_secret.len() < 32 {
                return bad("cookie_secret must be at least 32 characters (or empty to generate one)".into());
            }
            strong_secret("cookie_secret (WAKEWAY_COOKIE_SECRET)", &self.cookie_secret)?;
        }
        if self.cookie_secret.is_empty() && self.workspace_auth.signs_cookies() && !self.redis_url.is_empty() {
            return bad(format!(
                "cookie_secret (WAKEWAY_COOKIE_SECRET) must be set when redis_url is set and workspace_auth = \"{}\": \
                 replicas sharing Redis must sign cookies with one secret, and each would otherwise generate its \
                 own into its data_dir, so a cookie from one replica would be refused by the next; {}, and give \
                 every replica the same value",
                format!("{:?}", self.workspace_auth).to_lowercase(),
                secrets::HOW_TO_GENERATE
            ));
        }
        if self.unauthenticated_per_minute == 0 || self.wake_attempts_per_minute == 0 {
            return bad("unauthenticated_per_minute and wake_attempts_per_minute must be at least 1".into());
        }
        if self.header_timeout < Duration::from_millis(100) {
            return bad(format!(
                "header_timeout must be at least 100ms (it is {})",
                format_duration(self.header_timeout)
            ));
        }
        if self.max_connections_per_address == 0 {
            return bad("max_connections_per_address must be at least 1".into());
        }
        if self.max_websockets_per_session == 0 || self.max_header_bytes < 4096 {
            return bad("max_websockets_per_session must be at least 1 and max_header_bytes at least 4096".into());
        }
        if self.rate_limit_per_minute == 0 {
            return bad("rate_limit_per_minute must be at least 1".into());
        }
        if self.max_held_per_session == 0 || self.max_held_total == 0 {
            return bad("max_held_per_session and max_held_total must be at least 1".into());
        }
        if self.max_api_body_bytes < 1024 {
            return bad("max_api_body_bytes must be at least 1024".into());
        }
        if self.backend == BackendKind::Kubernetes {
            self.kubernetes.validate().map_err(ConfigError::Invalid)?;
        }
        self.local.validate().map_err(ConfigError::Invalid)?;
        let command = &self.workspace_command;
        if !command.trim().is_empty() && !command.contains("{socket}") && !command.contains("{port}") {
            return bad(format!(
                "workspace_command {command:?} must serve on {{socket}} (a Unix socket; or on {{port}}, without isolation)"
            ));
        }
        if self.local.isolation == Isolation::On && self.workspace_command.contains("{port}") {
            return bad(ISOLATED_PORT_COMMAND.into());
        }
        if self.max_idle_timeout < self.idle_timeout {
            return bad(format!(
                "max_idle_timeout ({}) must be at least idle_timeout ({})",
                format_duration(self.max_idle_timeout),
                format_duration(self.idle_timeout)
            ));
        }
        if self.backup_retention < MIN_BACKUP_RETENTION {
            return bad(format!(
                "backup_retention must be at least 1d (it is {}): shorter would prune the backup of a session \
                 deleted today at the next sweep",
                format_duration(self.backup_retention)
            ));
        }
        if self.backup_retention < self.sleep_to_delete {
            return bad(format!(
                "backup_retention ({}) must be at least sleep_to_delete ({})",
                format_duration(self.backup_retention),
                format_duration(self.sleep_to_delete)
            ));
        }
        if self.max_sleep_to_delete < self.sleep_to_delete {
            return bad(format!(
                "max_sleep_to_delete ({}) must be at least sleep_to_delete ({})",
                format_duration(self.max_sleep_to_delete),
                format_duration(self.sleep_to_delete)
            ));
        }
        if !self.webhook_url.is_empty() {
            if parse_webhook_url(&self.webhook_url).is_none() {
                return bad(format!(
                    "webhook_url {:?} must look like http://host[:port]/path or https://host[:port]/path",
                    self.webhook_url
                ));
            }
            if self.webhook_secret.len() < 16 {
                return bad("webhook_secret must be at least 16 characters when webhook_url is set".into());
            }
        }
        if !self.webhook_secret.is_empty() {
            strong_secret("webhook_secret (WAKEWAY_WEBHOOK_SECRET)", &self.webhook_secret)?;
        }
        if self.webhook_max_attempts == 0 || self.webhook_retry < Duration::from_millis(10) {
            return bad("webhook_max_attempts must be at least 1 and webhook_retry at least 10ms".into());
        }
        if self.restore_max_bytes == 0 || self.restore_max_entries == 0 || self.restore_max_ratio < 2 {
            return bad(
                "restore_max_bytes and restore_max_entries must be at least 1, restore_max_ratio at least 2".into()
            );
        }
        Ok(())
    }

    /// Every duration key at most [`MAX_DURATION`], so a deadline (a time plus a duration) always
    /// fits in a timestamp and no background computation can overflow.
    fn durations_are_bounded(&self) -> Result<(), ConfigError> {
        let k = &self.kubernetes;
        for (name, value) in [
            ("acme_renew_before", self.acme_renew_before),
            ("acme_check_interval", self.acme_check_interval),
            ("access_token_ttl", self.access_token_ttl),
            ("cookie_ttl", self.cookie_ttl),
            ("header_timeout", self.header_timeout),
            ("lease_ttl", self.lease_ttl),
            ("idle_timeout", self.idle_timeout),
            ("sleep_to_delete", self.sleep_to_delete),
            ("backup_retention", self.backup_retention),
            ("max_idle_timeout", self.max_idle_timeout),
            ("max_sleep_to_delete", self.max_sleep_to_delete),
            ("webhook_retry", self.webhook_retry),
            ("warn_before_sleep", self.warn_before_sleep),
            ("warn_before_delete", self.warn_before_delete),
            ("sweep_interval", self.sweep_interval),
            ("checkpoint_interval", self.checkpoint_interval),
            ("max_awake_with_open_tab", self.max_awake_with_open_tab),
            ("hold_timeout", self.hold_timeout),
            ("start_timeout", self.start_timeout),
            ("stop_grace", self.stop_grace),
            ("backup_retry", self.backup_retry),
            ("shutdown_grace", self.shutdown_grace),
            ("kubernetes.job_timeout", k.job_timeout),
            ("kubernetes.job_ttl", k.job_ttl),
            ("kubernetes.stop_timeout", k.stop_timeout),
        ] {
            if value > MAX_DURATION {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at most {} (it is {})",
                    format_duration(MAX_DURATION),
                    format_duration(value)
                )));
            }
        }
        Ok(())
    }

    /// The store in use: Redis whenever `redis_url` is set.
    pub fn store_kind(&self) -> StoreKind {
        if self.redis_url.is_empty() { self.store } else { StoreKind::Redis }
    }

    /// `workspace_ports` as an inclusive range.
    pub fn workspace_port_range(&self) -> Option<std::ops::RangeInclusive<u16>> {
        let (first, last) = self.workspace_ports.split_once('-')?;
        let (first, last): (u16, u16) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
        (first > 0 && first <= last).then_some(first..=last)
    }

    /// The TLS listener's address, if TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listen.parse().ok()
    }

    /// The folder backups are written to.
    pub fn backup_dir(&self) -> PathBuf {
        if self.backup_dir.as_os_str().is_empty() { self.data_dir.join("backups") } else { self.backup_dir.clone() }
    }

    /// `(scheme, host, port)` that workspace URLs are built from.
    pub fn public_base(&self) -> (String, String, Option<u16>) {
        if let Some(parsed) = parse_public_url(&self.public_url) {
            return parsed;
        }
        let port = self.listen.port();
        ("http".into(), self.domain.clone(), (port != 80).then_some(port))
    }

    /// The URL a user opens for session `id`.
    pub fn workspace_url(&self, id: &str) -> String {
        let (scheme, host, port) = self.public_base();
        match port {
            Some(port) => format!("{scheme}://vs-code-{id}.{host}:{port}"),
            None => format!("{scheme}://vs-code-{id}.{host}"),
        }
    }

    /// The effective configuration as TOML, with API keys masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.api_keys = shown.api_keys.iter().map(|k| mask(k)).collect();
        if let Some((scheme, rest)) = shown.redis_url.split_once("://")
            && let Some((_, host)) = rest.rsplit_once('@')
        {
            shown.redis_url = format!("{scheme}://****@{host}");
        }
        if !shown.cookie_secret.is_empty() {
            shown.cookie_secret = mask(&shown.cookie_secret);
        }
        if !shown.webhook_secret.is_empty() {
            shown.webhook_secret = mask(&shown.webhook_secret);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Why an isolated workspace cannot use `{port}`.
pub const ISOLATED_PORT_COMMAND: &str = "workspace_command uses {port}, but isolated workspaces have no TCP port \
     (every other workspace could reach it): serve on the Unix socket {socket} instead (code-server: --socket \
     {socket}), or set [local] isolation = \"off\" (WAKEWAY_LOCAL_ISOLATION=off) on a machine with one trusted user";

/// Refuse a placeholder or guessable secret, naming the key (`which`) and how to make a good one.
fn strong_secret(which: &str, value: &str) -> Result<(), ConfigError> {
    match secrets::weakness(value) {
        Some(reason) => Err(ConfigError::Invalid(format!("{which} {reason}; {}", secrets::HOW_TO_GENERATE))),
        None => Ok(()),
    }
}

/// `abcd…wxyz` for long secrets, `****` for short ones.
pub fn mask(secret: &str) -> String {
    if secret.len() >= 16 && secret.is_ascii() {
        format!("{}…{}", &secret[..4], &secret[secret.len() - 4..])
    } else {
        "****".into()
    }
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 240
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `(scheme, authority)` of a webhook URL, when it is an absolute http(s) URL with a host.
fn parse_webhook_url(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let ok = !authority.is_empty()
        && !authority.contains('@')
        && authority.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        && url.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some((scheme, authority))
}

fn parse_public_url(url: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
        None => (rest, None),
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = port.filter(|p| *p != default_port);
    valid_domain(host).then(|| (scheme.to_string(), host.to_string(), port))
}

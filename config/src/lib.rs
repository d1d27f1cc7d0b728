//! wakeway's typed configuration: built-in defaults, an optional TOML file, then `WAKEWAY_*`
//! environment overrides, then validation. Reading the file is the only I/O done here.
#![forbid(unsafe_code)]

mod duration;
mod env;
mod groups;
mod kubernetes;
mod local;
mod oidc;
mod secrets;
#[cfg(test)]
mod tests;
mod typed;
mod validate;
mod workspace_env;

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
pub use groups::{
    AccessConfig, LifecycleConfig, LimitsConfig, RestoreConfig, ServerConfig, StoreConfig, TlsConfig, UsageConfig,
    WebhookConfig, WorkspacesConfig,
};
pub use kubernetes::KubernetesConfig;
pub use local::{Isolation, LocalConfig};
pub use oidc::OidcConfig;
pub use typed::{NumberRange, PortRange, PublicUrl, UidRange, WebhookUrl};

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
    /// Sign-in with an OpenID Connect provider (the `oidc_*` keys), which then hands over to the
    /// workspace through a one-time sign-in token, as in `token` mode.
    Oidc,
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

/// The whole configuration, in parts (see the `groups` module). In TOML every key of a part is at the top
/// level, as it always was; `WAKEWAY_<KEY>` overrides each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub server: ServerConfig,
    #[serde(flatten)]
    pub tls: TlsConfig,
    #[serde(flatten)]
    pub access: AccessConfig,
    #[serde(flatten)]
    pub limits: LimitsConfig,
    #[serde(flatten)]
    pub store: StoreConfig,
    #[serde(flatten)]
    pub lifecycle: LifecycleConfig,
    #[serde(flatten)]
    pub workspaces: WorkspacesConfig,
    #[serde(flatten)]
    pub webhook: WebhookConfig,
    #[serde(flatten)]
    pub restore: RestoreConfig,
    #[serde(flatten)]
    pub usage: UsageConfig,
    #[serde(flatten)]
    pub oidc: OidcConfig,
    /// The kubernetes backend's settings (used when `backend = "kubernetes"`).
    pub kubernetes: KubernetesConfig,
    /// The local backend's settings: isolation of each workspace (used when `backend = "local"`).
    pub local: LocalConfig,
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

    /// Parse TOML text over the defaults. An unknown key is an error (a typo never goes
    /// unnoticed). Tiers named in the file are added to (or replace) the built-in `small` and
    /// `large`, and so are their running prices (`cost_running_per_hour`).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let known = Config::keys();
        if let Some(unknown) = table.keys().find(|k| !known.contains(k)) {
            return Err(format!("unknown key `{unknown}` (`wakeway check-config` lists every key)"));
        }
        let mut config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, tier) in Config::default().workspaces.tiers {
            config.workspaces.tiers.entry(name).or_insert(tier);
        }
        for (tier, price) in Config::default().usage.running_per_hour {
            config.usage.running_per_hour.entry(tier).or_insert(price);
        }
        Ok(config)
    }

    /// Every top-level key (those of the parts, and the `[kubernetes]` and `[local]` tables).
    pub(crate) fn keys() -> Vec<String> {
        match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(table)) => table.keys().cloned().collect(),
            _ => unreachable!("the defaults serialize to a table"),
        }
    }

    /// The store in use: Redis whenever `redis_url` is set.
    pub fn store_kind(&self) -> StoreKind {
        if self.store.redis_url.is_some() { StoreKind::Redis } else { self.store.kind }
    }

    /// The folder backups are written to.
    pub fn backup_dir(&self) -> PathBuf {
        self.server.backup_dir.clone().unwrap_or_else(|| self.server.data_dir.join("backups"))
    }

    /// `(scheme, host, port)` that workspace URLs are built from.
    pub fn public_base(&self) -> (String, String, Option<u16>) {
        if let Some(url) = &self.server.public_url {
            return (url.scheme.clone(), url.host.clone(), url.port);
        }
        let port = self.server.listen.port();
        ("http".into(), self.server.domain.clone(), (port != 80).then_some(port))
    }

    /// The URL a user opens for session `id`.
    pub fn workspace_url(&self, id: &str) -> String {
        let (scheme, host, port) = self.public_base();
        match port {
            Some(port) => format!("{scheme}://vs-code-{id}.{host}:{port}"),
            None => format!("{scheme}://vs-code-{id}.{host}"),
        }
    }

    /// The effective configuration as TOML, with API keys and secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.access.api_keys = shown.access.api_keys.iter().map(|k| mask(k)).collect();
        if let Some(url) = &mut shown.store.redis_url
            && let Some((scheme, rest)) = url.split_once("://")
            && let Some((_, host)) = rest.rsplit_once('@')
        {
            *url = format!("{scheme}://****@{host}");
        }
        for secret in [&mut shown.access.cookie_secret, &mut shown.webhook.secret].into_iter().flatten() {
            *secret = mask(secret);
        }
        if !shown.oidc.client_secret.is_empty() {
            shown.oidc.client_secret = mask(&shown.oidc.client_secret);
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

pub(crate) fn valid_domain(domain: &str) -> bool {
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

//! Certificates for the TLS listener: the configured files (re-read when they change) and ACME
//! issuance and renewal through instant-acme — HTTP-01 per workspace host (only hosts of existing
//! sessions, never arbitrary SNI) or DNS-01 for the `*.<domain>` wildcard through a hook. The
//! ACME account and every certificate are kept in the store, so replicas share them and a restart
//! issues nothing new. A failure never drops a certificate that is still valid.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use wakeway_config::{AcmeMode, Config};
use wakeway_proxy::tls::{CertInfo, CertStore};

use crate::manager::Manager;
use crate::session::State;
use crate::store::Store;

/// Certificate problems (each logged, counted, shown in `/health`).
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the ACME order ended {0:?}")]
    Order(OrderStatus),
    #[error("no {0:?} challenge offered for {1}")]
    NoChallenge(ChallengeType, String),
    #[error("DNS hook {hook} failed: {why}")]
    Hook { hook: String, why: String },
    #[error("store: {0}")]
    Store(String),
    #[error("certificate: {0}")]
    Cert(#[from] wakeway_proxy::tls::CertError),
}

#[derive(Serialize, Deserialize)]
struct StoredCert {
    chain: String,
    key: String,
}

#[derive(Debug, Clone, Default)]
struct Attempts {
    failures: u32,
    next_attempt: Option<SystemTime>,
    last_error: Option<String>,
}

/// Keeps the certificate store filled: files, ACME issuance, renewal.
pub struct Certificates {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    certs: Arc<CertStore>,
    manager: Manager,
    account: OnceCell<Account>,
    attempts: DashMap<String, Attempts>,
    files_seen: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

const ACCOUNT_KEY: &str = "acme/account";

fn cert_key(name: &str) -> String {
    format!("certs/{name}")
}

impl Certificates {
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>, certs: Arc<CertStore>, manager: Manager) -> Arc<Self> {
        Arc::new(Certificates {
            config,
            store,
            certs,
            manager,
            account: OnceCell::new(),
            attempts: DashMap::new(),
            files_seen: std::sync::Mutex::new(None),
        })
    }

    /// Load the configured files and every stored certificate. Errors in the files are fatal at
    /// start (the operator must fix them); later reloads keep the old certificate on error.
    pub async fn load(&self) -> Result<(), String> {
        if let Some(err) = self.reload_files(true).await {
            return Err(err);
        }
        let keys = self.store.list_blobs("certs/").await.map_err(|e| e.to_string())?;
        for key in keys {
            if let Ok(Some(bytes)) = self.store.get_blob(&key).await
                && let Ok(stored) = serde_json::from_slice::<StoredCert>(&bytes)
            {
                match self.certs.insert(stored.chain.as_bytes(), stored.key.as_bytes()) {
                    Ok(info) => tracing::info!(names = ?info.names, "certificate loaded from the store"),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "stored certificate is unusable; it will be issued again")
                    }
                }
            }
        }
        Ok(())
    }

    /// Re-read `tls_cert_file`/`tls_key_file` if they changed. Returns an error message on failure.
    /// Every 2 s on the lifecycle runtime: the file system is read through `tokio::fs`.
    async fn reload_files(&self, first: bool) -> Option<String> {
        let (Some(cert), Some(key)) = (&self.config.tls.cert_file, &self.config.tls.key_file) else {
            return None;
        };
        async fn modified(p: &Path) -> Option<std::time::SystemTime> {
            tokio::fs::metadata(p).await.and_then(|m| m.modified()).ok()
        }
        let stamp = modified(cert).await.zip(modified(key).await);
        let seen = || self.files_seen.lock().unwrap_or_else(|e| e.into_inner());
        if !first && stamp == *seen() {
            return None;
        }
        let read = async { Ok::<_, std::io::Error>((tokio::fs::read(cert).await?, tokio::fs::read(key).await?)) };
        let result = read
            .await
            .map_err(|e| e.to_string())
            .and_then(|(c, k)| self.certs.set_fallback(&c, &k).map_err(|e| e.to_string()));
        *seen() = stamp;
        match result {
            Ok(info) => {
                tracing::info!(file = %cert.display(), names = ?info.names, "TLS certificate files loaded");
                self.manager.set_problem(crate::manager::Component::TlsFiles, None);
                None
            }
            Err(e) => {
                let message = format!("cannot use {} / {}: {e}", cert.display(), key.display());
                tracing::error!(error = %message, "TLS certificate files rejected; the previous certificate stays");
                self.manager.set_problem(crate::manager::Component::TlsFiles, Some(message.clone()));
                Some(message)
            }
        }
    }

    /// The names that need a certificate now.
    async fn wanted(&self) -> Vec<String> {
        match self.config.tls.acme {
            AcmeMode::None => Vec::new(),
            AcmeMode::Dns01 => vec![format!("*.{}", self.config.server.domain)],
            AcmeMode::Http01 => match self.manager.list(false).await {
                Ok(sessions) => sessions
                    .iter()
                    .filter(|v| !matches!(v.session.state, State::Deleting | State::Deleted))
                    .map(|v| format!("vs-code-{}.{}", v.session.uuid, self.config.server.domain))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list sessions for certificates; retrying later");
                    Vec::new()
                }
            },
        }
    }

    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.manager.now().timestamp_millis().max(0) as u64)
    }

    /// Issue or renew every wanted certificate that is missing or due.
    pub async fn check(&self) {
        let now = self.now();
        let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        for name in self.wanted().await {
            let due = match self.certs.covering(&name) {
                Some(info) => info.not_after - now_secs <= self.config.tls.acme_renew_before.as_secs() as i64,
                None => true,
            };
            let waiting = self.attempts.get(&name).and_then(|a| a.next_attempt).is_some_and(|t| t > now);
            if !due || waiting {
                continue;
            }
            match self.issue(&name).await {
                Ok(info) => {
                    tracing::info!(%name, not_after = info.not_after, "certificate issued");
                    self.manager.metrics().acme_orders.with_label_values(&["ok"]).inc();
                    self.attempts.remove(&name);
                }
                Err(e) => {
                    self.manager.metrics().acme_orders.with_label_values(&["failed"]).inc();
                    let mut attempts = self.attempts.entry(name.clone()).or_default();
                    attempts.failures += 1;
                    let backoff = Duration::from_secs(60 * 2u64.pow(attempts.failures.min(8) - 1))
                        .min(Duration::from_secs(6 * 3600));
                    attempts.next_attempt = Some(now + backoff);
                    attempts.last_error = Some(e.to_string());
                    tracing::error!(%name, error = %e, retry_in = ?backoff, "certificate issuance failed; any valid certificate stays in use");
                }
            }
        }
        let errors: Vec<String> =
            self.attempts.iter().filter_map(|a| a.last_error.as_ref().map(|e| format!("{}: {e}", a.key()))).collect();
        self.manager.set_problem(crate::manager::Component::Acme, (!errors.is_empty()).then(|| errors.join("; ")));
    }

    async fn account(&self) -> Result<&Account, AcmeError> {
        self.account
            .get_or_try_init(|| async {
                let builder = || -> Result<_, AcmeError> {
                    Ok(match &self.config.tls.acme_ca_file {
                        None => Account::builder()?,
                        Some(root) => Account::builder_with_root(root)?,
                    })
                };
                let stored = self.store.get_blob(ACCOUNT_KEY).await.map_err(|e| AcmeError::Store(e.to_string()))?;
                if let Some(bytes) = stored
                    && let Ok(credentials) = serde_json::from_slice::<AccountCredentials>(&bytes)
                {
                    return Ok(builder()?.from_credentials(credentials).await?);
                }
                let contact = self.config.tls.acme_email.as_ref().map(|email| format!("mailto:{email}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) =
                    builder()?.create(&new, self.config.tls.acme_directory.clone(), None).await?;
                let bytes = serde_json::to_vec(&credentials).map_err(|e| AcmeError::Store(e.to_string()))?;
                self.store.put_blob(ACCOUNT_KEY, &bytes).await.map_err(|e| AcmeError::Store(e.to_string()))?;
                tracing::info!(directory = %self.config.tls.acme_directory, "ACME account created");
                Ok(account)
            })
            .await
    }

    async fn issue(&self, name: &str) -> Result<CertInfo, AcmeError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(name.to_string())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let dns = name.starts_with("*.");
        let mut published: Vec<(String, String)> = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                if authz.status == AuthorizationStatus::Valid {
                    continue;
                }
                let kind = if dns { ChallengeType::Dns01 } else { ChallengeType::Http01 };
                let mut challenge =
                    authz.challenge(kind.clone()).ok_or_else(|| AcmeError::NoChallenge(kind, name.to_string()))?;
                let key_authorization = challenge.key_authorization();
                if dns {
                    let record = format!("_acme-challenge.{}", name.trim_start_matches("*."));
                    let value = key_authorization.dns_value();
                    self.dns_hook("set", &record, &value).await?;
                    published.push((record, value));
                } else {
                    self.certs.add_challenge(&challenge.token, key_authorization.as_str());
                    published.push((challenge.token.clone(), String::new()));
                }
                challenge.set_ready().await?;
            }
            let retries = RetryPolicy::default().timeout(Duration::from_secs(120));
            let status = order.poll_ready(&retries).await?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Order(status));
            }
            let key = order.finalize().await?;
            let chain = order.poll_certificate(&retries).await?;
            Ok((chain, key))
        }
        .await;
        for (what, value) in published {
            if dns {
                if let Err(e) = self.dns_hook("clear", &what, &value).await {
                    tracing::warn!(error = %e, "could not clear the ACME TXT record");
                }
            } else {
                self.certs.remove_challenge(&what);
            }
        }
        let (chain, key) = result?;
        let info = self.certs.insert(chain.as_bytes(), key.as_bytes())?;
        let stored = serde_json::to_vec(&StoredCert { chain, key }).map_err(|e| AcmeError::Store(e.to_string()))?;
        self.store.put_blob(&cert_key(name), &stored).await.map_err(|e| AcmeError::Store(e.to_string()))?;
        Ok(info)
    }

    async fn dns_hook(&self, action: &str, record: &str, value: &str) -> Result<(), AcmeError> {
        let hook = self.config.tls.acme_dns_hook.clone().unwrap_or_default();
        let failed = |why: String| AcmeError::Hook { hook: hook.display().to_string(), why };
        let output = tokio::process::Command::new(&hook).args([action, record, value]).kill_on_drop(true).output();
        let output = tokio::time::timeout(Duration::from_secs(120), output)
            .await
            .map_err(|_| failed("timed out after 120 s".into()))?
            .map_err(|e| failed(e.to_string()))?;
        if !output.status.success() {
            return Err(failed(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim())));
        }
        Ok(())
    }

    /// Reload files every few seconds; check ACME on `acme_check_interval` and whenever sessions
    /// change; until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let changed = self.manager.changed();
        let mut files = tokio::time::interval(Duration::from_secs(2));
        let mut acme = tokio::time::interval(self.config.tls.acme_check_interval);
        files.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        acme.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = files.tick() => { self.reload_files(false).await; }
                _ = acme.tick() => self.check().await,
                _ = changed.notified() => self.check().await,
                _ = shutdown.changed() => break,
            }
        }
    }
}

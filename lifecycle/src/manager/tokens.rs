//! Workspace sign-in: one-time sign-in tokens (kept in the store as digests, redeemable on any
//! replica) and cookie generations, which a revocation raises to end every cookie issued before.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{Value, json};
use wakeway_proxy::SessionId;

use super::runtime::SessionRuntime;
use super::{LifecycleError, Manager, Result};
use crate::session::{Session, State};

const TOKEN_PREFIX: &str = "signin/";

impl Manager {
    /// Mint a one-time sign-in token for `id`, valid for `access_token_ttl` and until the
    /// session's cookies are next revoked. Returns the `access_url` and its expiry.
    pub async fn mint_token(&self, id: &SessionId) -> Result<(String, DateTime<Utc>)> {
        self.mint_token_at(id, "/").await
    }

    /// [`Manager::mint_token`] for a link that lands on `path_and_query` (starting with `/`) of
    /// the workspace once the token is exchanged (the OIDC sign-in returns people where they were).
    pub async fn mint_token_at(&self, id: &SessionId, path_and_query: &str) -> Result<(String, DateTime<Utc>)> {
        let s = self.load(id).await?;
        let generation = self.handle(id).map_or(0, |h| h.cookie_generation()).max(s.cookie_generation);
        if matches!(s.state, State::Deleting | State::Deleted) {
            return Err(LifecycleError::Deleted(s.uuid));
        }
        let bytes: [u8; 24] = rand::rng().random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = self.now();
        let ttl = self.inner.config.access.access_token_ttl;
        let expires = crate::policy::after(now, ttl);
        // In the store (only a digest): whichever replica the browser reaches redeems it, once.
        let record =
            json!({ "session": id.as_str(), "expires_ms": expires.timestamp_millis(), "generation": generation });
        self.inner.store.put_expiring(&token_key(&token), record.to_string().as_bytes(), ttl).await?;
        let separator = if path_and_query.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{path_and_query}{separator}{}={token}",
            self.inner.config.workspace_url(id.as_str()),
            wakeway_proxy::auth::TOKEN_PARAM
        );
        Ok((url, expires))
    }

    /// Consume a sign-in token: the cookie generation to sign the cookie with, if it was minted
    /// for `id`, has not expired, and the session's cookies were not revoked since.
    pub async fn redeem_token(&self, id: &SessionId, token: &str) -> Option<u64> {
        if token.len() != 48 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let Ok(Some(bytes)) = self.inner.store.take_blob(&token_key(token)).await else { return None };
        let record: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let generation = record["generation"].as_u64().unwrap_or(0);
        let current = self.handle(id)?.cookie_generation();
        let valid = record["session"] == id.as_str()
            && record["expires_ms"].as_i64().is_some_and(|t| t > self.now().timestamp_millis())
            && generation >= current;
        valid.then_some(generation)
    }

    /// End every cookie (and unused sign-in link) issued for `id`: its cookie generation goes
    /// up. Refused on this replica at once; the other replicas learn it from the record.
    pub async fn revoke_cookies(&self, id: &SessionId) -> Result<Session> {
        if let Some(handle) = self.handle(id) {
            handle.raise_cookie_generation(handle.cookie_generation() + 1);
        }
        self.run_locked(id, "revoke", move |this, rt| async move {
            let mut s = this.load(&rt.handle.id).await?;
            end_cookies(&rt, &mut s);
            this.save(&rt, &mut s).await?;
            tracing::info!(session = %s.uuid, generation = s.cookie_generation, "workspace cookies revoked");
            Ok(s)
        })
        .await
    }

    /// Remove sign-in tokens that expired unused, and the OIDC sign-in's expired login attempts
    /// and base sessions (every one carries `expires_ms`; stores without expiry keep them until here).
    pub(super) async fn prune_tokens(&self) {
        let mut keys = Vec::new();
        for prefix in [TOKEN_PREFIX, crate::web::session::LOGIN_PREFIX, crate::web::session::USER_PREFIX] {
            keys.extend(self.inner.store.list_blobs(prefix).await.unwrap_or_default());
        }
        let now = self.now().timestamp_millis();
        for key in keys {
            if let Ok(Some(bytes)) = self.inner.store.get_blob(&key).await {
                let record: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if record["expires_ms"].as_i64().is_none_or(|t| t <= now) {
                    let _ = self.inner.store.take_blob(&key).await;
                }
            }
        }
    }
}

/// Raise `s`'s cookie generation past every generation a cookie may carry (the record's and this
/// replica's); saved with the record's next write.
pub(super) fn end_cookies(rt: &SessionRuntime, s: &mut Session) {
    s.cookie_generation = s.cookie_generation.max(rt.handle.cookie_generation()) + 1;
    rt.handle.raise_cookie_generation(s.cookie_generation);
}

/// Where a sign-in token is kept: its SHA-256, never the token itself.
fn token_key(token: &str) -> String {
    use sha2::Digest;
    format!("{TOKEN_PREFIX}{:x}", sha2::Sha256::digest(token.as_bytes()))
}

//! The OpenID Connect settings of `workspace_auth = "oidc"`: which provider, which client, which
//! claim names the user and who is an admin. TOML keys and `WAKEWAY_OIDC_*` names are flat.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// Sign-in with the organisation's OpenID Connect provider (`workspace_auth = "oidc"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as its discovery document's `issuer` spells it
    /// (`<issuer>/.well-known/openid-configuration` is read).
    #[serde(rename = "oidc_issuer")]
    pub issuer: String,
    /// The client id registered with the provider (redirect URI `<public_url>/oauth/callback`).
    #[serde(rename = "oidc_client_id")]
    pub client_id: String,
    /// The client's secret (sent with HTTP Basic to the token endpoint).
    #[serde(rename = "oidc_client_secret")]
    pub client_secret: String,
    /// Scopes asked for (`openid` is always added).
    #[serde(rename = "oidc_scopes")]
    pub scopes: Vec<String>,
    /// The ID-token claim that must equal a session's `user_id`. For `email`, only a verified
    /// e-mail (`email_verified = true`) counts.
    #[serde(rename = "oidc_user_claim")]
    pub user_claim: String,
    /// The ID-token claim listing the user's groups (an array of strings, or one string).
    #[serde(rename = "oidc_groups_claim")]
    pub groups_claim: String,
    /// Members of this group may open every workspace. Empty: no admin group.
    #[serde(rename = "oidc_admin_group")]
    pub admin_group: String,
    /// Users (values of the user claim) who may open every workspace.
    #[serde(rename = "oidc_admin_users")]
    pub admin_users: Vec<String>,
    /// How long a started sign-in may take at the provider before it must start again.
    #[serde(rename = "oidc_login_ttl", with = "duration::serde_fmt")]
    pub login_ttl: Duration,
    /// How long a sign-in on the base host lasts (then the provider is asked again).
    #[serde(rename = "oidc_session_ttl", with = "duration::serde_fmt")]
    pub session_ttl: Duration,
    /// Signed-in users may create their own workspaces ("New workspace" on the home page), not
    /// only the backend that calls the management API. Off: the home page lists and opens only.
    pub users_can_create: bool,
    /// How many workspaces (not deleted) one user may have for "New workspace" to create
    /// another. Workspaces made through the API count, but the API itself is not limited.
    pub max_workspaces_per_user: usize,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            user_claim: "email".into(),
            groups_claim: "groups".into(),
            admin_group: String::new(),
            admin_users: Vec::new(),
            login_ttl: Duration::from_secs(10 * 60),
            session_ttl: Duration::from_secs(12 * 3600),
            users_can_create: false,
            max_workspaces_per_user: 3,
        }
    }
}

//! Checks that values make sense, alone and together, once they are parsed. Each message names
//! the key to fix. One function per part of the configuration.

use std::time::Duration;

use crate::{
    AcmeMode, BackendKind, Config, ConfigError, ISOLATED_PORT_COMMAND, Isolation, MAX_DURATION, MIN_BACKUP_RETENTION,
    StoreKind, WorkspaceAuth, format_duration, secrets, strong_secret, valid_domain,
};

type Checked = Result<(), ConfigError>;

fn bad(message: String) -> Checked {
    Err(ConfigError::Invalid(message))
}

/// `a` ≥ `b`, as "<a> (…) must be at least <b> (…)".
fn at_least(a: (&str, Duration), b: (&str, Duration)) -> Checked {
    if a.1 < b.1 {
        return bad(format!("{} ({}) must be at least {} ({})", a.0, format_duration(a.1), b.0, format_duration(b.1)));
    }
    Ok(())
}

impl Config {
    /// Check that values make sense together. Messages name the key to fix.
    pub fn validate(&self) -> Checked {
        self.durations_are_bounded()?;
        self.check_server()?;
        self.check_lifecycle()?;
        self.check_access()?;
        self.check_workspaces()?;
        self.check_tls()?;
        self.check_limits()?;
        self.check_webhook()?;
        self.check_restore()?;
        self.check_usage()?;
        self.check_oidc()?;
        self.check_self_service()
    }

    fn check_server(&self) -> Checked {
        let domain = &self.server.domain;
        if !valid_domain(domain) {
            return bad(format!(
                "domain {domain:?} is not a lowercase DNS name (e.g. \"localhost\" or \"preview.example.com\")"
            ));
        }
        if self.store.kind == StoreKind::Redis && self.store.redis_url.is_none() {
            return bad("store = \"redis\" needs redis_url (WAKEWAY_REDIS_URL)".into());
        }
        if self.store.lease_ttl < Duration::from_secs(1) {
            return bad("lease_ttl must be at least 1s".into());
        }
        Ok(())
    }

    fn check_lifecycle(&self) -> Checked {
        let l = &self.lifecycle;
        for (name, value) in [
            ("idle_timeout", l.idle_timeout),
            ("sweep_interval", l.sweep_interval),
            ("checkpoint_interval", l.checkpoint_interval),
            ("hold_timeout", l.hold_timeout),
            ("start_timeout", l.start_timeout),
            ("backup_retry", l.backup_retry),
            ("max_awake_with_open_tab", l.max_awake_with_open_tab),
        ] {
            if value < Duration::from_millis(100) {
                return bad(format!("{name} must be at least 100ms (it is {})", format_duration(value)));
            }
        }
        at_least(("max_idle_timeout", l.max_idle_timeout), ("idle_timeout", l.idle_timeout))?;
        if l.backup_retention < MIN_BACKUP_RETENTION {
            return bad(format!(
                "backup_retention must be at least 1d (it is {}): shorter would prune the backup of a session \
                 deleted today at the next sweep",
                format_duration(l.backup_retention)
            ));
        }
        at_least(("backup_retention", l.backup_retention), ("sleep_to_delete", l.sleep_to_delete))?;
        at_least(("max_sleep_to_delete", l.max_sleep_to_delete), ("sleep_to_delete", l.sleep_to_delete))
    }

    fn check_access(&self) -> Checked {
        let a = &self.access;
        for (n, key) in a.api_keys.iter().enumerate() {
            if key.len() < 16 {
                return bad("every API key must be at least 16 characters long".into());
            }
            if key.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return bad("API keys must be printable ASCII without spaces".into());
            }
            let which = format!("api_keys (WAKEWAY_API_KEYS), key {} of {},", n + 1, a.api_keys.len());
            strong_secret(&which, key)?;
        }
        match &a.cookie_secret {
            Some(secret) if secret.len() < 32 => {
                return bad("cookie_secret must be at least 32 characters (or empty to generate one)".into());
            }
            Some(secret) => strong_secret("cookie_secret (WAKEWAY_COOKIE_SECRET)", secret)?,
            None if a.workspace_auth.signs_cookies() && self.store.redis_url.is_some() => {
                return bad(format!(
                    "cookie_secret (WAKEWAY_COOKIE_SECRET) must be set when redis_url is set and workspace_auth = \
                     \"{}\": replicas sharing Redis must sign cookies with one secret, and each would otherwise \
                     generate its own into its data_dir, so a cookie from one replica would be refused by the \
                     next; {}, and give every replica the same value",
                    format!("{:?}", a.workspace_auth).to_lowercase(),
                    secrets::HOW_TO_GENERATE
                ));
            }
            None => {}
        }
        Ok(())
    }

    fn check_workspaces(&self) -> Checked {
        let w = &self.workspaces;
        for (name, tier) in [
            ("default_tier", &w.default_tier),
            ("scale_up_tier", &w.scale_up_tier),
            ("scale_down_tier", &w.scale_down_tier),
        ] {
            if !w.tiers.contains_key(tier) {
                let known: Vec<_> = w.tiers.keys().cloned().collect();
                return bad(format!("{name} = {tier:?} is not one of the tiers {known:?}"));
            }
        }
        for (name, tier) in &w.tiers {
            if tier.cpu.is_nan() || tier.cpu <= 0.0 || tier.memory_mib == 0 {
                return bad(format!("tier {name:?} needs cpu > 0 and memory_mib > 0"));
            }
        }
        if w.ports.first == 0 {
            return bad(format!("workspace_ports {:?} must look like \"20000-29999\"", w.ports.to_string()));
        }
        if w.backend == BackendKind::Kubernetes {
            self.kubernetes.validate().map_err(ConfigError::Invalid)?;
        }
        self.local.validate().map_err(ConfigError::Invalid)?;
        let command = w.command.as_deref().unwrap_or_default();
        if !command.trim().is_empty() && !command.contains("{socket}") && !command.contains("{port}") {
            return bad(format!(
                "workspace_command {command:?} must serve on {{socket}} (a Unix socket; or on {{port}}, without isolation)"
            ));
        }
        if self.local.isolation == Isolation::On && command.contains("{port}") {
            return bad(ISOLATED_PORT_COMMAND.into());
        }
        Ok(())
    }

    fn check_tls(&self) -> Checked {
        let t = &self.tls;
        if t.cert_file.is_none() != t.key_file.is_none() {
            return bad("tls_cert_file and tls_key_file go together".into());
        }
        if t.acme != AcmeMode::None && t.listen.is_none() {
            return bad("acme needs tls_listen".into());
        }
        if t.acme == AcmeMode::Dns01 && t.acme_dns_hook.is_none() {
            return bad("acme = \"dns01\" needs acme_dns_hook (the program that sets TXT records)".into());
        }
        if t.listen.is_some() && t.acme == AcmeMode::None && t.cert_file.is_none() {
            return bad("tls_listen needs a certificate: set tls_cert_file/tls_key_file or acme".into());
        }
        Ok(())
    }

    fn check_limits(&self) -> Checked {
        let l = &self.limits;
        if l.unauthenticated_per_minute == 0 || l.wake_attempts_per_minute == 0 {
            return bad("unauthenticated_per_minute and wake_attempts_per_minute must be at least 1".into());
        }
        if l.header_timeout < Duration::from_millis(100) {
            return bad(format!("header_timeout must be at least 100ms (it is {})", format_duration(l.header_timeout)));
        }
        if l.max_connections_per_address == 0 {
            return bad("max_connections_per_address must be at least 1".into());
        }
        if l.max_websockets_per_session == 0 || l.max_header_bytes < 4096 {
            return bad("max_websockets_per_session must be at least 1 and max_header_bytes at least 4096".into());
        }
        if l.rate_limit_per_minute == 0 {
            return bad("rate_limit_per_minute must be at least 1".into());
        }
        if l.max_held_per_session == 0 || l.max_held_total == 0 {
            return bad("max_held_per_session and max_held_total must be at least 1".into());
        }
        if l.max_api_body_bytes < 1024 {
            return bad("max_api_body_bytes must be at least 1024".into());
        }
        Ok(())
    }

    fn check_webhook(&self) -> Checked {
        let w = &self.webhook;
        if w.url.is_some() && w.secret.as_ref().is_none_or(|s| s.len() < 16) {
            return bad("webhook_secret must be at least 16 characters when webhook_url is set".into());
        }
        if let Some(secret) = &w.secret {
            strong_secret("webhook_secret (WAKEWAY_WEBHOOK_SECRET)", secret)?;
        }
        if w.max_attempts == 0 || w.retry < Duration::from_millis(10) {
            return bad("webhook_max_attempts must be at least 1 and webhook_retry at least 10ms".into());
        }
        Ok(())
    }

    fn check_restore(&self) -> Checked {
        let r = &self.restore;
        if r.max_bytes == 0 || r.max_entries == 0 || r.max_ratio < 2 {
            return bad(
                "restore_max_bytes and restore_max_entries must be at least 1, restore_max_ratio at least 2".into()
            );
        }
        Ok(())
    }

    fn check_usage(&self) -> Checked {
        let u = &self.usage;
        let prices = u.running_per_hour.iter().map(|(tier, p)| (format!("cost_running_per_hour.{tier}"), *p));
        let others = [
            ("cost_sleeping_per_hour", u.sleeping_per_hour),
            ("cost_deleted_per_hour", u.deleted_per_hour),
            ("cost_baseline_per_hour", u.baseline_per_hour),
        ];
        for (name, price) in prices.chain(others.map(|(n, p)| (n.to_string(), p))) {
            if !price.is_finite() || price < 0.0 {
                return bad(format!("{name} must be a price per hour of at least 0 (it is {price})"));
            }
        }
        let default_tier = &self.workspaces.default_tier;
        if !u.running_per_hour.contains_key(default_tier) {
            return bad(format!(
                "cost_running_per_hour needs a price for the default tier {default_tier:?} (tiers without one cost what it costs)"
            ));
        }
        Ok(())
    }

    /// Every duration key at most [`MAX_DURATION`], so a deadline (a time plus a duration) always
    /// fits in a timestamp and no background computation can overflow.
    fn durations_are_bounded(&self) -> Checked {
        let (l, k) = (&self.lifecycle, &self.kubernetes);
        for (name, value) in [
            ("acme_renew_before", self.tls.acme_renew_before),
            ("acme_check_interval", self.tls.acme_check_interval),
            ("access_token_ttl", self.access.access_token_ttl),
            ("cookie_ttl", self.access.cookie_ttl),
            ("header_timeout", self.limits.header_timeout),
            ("lease_ttl", self.store.lease_ttl),
            ("idle_timeout", l.idle_timeout),
            ("sleep_to_delete", l.sleep_to_delete),
            ("backup_retention", l.backup_retention),
            ("max_idle_timeout", l.max_idle_timeout),
            ("max_sleep_to_delete", l.max_sleep_to_delete),
            ("webhook_retry", self.webhook.retry),
            ("warn_before_sleep", l.warn_before_sleep),
            ("warn_before_delete", l.warn_before_delete),
            ("sweep_interval", l.sweep_interval),
            ("checkpoint_interval", l.checkpoint_interval),
            ("max_awake_with_open_tab", l.max_awake_with_open_tab),
            ("hold_timeout", l.hold_timeout),
            ("start_timeout", l.start_timeout),
            ("stop_grace", l.stop_grace),
            ("backup_retry", l.backup_retry),
            ("shutdown_grace", self.server.shutdown_grace),
            ("kubernetes.job_timeout", k.job_timeout),
            ("kubernetes.job_ttl", k.job_ttl),
            ("kubernetes.stop_timeout", k.stop_timeout),
            ("kubernetes.unschedulable_grace", k.unschedulable_grace),
        ] {
            if value > MAX_DURATION {
                return bad(format!(
                    "{name} must be at most {} (it is {})",
                    format_duration(MAX_DURATION),
                    format_duration(value)
                ));
            }
        }
        Ok(())
    }

    fn check_oidc(&self) -> Checked {
        let o = &self.oidc;
        if self.access.workspace_auth != WorkspaceAuth::Oidc {
            return Ok(());
        }
        let Some((scheme, rest)) = o.issuer.split_once("://") else {
            return bad(format!(
                "workspace_auth = \"oidc\" needs oidc_issuer (WAKEWAY_OIDC_ISSUER), an http(s) URL such as \
                 \"https://accounts.google.com\" (it is {:?})",
                o.issuer
            ));
        };
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(char::is_whitespace) {
            return bad(format!(
                "oidc_issuer {:?} is not an http(s) URL; write it exactly as the provider's discovery document's \
                 \"issuer\" spells it (a trailing / matters)",
                o.issuer
            ));
        }
        if o.client_id.is_empty() || o.client_secret.is_empty() {
            return bad("workspace_auth = \"oidc\" needs oidc_client_id and oidc_client_secret \
                 (WAKEWAY_OIDC_CLIENT_ID, WAKEWAY_OIDC_CLIENT_SECRET) as registered with the provider"
                .into());
        }
        if self.server.public_url.is_none() {
            return bad("workspace_auth = \"oidc\" needs public_url (WAKEWAY_PUBLIC_URL): the provider sends users \
                 back to <public_url>/oauth/callback, which must be registered with it"
                .into());
        }
        if o.user_claim.is_empty() {
            return bad("oidc_user_claim must name an ID-token claim (e.g. \"email\")".into());
        }
        if o.login_ttl < Duration::from_secs(10) || o.session_ttl < Duration::from_secs(60) {
            return bad("oidc_login_ttl must be at least 10s and oidc_session_ttl at least 1m".into());
        }
        Ok(())
    }

    /// `users_can_create` needs the home page (oidc mode); its limit is a sane count.
    fn check_self_service(&self) -> Checked {
        let o = &self.oidc;
        if o.users_can_create && self.access.workspace_auth != WorkspaceAuth::Oidc {
            return bad("users_can_create needs workspace_auth = \"oidc\": users create workspaces on their home \
                 page, which only exists with a sign-in"
                .into());
        }
        if !(1..=MAX_WORKSPACES_PER_USER).contains(&o.max_workspaces_per_user) {
            return bad(format!(
                "max_workspaces_per_user must be between 1 and {MAX_WORKSPACES_PER_USER} (it is {}); to stop users \
                 creating workspaces, set users_can_create = false",
                o.max_workspaces_per_user
            ));
        }
        Ok(())
    }
}

/// The largest `max_workspaces_per_user` (a typo such as 30000 would let one person exhaust a node).
const MAX_WORKSPACES_PER_USER: usize = 100;

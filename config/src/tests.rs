use super::*;

/// Generated as the README says (`openssl rand -hex 32`): secrets that pass the strength check.
const GOOD_KEY: &str = "5e6b52afc43296ad52e4a7f5086382bb02a8041dda9325e090d540925b9a5c0b";
const GOOD_SECRET: &str = "f369d9b306eec671f704a74123cce5ac6bd4a52ef8d35b90e4a9b2c12ae979ca";
const GOOD_BASE64: &str = "6PAz6JWQ1zE1dgnLK+1mA1JcmioaHLjsL8LTzrALJ58=";

#[test]
fn defaults_are_the_documented_policy() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.lifecycle.idle_timeout, Duration::from_secs(15 * 60));
    assert_eq!(c.lifecycle.sleep_to_delete, Duration::from_secs(24 * 3600));
    assert_eq!(c.lifecycle.backup_retention, Duration::from_secs(30 * 86400));
    assert_eq!(c.limits.rate_limit_per_minute, 100);
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.domain, "localhost");
}

#[test]
fn required_env_names_override_their_keys() {
    let env = MapEnv::new([
        ("WAKEWAY_LISTEN", "0.0.0.0:9000"),
        ("WAKEWAY_DOMAIN", "preview.example.com"),
        ("WAKEWAY_API_KEY", GOOD_KEY),
        ("WAKEWAY_DATA_DIR", "/var/lib/wakeway"),
        ("WAKEWAY_WORKSPACE_COMMAND", "serve --port {port} {workspace}"),
        ("WAKEWAY_IDLE_TIMEOUT", "90s"),
        ("WAKEWAY_SLEEP_TO_DELETE", "2h"),
        ("WAKEWAY_BACKUP_RETENTION", "7d"),
        ("WAKEWAY_SWEEP_INTERVAL", "250ms"),
        ("WAKEWAY_RATE_LIMIT_PER_MINUTE", "5"),
        ("WAKEWAY_STOP_WORKSPACES_ON_EXIT", "false"),
        ("WAKEWAY_BOT_USER_AGENTS", "foo, bar"),
        ("PATH", "/usr/bin"),
    ]);
    let c = Config::load(None, &env).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(c.server.domain, "preview.example.com");
    assert_eq!(c.access.api_keys, vec![GOOD_KEY.to_string()]);
    assert_eq!(c.server.data_dir, PathBuf::from("/var/lib/wakeway"));
    assert_eq!(c.workspaces.command.as_deref(), Some("serve --port {port} {workspace}"));
    assert_eq!(c.lifecycle.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.lifecycle.sleep_to_delete, Duration::from_secs(7200));
    assert_eq!(c.lifecycle.backup_retention, Duration::from_secs(7 * 86400));
    assert_eq!(c.lifecycle.sweep_interval, Duration::from_millis(250));
    assert_eq!(c.limits.rate_limit_per_minute, 5);
    assert!(!c.workspaces.stop_workspaces_on_exit);
    assert_eq!(c.limits.bot_user_agents, vec!["foo".to_string(), "bar".to_string()]);
}

#[test]
fn env_wins_over_file_and_file_over_defaults() {
    let dir = std::env::temp_dir().join(format!("wakeway-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wakeway.toml");
    std::fs::write(&path, "idle_timeout = \"5m\"\ndomain = \"a.example\"\n[tiers.huge]\ncpu = 8\nmemory_mib = 16384\n")
        .unwrap();
    let c = Config::load(Some(&path), &MapEnv::new([("WAKEWAY_DOMAIN", "b.example")])).unwrap();
    assert_eq!(c.lifecycle.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.server.domain, "b.example");
    assert_eq!(c.workspaces.tiers["huge"].memory_mib, 16384);
    assert_eq!(c.workspaces.tiers["small"].memory_mib, 1024, "file tiers merge over the defaults");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn mistakes_are_named() {
    let err = Config::load(None, &MapEnv::new([("WAKEWAY_IDLE_TIMOUT", "5m")])).unwrap_err();
    assert!(err.to_string().contains("WAKEWAY_IDLE_TIMOUT") && err.to_string().contains("unknown"), "{err}");

    let err = Config::load(None, &MapEnv::new([("WAKEWAY_IDLE_TIMEOUT", "soon")])).unwrap_err();
    assert!(err.to_string().contains("15m"), "{err}");

    let err = Config::load(None, &MapEnv::new([("WAKEWAY_API_KEY", "short")])).unwrap_err();
    assert!(err.to_string().contains("16 characters"), "{err}");
    assert!(!err.to_string().contains("short\""), "the key itself is not echoed: {err}");

    let err = Config::from_toml("idle_timeout = \"5m\"\nidle_timout = \"1m\"\n").unwrap_err();
    assert!(err.contains("idle_timout"), "{err}");

    let err = Config::load(None, &MapEnv::new([("WAKEWAY_DOMAIN", "Bad_Domain")])).unwrap_err();
    assert!(err.to_string().contains("domain"), "{err}");

    let err = Config::load(None, &MapEnv::new([("WAKEWAY_DEFAULT_TIER", "tiny")])).unwrap_err();
    assert!(err.to_string().contains("default_tier"), "{err}");
}

#[test]
fn workspace_urls_follow_public_url() {
    let c = Config::default();
    assert_eq!(c.workspace_url("abc12345"), "http://vs-code-abc12345.localhost:8080");
    let with = |url: &str| Config::load(None, &MapEnv::new([("WAKEWAY_PUBLIC_URL", url)]));
    let c = with("https://preview.hyperbola.in").unwrap();
    assert_eq!(c.workspace_url("abc12345"), "https://vs-code-abc12345.preview.hyperbola.in");
    let c = with("https://preview.hyperbola.in:443/").unwrap();
    assert_eq!(c.workspace_url("abc12345"), "https://vs-code-abc12345.preview.hyperbola.in");
    let c = with("http://preview.hyperbola.in:8080").unwrap();
    assert_eq!(c.workspace_url("abc12345"), "http://vs-code-abc12345.preview.hyperbola.in:8080");
    let err = with("ftp://x").unwrap_err().to_string();
    assert!(err.contains("public_url \"ftp://x\" must look like http://host[:port]"), "{err}");
}

#[test]
fn durations_round_trip_in_short_form() {
    for (text, shown) in
        [("15m", "15m"), ("24h", "1d"), ("30d", "30d"), ("90s", "90s"), ("250ms", "250ms"), ("36h", "36h")]
    {
        let d = parse_duration(text).unwrap();
        assert_eq!(format_duration(d), shown);
        assert_eq!(parse_duration(shown).unwrap(), d);
    }
    assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
}

#[test]
fn masked_toml_hides_keys_and_parses_back() {
    let mut c = Config::default();
    c.access.api_keys = vec!["supersecretkey-0123456789".into()];
    let shown = c.to_masked_toml();
    assert!(!shown.contains("supersecretkey-0123456789"));
    assert!(shown.contains("idle_timeout = \"15m\""));
    let back = Config::from_toml(&shown).unwrap();
    assert_eq!(back.lifecycle.idle_timeout, c.lifecycle.idle_timeout);
}

#[test]
fn the_example_file_is_the_defaults() {
    let text = include_str!("../wakeway.example.toml");
    assert_eq!(Config::from_toml(text).unwrap(), Config::default());
}

#[test]
fn table_keys_are_overridable_one_by_one() {
    let dir = std::env::temp_dir().join(format!("wakeway-config-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wakeway.toml");
    std::fs::write(&path, "backend = \"kubernetes\"\n[kubernetes]\nimage = \"example/code-server:1\"\n").unwrap();
    let env = MapEnv::new([
        ("WAKEWAY_KUBERNETES_NAMESPACE", "workspaces"),
        ("WAKEWAY_KUBERNETES_PORT", "9000"),
        ("WAKEWAY_KUBERNETES_JOB_TIMEOUT", "10m"),
        ("WAKEWAY_KUBERNETES_ARGS", "--bind-addr,0.0.0.0:{port}"),
    ]);
    let c = Config::load(Some(&path), &env).unwrap();
    assert_eq!(c.workspaces.backend, BackendKind::Kubernetes);
    assert_eq!(c.kubernetes.namespace, "workspaces");
    assert_eq!(c.kubernetes.port, 9000);
    assert_eq!(c.kubernetes.job_timeout, Duration::from_secs(600));
    assert_eq!(c.kubernetes.args, vec!["--bind-addr".to_string(), "0.0.0.0:{port}".to_string()]);
    assert_eq!(c.kubernetes.image, "example/code-server:1", "the file's other keys are kept");
    assert_eq!(c.kubernetes.pvc_size, "5Gi", "unset keys keep their default");
    std::fs::remove_dir_all(dir).ok();

    let err = Config::load(None, &MapEnv::new([("WAKEWAY_KUBERNETES_NAMESPAC", "x")])).unwrap_err();
    assert!(err.to_string().contains("unknown"), "{err}");
    let err = Config::load(None, &MapEnv::new([("WAKEWAY_KUBERNETES_PORT", "http")])).unwrap_err();
    assert!(err.to_string().contains("kubernetes.port"), "{err}");
    let err = Config::load(
        None,
        &MapEnv::new([("WAKEWAY_BACKEND", "kubernetes"), ("WAKEWAY_KUBERNETES_NAMESPACE", "Not_A_Label")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("kubernetes.namespace"), "{err}");
}

#[test]
fn policy_bounds_and_webhooks_are_checked() {
    let err = Config::load(None, &MapEnv::new([("WAKEWAY_MAX_IDLE_TIMEOUT", "5m")])).unwrap_err();
    assert!(err.to_string().contains("max_idle_timeout"), "{err}");
    let err = Config::load(None, &MapEnv::new([("WAKEWAY_MAX_SLEEP_TO_DELETE", "1h")])).unwrap_err();
    assert!(err.to_string().contains("max_sleep_to_delete"), "{err}");
    let err = Config::load(None, &MapEnv::new([("WAKEWAY_WEBHOOK_URL", "https://hooks.example.com/w")])).unwrap_err();
    assert!(err.to_string().contains("webhook_secret"), "{err}");
    let err =
        Config::load(None, &MapEnv::new([("WAKEWAY_WEBHOOK_URL", "ftp://x"), ("WAKEWAY_WEBHOOK_SECRET", GOOD_SECRET)]))
            .unwrap_err();
    assert!(err.to_string().contains("webhook_url"), "{err}");
    let c = Config::load(
        None,
        &MapEnv::new([
            ("WAKEWAY_WEBHOOK_URL", "http://127.0.0.1:9/hook?x=1"),
            ("WAKEWAY_WEBHOOK_SECRET", GOOD_SECRET),
            ("WAKEWAY_WARN_BEFORE_SLEEP", "0s"),
        ]),
    )
    .unwrap();
    assert_eq!(c.lifecycle.warn_before_sleep, Duration::ZERO);
    assert!(!c.to_masked_toml().contains(GOOD_SECRET), "the webhook secret is masked");
}

/// `deploy/secrets.env.example` as shipped: `cp` + `kubectl apply -k` must not start with them.
#[test]
fn the_example_secrets_shipped_in_deploy_are_refused() {
    let example = include_str!("../../deploy/secrets.env.example");
    let vars: Vec<(&str, &str)> =
        example.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).collect();
    assert!(vars.len() >= 2, "{vars:?}");
    for (var, value) in vars {
        // Each placeholder alone (the others good), so each is refused on its own account.
        let mut env = MapEnv::new([("WAKEWAY_API_KEYS", GOOD_KEY), ("WAKEWAY_COOKIE_SECRET", GOOD_SECRET)]);
        env.0.insert(var.to_string(), value.to_string());
        let err = Config::load(None, &env).unwrap_err().to_string();
        assert!(err.contains(var), "{var}: the message names the variable: {err}");
        assert!(err.contains("placeholder") && err.contains("openssl rand -hex 32"), "{var}: {err}");
        assert!(!err.contains(value), "{var}: the value is not echoed: {err}");
    }
}

#[test]
fn low_entropy_secrets_are_refused_and_generated_ones_pass() {
    for var in ["WAKEWAY_API_KEY", "WAKEWAY_COOKIE_SECRET", "WAKEWAY_WEBHOOK_SECRET"] {
        for good in [GOOD_KEY, GOOD_BASE64] {
            Config::load(None, &MapEnv::new([(var, good)])).unwrap_or_else(|e| panic!("{var} = {good}: {e}"));
        }
        for bad in [
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "0123456789abcdef0123456789abcdef",
            "abcdefghijklmnopqrstuvwxyz0123456789",
            "my-own-secret-value-1234567890-abcdef",
        ] {
            let err = Config::load(None, &MapEnv::new([(var, bad)])).unwrap_err().to_string();
            let key = var.trim_start_matches("WAKEWAY_").to_lowercase().replace("api_key", "api_keys");
            assert!(err.contains(&key) && err.contains("openssl rand -hex 32"), "{var} = {bad}: {err}");
        }
    }
    // Long enough for the 16-character minimum, but a run: refused as predictable.
    let err = Config::load(None, &MapEnv::new([("WAKEWAY_API_KEY", "0123456789abcdef")])).unwrap_err().to_string();
    assert!(err.contains("predictable") && err.contains("key 1 of 1"), "{err}");
    // One weak key among good ones is named by its position (keys are never echoed).
    let keys = format!("{GOOD_KEY},{GOOD_SECRET},change-me-to-a-long-random-key");
    let err = Config::load(None, &MapEnv::new([("WAKEWAY_API_KEYS", keys.as_str())])).unwrap_err().to_string();
    assert!(err.contains("key 3 of 3") && !err.contains(GOOD_KEY), "{err}");
}

#[test]
fn replicas_sharing_redis_need_one_cookie_secret() {
    let redis = ("WAKEWAY_REDIS_URL", "redis://redis:6379/0");
    let token = ("WAKEWAY_WORKSPACE_AUTH", "token");
    let err = Config::load(None, &MapEnv::new([redis, token])).unwrap_err().to_string();
    assert!(err.contains("cookie_secret") && err.contains("replica") && err.contains("openssl rand"), "{err}");
    Config::load(None, &MapEnv::new([redis, token, ("WAKEWAY_COOKIE_SECRET", GOOD_SECRET)])).unwrap();
    // No cookies (workspace_auth = none), or one replica with its own data_dir: nothing to share.
    Config::load(None, &MapEnv::new([redis])).unwrap();
    Config::load(None, &MapEnv::new([token])).unwrap();
}

#[test]
fn the_workspace_environment_table_is_read_and_checked() {
    let c = Config::from_toml("[kubernetes]\nenv = { TZ = \"Europe/Paris\", HTTPS_PROXY = \"http://proxy:3128\" }\n")
        .unwrap();
    assert_eq!(c.kubernetes.env["TZ"], "Europe/Paris");
    assert_eq!(c.kubernetes.env.len(), 2);
    let env = MapEnv::new([("WAKEWAY_BACKEND", "kubernetes"), ("WAKEWAY_KUBERNETES_ENV", "LANG = \"C.UTF-8\"")]);
    let c = Config::load(None, &env).unwrap();
    assert_eq!(c.kubernetes.env, std::collections::BTreeMap::from([("LANG".to_string(), "C.UTF-8".to_string())]));
    let env =
        MapEnv::new([("WAKEWAY_BACKEND", "kubernetes"), ("WAKEWAY_KUBERNETES_ENV", "WAKEWAY_COOKIE_SECRET = \"x\"")]);
    let err = Config::load(None, &env).unwrap_err().to_string();
    assert!(err.contains("kubernetes.env") && err.contains("reserved"), "{err}");
}

#[test]
fn the_local_table_is_read_from_the_environment_and_checked() {
    let c = Config::load(
        None,
        &MapEnv::new([
            ("WAKEWAY_LOCAL_ISOLATION", "on"),
            ("WAKEWAY_LOCAL_UIDS", "300000-300999"),
            ("WAKEWAY_LOCAL_ENV", r#"HTTPS_PROXY = "http://proxy:3128", EDITOR = "vim""#),
        ]),
    )
    .unwrap();
    assert_eq!(c.local.isolation, crate::Isolation::On);
    assert_eq!(c.local.uid_range(), 300000..=300999);
    assert_eq!(c.local.env["HTTPS_PROXY"], "http://proxy:3128");
    assert_eq!(c.local.env.len(), 2);

    let refused = |vars: &[(&str, &str)]| {
        let env = MapEnv(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        Config::load(None, &env).unwrap_err().to_string()
    };
    let err = refused(&[("WAKEWAY_LOCAL_ENV", r#"WAKEWAY_API_KEY = "x""#)]);
    assert!(err.contains("reserved"), "{err}");
    let err = refused(&[("WAKEWAY_LOCAL_ENV", r#""A B" = "x""#)]);
    assert!(err.contains("not a variable name"), "{err}");
    for uids in ["0-100", "60000-70000", "5-4", "1000"] {
        let err = refused(&[("WAKEWAY_LOCAL_UIDS", uids)]);
        assert!(err.contains("local.uids"), "{uids}: {err}");
    }
    // Isolated workspaces have no TCP port: a command built around one is refused, with the fix.
    let err = refused(&[("WAKEWAY_LOCAL_ISOLATION", "on"), ("WAKEWAY_WORKSPACE_COMMAND", "srv --port {port}")]);
    assert!(err.contains("{socket}") && err.contains("isolation"), "{err}");
    let off = Config::load(
        None,
        &MapEnv::new([("WAKEWAY_LOCAL_ISOLATION", "off"), ("WAKEWAY_WORKSPACE_COMMAND", "srv --port {port}")]),
    );
    assert!(off.is_ok());
}

/// The message `validate` gives for `key = value` set through its environment variable.
fn refusal<const N: usize>(pairs: [(&str, &str); N]) -> String {
    match Config::load(None, &MapEnv::new(pairs)) {
        Err(ConfigError::Invalid(message)) => message,
        other => panic!("{pairs:?} must be refused, got {other:?}"),
    }
}

#[test]
fn backup_retention_is_at_least_a_day_and_at_least_sleep_to_delete() {
    let zero = refusal([("WAKEWAY_BACKUP_RETENTION", "0s")]);
    assert!(zero.contains("backup_retention must be at least 1d"), "{zero}");
    let short = refusal([("WAKEWAY_BACKUP_RETENTION", "23h")]);
    assert!(short.contains("backup_retention must be at least 1d (it is 23h)"), "{short}");
    let below = refusal([("WAKEWAY_BACKUP_RETENTION", "2d"), ("WAKEWAY_SLEEP_TO_DELETE", "3d")]);
    assert!(below.contains("backup_retention (2d) must be at least sleep_to_delete (3d)"), "{below}");
    let env = MapEnv::new([("WAKEWAY_BACKUP_RETENTION", "3d"), ("WAKEWAY_SLEEP_TO_DELETE", "3d")]);
    assert_eq!(Config::load(None, &env).unwrap().lifecycle.backup_retention, Duration::from_secs(3 * 86400));
}

#[test]
fn a_duration_too_large_for_a_deadline_is_refused_naming_its_key() {
    for (key, var) in [
        ("backup_retention", "WAKEWAY_BACKUP_RETENTION"),
        ("idle_timeout", "WAKEWAY_IDLE_TIMEOUT"),
        ("sweep_interval", "WAKEWAY_SWEEP_INTERVAL"),
        ("max_sleep_to_delete", "WAKEWAY_MAX_SLEEP_TO_DELETE"),
    ] {
        let message = refusal([(var, "1000000y")]);
        assert!(message.starts_with(&format!("{key} must be at most 36500d")), "{message}");
    }
    let mut c = Config::default();
    c.kubernetes.job_timeout = Duration::from_secs(u64::MAX);
    let message = c.validate().unwrap_err().to_string();
    assert!(message.contains("kubernetes.job_timeout must be at most 36500d"), "{message}");
    c.kubernetes.job_timeout = MAX_DURATION;
    c.validate().unwrap();
}

#[test]
fn prices_are_checked_naming_their_key_and_a_file_adds_to_the_default_prices() {
    for (var, value, key) in [
        ("WAKEWAY_COST_SLEEPING_PER_HOUR", "-0.5", "cost_sleeping_per_hour"),
        ("WAKEWAY_COST_BASELINE_PER_HOUR", "nan", "cost_baseline_per_hour"),
        ("WAKEWAY_COST_RUNNING_PER_HOUR", "small = -1.0", "cost_running_per_hour.small"),
    ] {
        let message = refusal([(var, value)]);
        assert!(message.starts_with(&format!("{key} must be a price per hour of at least 0")), "{message}");
    }
    let mut c = Config::default();
    c.usage.running_per_hour.remove("small");
    let message = c.validate().unwrap_err().to_string();
    assert!(message.contains("cost_running_per_hour needs a price for the default tier \"small\""), "{message}");

    let c = Config::from_toml("[cost_running_per_hour]\nhuge = 0.4\n").unwrap();
    assert_eq!(c.usage.running_price("huge", "small"), 0.4);
    assert_eq!(c.usage.running_price("large", "small"), 0.10, "the default prices stay");
    assert_eq!(c.usage.running_price("unpriced", "small"), 0.05, "a tier without a price costs the default tier's");
}

#[test]
fn oidc_needs_an_issuer_url_a_client_and_public_url() {
    let oidc = [("WAKEWAY_WORKSPACE_AUTH", "oidc")];
    assert!(refusal(oidc).contains("needs oidc_issuer (WAKEWAY_OIDC_ISSUER)"));
    let bad_url = refusal([("WAKEWAY_WORKSPACE_AUTH", "oidc"), ("WAKEWAY_OIDC_ISSUER", "ftp://idp")]);
    assert!(bad_url.contains("oidc_issuer \"ftp://idp\" is not an http(s) URL"), "{bad_url}");
    let issuer = ("WAKEWAY_OIDC_ISSUER", "https://idp.example.com");
    let no_client = refusal([("WAKEWAY_WORKSPACE_AUTH", "oidc"), issuer]);
    assert!(no_client.contains("needs oidc_client_id and oidc_client_secret"), "{no_client}");
    let client = [("WAKEWAY_OIDC_CLIENT_ID", "wakeway"), ("WAKEWAY_OIDC_CLIENT_SECRET", "s3cret-from-the-idp")];
    let no_public = refusal([("WAKEWAY_WORKSPACE_AUTH", "oidc"), issuer, client[0], client[1]]);
    assert!(no_public.contains("needs public_url (WAKEWAY_PUBLIC_URL)"), "{no_public}");
    let env = MapEnv::new([
        ("WAKEWAY_WORKSPACE_AUTH", "oidc"),
        issuer,
        client[0],
        client[1],
        ("WAKEWAY_PUBLIC_URL", "https://preview.example.com"),
        ("WAKEWAY_OIDC_ADMIN_USERS", "root@example.com, ops@example.com"),
    ]);
    let c = Config::load(None, &env).unwrap();
    assert_eq!(c.access.workspace_auth, WorkspaceAuth::Oidc);
    assert_eq!(c.oidc.user_claim, "email");
    assert_eq!(c.oidc.admin_users, ["root@example.com", "ops@example.com"]);
    let shown = c.to_masked_toml();
    assert!(!shown.contains("s3cret-from-the-idp") && shown.contains("oidc_client_secret = \"s3cr…-idp\""), "{shown}");
    // Other modes do not look at the oidc keys.
    Config::load(None, &MapEnv::new([("WAKEWAY_OIDC_ISSUER", "nonsense")])).unwrap();
}

#[test]
fn users_can_create_needs_oidc_and_a_sane_limit() {
    let c = Config::default();
    assert_eq!((c.oidc.users_can_create, c.oidc.max_workspaces_per_user), (false, 3), "off by default, 3 each");
    let token = refusal([("WAKEWAY_USERS_CAN_CREATE", "true")]);
    assert!(token.contains("users_can_create needs workspace_auth = \"oidc\""), "{token}");
    let oidc = [
        ("WAKEWAY_WORKSPACE_AUTH", "oidc"),
        ("WAKEWAY_OIDC_ISSUER", "https://idp.example.com"),
        ("WAKEWAY_OIDC_CLIENT_ID", "wakeway"),
        ("WAKEWAY_OIDC_CLIENT_SECRET", "s3cret-from-the-idp"),
        ("WAKEWAY_PUBLIC_URL", "https://preview.example.com"),
        ("WAKEWAY_USERS_CAN_CREATE", "true"),
    ];
    for (limit, ok) in [("0", false), ("1", true), ("100", true), ("101", false)] {
        let mut env = MapEnv::new(oidc);
        env.0.insert("WAKEWAY_MAX_WORKSPACES_PER_USER".into(), limit.into());
        match Config::load(None, &env) {
            Ok(c) => assert!(ok && c.oidc.users_can_create, "{limit} accepted"),
            Err(e) => {
                assert!(!ok, "{limit}: {e}");
                assert!(e.to_string().contains("max_workspaces_per_user must be between 1 and 100"), "{e}");
            }
        }
    }
    let file = Config::from_toml("users_can_create = true\nmax_workspaces_per_user = 5\n").unwrap();
    assert_eq!((file.oidc.users_can_create, file.oidc.max_workspaces_per_user), (true, 5));
}

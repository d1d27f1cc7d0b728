//! `wakeway serve` refuses to start with secrets anyone could know: the placeholders shipped in
//! `deploy/secrets.env.example`, guessable values, and replicas sharing Redis with no common
//! cookie secret. Each refusal names the setting and says how to make a good value.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::KEY;

/// Run `wakeway serve` with only `env` of wakeway's variables; its exit code and stderr. A
/// wakeway that starts anyway is killed after 30 s (and the test fails on the exit code).
fn serve(dir: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wakeway"));
    command.arg("serve").stdout(Stdio::null()).stderr(Stdio::piped());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("WAKEWAY_")) {
        command.env_remove(key);
    }
    let data = dir.join("data").display().to_string();
    command.envs([("WAKEWAY_LISTEN", "127.0.0.1:0"), ("WAKEWAY_DATA_DIR", data.as_str())]);
    let mut child = command.envs(env.iter().copied()).spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn example_secrets() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/secrets.env.example")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

#[test]
fn the_example_secrets_and_guessable_keys_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let example = example_secrets();
    assert!(example.len() >= 2);
    for (var, value) in &example {
        let (code, stderr) = serve(tmp.path(), &[(var.as_str(), value.as_str()), ("WAKEWAY_WORKSPACE_AUTH", "token")]);
        assert_eq!(code, Some(2), "{var} from secrets.env.example must stop wakeway:\n{stderr}");
        assert!(stderr.contains(var.as_str()) && stderr.contains("openssl rand -hex 32"), "{var}: {stderr}");
        assert!(!stderr.contains(value.as_str()), "{var}: the value is not echoed: {stderr}");
    }
    for weak in ["0123456789abcdef0123456789abcdef", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        let (code, stderr) = serve(tmp.path(), &[("WAKEWAY_API_KEY", weak)]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("api_keys") && stderr.contains("openssl rand -hex 32"), "{stderr}");
    }
}

#[test]
fn replicas_sharing_redis_without_one_cookie_secret_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    // Refused before Redis is contacted (nothing listens on port 9).
    let env =
        [("WAKEWAY_API_KEY", KEY), ("WAKEWAY_REDIS_URL", "redis://127.0.0.1:9/0"), ("WAKEWAY_WORKSPACE_AUTH", "token")];
    let (code, stderr) = serve(tmp.path(), &env);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cookie_secret") && stderr.contains("replica"), "{stderr}");
    assert!(!tmp.path().join("data/cookie-secret").exists(), "no secret of its own was generated");
}

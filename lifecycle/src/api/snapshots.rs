//! The API's answers pinned as text: every endpoint of the v3.1.0 handoff (and the ones wakeway
//! added), success and error bodies, with their field names, order and JSON types. A renamed,
//! reordered, retyped or removed field fails `every_answer_keeps_its_shape`; an intended change
//! is made by rewriting `snapshots.txt` (`WAKEWAY_UPDATE_SNAPSHOTS=1` writes what the API answers
//! now) and reading its diff.

use std::time::Duration;

use serde_json::Value;

use super::tests::{Harness, KEY, call, harness};

/// Values that differ from run to run (a random token, the process, the zip's bytes): replaced
/// by their JSON type, so the field and its type stay pinned.
const VOLATILE: &[&str] = &["pid", "version", "access_url", "sha256", "size"];

/// One request: method, path, body. `{uuid}` is the first session created, `{uuid2}` the second,
/// `{backup}` the backup the first one's deletion made, filled in as they become known. `WAIT`: a
/// minute passes (so backups get names of their own); `NOKEY` / `BADKEY`: sent without the key /
/// with a wrong one.
type Step = (&'static str, &'static str, &'static str);

/// v3.1.0's endpoints (create, status, sleep, wake, scale, delete, list, health) and wakeway's.
const ANSWERS: &[Step] = &[
    ("NOKEY GET", "/health", ""),
    ("NOKEY GET", "/metrics", ""),
    ("POST", "/session/create", r#"{"user_id":"user@example.com"}"#),
    ("POST", "/session/{uuid}/wake?wait=true", ""),
    ("GET", "/session/{uuid}/status", ""),
    ("POST", "/session/{uuid}/scale", r#"{"scale":"up"}"#),
    ("POST", "/session/{uuid}/sleep", ""),
    ("WAIT", "", ""),
    ("POST", "/session/{uuid}/wake", ""),
    ("POST", "/session/{uuid}/wake?wait=true", ""),
    ("POST", "/session/{uuid}/scale", r#"{"scale":"down"}"#),
    ("POST", "/session/{uuid}/token", ""),
    ("POST", "/session/{uuid}/revoke", ""),
    ("PATCH", "/session/{uuid}/policy", r#"{"idle_timeout":"30m","keep":true}"#),
    ("PATCH", "/session/{uuid}/policy", r#"{"idle_timeout":null,"keep":false}"#),
    ("GET", "/sessions", ""),
    ("WAIT", "", ""),
    ("DELETE", "/session/{uuid}", ""),
    ("GET", "/sessions?include_deleted=true", ""),
    ("GET", "/backups", ""),
    ("GET", "/backups/{backup}?verify=true", ""),
    ("PATCH", "/backups/{backup}", r#"{"keep":true}"#),
    ("GET", "/backups/{backup}/download", ""),
    ("WAIT", "", ""),
    ("POST", "/session/create", r#"{"user_id":"user@example.com","restore_from":"{backup}"}"#),
    ("POST", "/session/{uuid2}/wake?wait=true", ""),
    ("POST", "/session/{uuid2}/sleep", ""),
    ("WAIT", "", ""),
    ("POST", "/session/{uuid2}/restore", r#"{"backup":"{backup}"}"#),
];

/// Errors, endpoint by endpoint (after [`ANSWERS`]: `{uuid}` is deleted, `{uuid2}` asleep).
const ERRORS: &[Step] = &[
    ("NOKEY GET", "/sessions", ""),
    ("BADKEY GET", "/sessions", ""),
    ("GET", "/nope", ""),
    ("GET", "/session/create", ""),
    ("POST", "/session/create", ""),
    ("POST", "/session/create", "{\"user_id\":"),
    ("POST", "/session/create", "[1]"),
    ("POST", "/session/create", "{}"),
    ("POST", "/session/create", r#"{"user_id":null}"#),
    ("POST", "/session/create", r#"{"user_id":42}"#),
    ("POST", "/session/create", r#"{"user_id":" "}"#),
    ("POST", "/session/create", r#"{"user_id":"a","restore_from":7}"#),
    ("POST", "/session/create", r#"{"user_id":"a","restore_from":"../x"}"#),
    ("GET", "/session/abc/status", ""),
    ("GET", "/session/0badc0de/status", ""),
    ("POST", "/session/0badc0de/sleep", ""),
    ("POST", "/session/{uuid}/wake", ""),
    ("POST", "/session/0badc0de/wake?wait=maybe", ""),
    ("POST", "/session/{uuid2}/scale", r#"{"scale":"sideways"}"#),
    ("POST", "/session/{uuid2}/scale", r#"{"scale":1}"#),
    ("POST", "/session/{uuid2}/scale", "{}"),
    ("DELETE", "/session/0badc0de", ""),
    ("GET", "/sessions?include_deleted=maybe", ""),
    ("POST", "/session/0badc0de/token", ""),
    ("POST", "/session/0badc0de/revoke", ""),
    ("GET", "/backups?uuid=zz", ""),
    ("GET", "/backups/nope", ""),
    ("GET", "/backups/workspace-abc12345-20250101-120000", ""),
    ("GET", "/backups/workspace-abc12345-20250101-120000/download", ""),
    ("PATCH", "/backups/{backup}", "{}"),
    ("PATCH", "/backups/{backup}", r#"{"keep":1}"#),
    ("PATCH", "/backups/{backup}", r#"{"keep":true,"why":"x"}"#),
    ("POST", "/session/{uuid2}/restore", "{}"),
    ("POST", "/session/{uuid2}/restore", r#"{"backup":7}"#),
    ("POST", "/session/{uuid2}/restore", r#"{"backup":"nope"}"#),
    ("POST", "/session/{uuid2}/restore", r#"{"backup":"{backup}","force":true}"#),
    ("POST", "/session/{uuid2}/restore", r#"{"backup":"{backup}","skip_escaping_symlinks":"yes"}"#),
    ("PATCH", "/session/{uuid2}/policy", "{}"),
    ("PATCH", "/session/{uuid2}/policy", r#"{"idle_timeout":"99d"}"#),
    ("PATCH", "/session/{uuid2}/policy", r#"{"idle_timeout":"soon"}"#),
    ("PATCH", "/session/{uuid2}/policy", r#"{"idle_timeout":5}"#),
    ("PATCH", "/session/{uuid2}/policy", r#"{"keep":"yes"}"#),
    ("PATCH", "/session/{uuid2}/policy", r#"{"idle":"5m"}"#),
];

/// The transcript being written: one block per request.
struct Transcript<'a> {
    h: &'a Harness,
    text: String,
    /// What the placeholders stand for, as they become known.
    known: Vec<(&'static str, String)>,
}

impl Transcript<'_> {
    fn fill(&self, template: &str) -> String {
        self.known.iter().fold(template.to_string(), |text, (name, value)| text.replace(name, value))
    }

    /// Send a step and write it and its answer down (with the placeholders, not their values).
    async fn run(&mut self, (method, path, body): Step) {
        if method == "WAIT" {
            self.h.clock.advance(Duration::from_secs(60));
            return;
        }
        let (key, method) = match method.split_once(' ') {
            Some(("NOKEY", method)) => (None, method),
            Some((_, method)) => (Some("wrong-key-0123456789"), method),
            None => (Some(KEY), method),
        };
        let (status, json, headers) = call(&self.h.router, method, &self.fill(path), key, &self.fill(body)).await;
        self.learn(path, &json);
        let mut shown = json;
        mask(&mut shown);
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let body = if body.is_empty() { String::new() } else { format!(" {body}") };
        self.text.push_str(&format!("### {method} {path}{body}\n{} {content_type}\n", status.as_u16()));
        if content_type.starts_with("application/json") {
            self.text.push_str(&serde_json::to_string_pretty(&shown).unwrap());
            self.text.push('\n');
        }
        self.text.push('\n');
    }

    /// The ids an answer makes known: a created session's, a deletion's backup.
    fn learn(&mut self, path: &str, json: &Value) {
        if path == "/session/create" && json["uuid"].is_string() {
            let name = if self.known.iter().any(|(n, _)| *n == "{uuid}") { "{uuid2}" } else { "{uuid}" };
            self.known.push((name, json["uuid"].as_str().unwrap().to_string()));
        }
        if let Some(file) = json["backup"]["file"].as_str() {
            self.known.insert(0, ("{backup}", file.trim_end_matches(".zip").to_string()));
        }
    }

    /// The transcript, with session ids written as their names.
    fn finish(self) -> String {
        let ids = self.known.iter().filter(|(name, _)| name.starts_with("{uuid"));
        ids.fold(self.text, |text, (name, id)| text.replace(id.as_str(), name))
    }
}

/// Replace volatile values by their type: `"<string>"`, `"<number>"`.
fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if VOLATILE.contains(&k.as_str()) && !v.is_null() {
                    *v = Value::String(if v.is_number() { "<number>" } else { "<string>" }.into());
                } else {
                    mask(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

#[tokio::test]
async fn every_answer_keeps_its_shape() {
    let h = harness(1000).await;
    let mut t = Transcript { h: &h, text: String::new(), known: Vec::new() };
    for step in ANSWERS.iter().chain(ERRORS) {
        t.run(*step).await;
    }
    h.manager.stop_all().await;
    let text = t.finish();

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/snapshots.txt");
    if std::env::var_os("WAKEWAY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if let Some(line) = first_difference(&expected, &text) {
        let around = |t: &str| t.lines().skip(line.saturating_sub(3)).take(8).collect::<Vec<_>>().join("\n");
        panic!(
            "the API's answers changed at line {} of snapshots.txt\nexpected:\n{}\nactual:\n{}",
            line + 1,
            around(&expected),
            around(&text)
        );
    }
}

/// The first line (from 0) where `a` and `b` differ.
fn first_difference(a: &str, b: &str) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(a.lines().zip(b.lines()).position(|(x, y)| x != y).unwrap_or(a.lines().count().min(b.lines().count())))
}

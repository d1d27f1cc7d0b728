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

/// The transcript being written: one block per request.
struct Transcript<'a> {
    h: &'a Harness,
    text: String,
    /// Session ids and what they are written as (`{uuid}`, `{uuid2}`).
    ids: Vec<(String, String)>,
}

impl Transcript<'_> {
    /// Send a request and write it and its answer down; the answer's JSON is returned.
    async fn send(&mut self, method: &str, path: &str, body: &str) -> Value {
        self.send_with(method, path, Some(KEY), body).await
    }

    async fn send_with(&mut self, method: &str, path: &str, key: Option<&str>, body: &str) -> Value {
        let (status, json, headers) = call(&self.h.router, method, path, key, body).await;
        let mut shown = json.clone();
        mask(&mut shown);
        let mut block = format!("### {method} {path}");
        if !body.is_empty() {
            block.push(' ');
            block.push_str(body);
        }
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        block.push_str(&format!("\n{} {content_type}\n", status.as_u16()));
        if content_type.starts_with("application/json") {
            block.push_str(&serde_json::to_string_pretty(&shown).unwrap());
            block.push('\n');
        }
        self.text.push_str(&block);
        self.text.push('\n');
        json
    }

    fn name(&mut self, id: &str, name: &str) {
        self.ids.push((id.to_string(), name.to_string()));
    }

    /// The transcript, with session ids written as their names.
    fn finish(self) -> String {
        self.ids.iter().fold(self.text, |text, (id, name)| text.replace(id.as_str(), name))
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
    let mut t = Transcript { h: &h, text: String::new(), ids: Vec::new() };
    t.send_with("GET", "/health", None, "").await;
    t.send_with("GET", "/metrics", None, "").await;

    // v3.1.0: create, status, sleep, wake, scale, delete, list; then their errors.
    let created = t.send("POST", "/session/create", r#"{"user_id":"user@example.com"}"#).await;
    let id = created["uuid"].as_str().unwrap().to_string();
    t.name(&id, "{uuid}");
    t.send("POST", &format!("/session/{id}/wake?wait=true"), "").await;
    t.send("GET", &format!("/session/{id}/status"), "").await;
    t.send("POST", &format!("/session/{id}/scale"), r#"{"scale":"up"}"#).await;
    t.send("POST", &format!("/session/{id}/sleep"), "").await;
    h.clock.advance(Duration::from_secs(60));
    t.send("POST", &format!("/session/{id}/wake"), "").await;
    t.send("POST", &format!("/session/{id}/wake?wait=true"), "").await;
    t.send("POST", &format!("/session/{id}/scale"), r#"{"scale":"down"}"#).await;
    t.send("POST", &format!("/session/{id}/token"), "").await;
    t.send("POST", &format!("/session/{id}/revoke"), "").await;
    t.send("PATCH", &format!("/session/{id}/policy"), r#"{"idle_timeout":"30m","keep":true}"#).await;
    t.send("PATCH", &format!("/session/{id}/policy"), r#"{"idle_timeout":null,"keep":false}"#).await;
    t.send("GET", "/sessions", "").await;
    h.clock.advance(Duration::from_secs(60));
    let deleted = t.send("DELETE", &format!("/session/{id}"), "").await;
    let backup = deleted["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string();
    t.send("GET", "/sessions?include_deleted=true", "").await;

    // The backup catalog and restores.
    t.send("GET", "/backups", "").await;
    t.send("GET", &format!("/backups/{backup}?verify=true"), "").await;
    t.send("PATCH", &format!("/backups/{backup}"), r#"{"keep":true}"#).await;
    t.send("GET", &format!("/backups/{backup}/download"), "").await;
    h.clock.advance(Duration::from_secs(60));
    let restored = t
        .send("POST", "/session/create", &format!(r#"{{"user_id":"user@example.com","restore_from":"{backup}"}}"#))
        .await;
    let second = restored["uuid"].as_str().unwrap().to_string();
    t.name(&second, "{uuid2}");
    t.send("POST", &format!("/session/{second}/wake?wait=true"), "").await;
    t.send("POST", &format!("/session/{second}/sleep"), "").await;
    h.clock.advance(Duration::from_secs(60));
    t.send("POST", &format!("/session/{second}/restore"), &format!(r#"{{"backup":"{backup}"}}"#)).await;

    // Errors, endpoint by endpoint.
    t.send_with("GET", "/sessions", None, "").await;
    t.send_with("GET", "/sessions", Some("wrong-key-0123456789"), "").await;
    t.send("GET", "/nope", "").await;
    t.send("GET", "/session/create", "").await;
    t.send("POST", "/session/create", "").await;
    t.send("POST", "/session/create", "{\"user_id\":").await;
    t.send("POST", "/session/create", "[1]").await;
    t.send("POST", "/session/create", "{}").await;
    t.send("POST", "/session/create", r#"{"user_id":null}"#).await;
    t.send("POST", "/session/create", r#"{"user_id":42}"#).await;
    t.send("POST", "/session/create", r#"{"user_id":" "}"#).await;
    t.send("POST", "/session/create", r#"{"user_id":"a","restore_from":7}"#).await;
    t.send("POST", "/session/create", r#"{"user_id":"a","restore_from":"../x"}"#).await;
    t.send("GET", "/session/abc/status", "").await;
    t.send("GET", "/session/0badc0de/status", "").await;
    t.send("POST", "/session/0badc0de/sleep", "").await;
    t.send("POST", &format!("/session/{id}/wake"), "").await;
    t.send("POST", "/session/0badc0de/wake?wait=maybe", "").await;
    t.send("POST", &format!("/session/{second}/scale"), r#"{"scale":"sideways"}"#).await;
    t.send("POST", &format!("/session/{second}/scale"), r#"{"scale":1}"#).await;
    t.send("POST", &format!("/session/{second}/scale"), "{}").await;
    t.send("DELETE", "/session/0badc0de", "").await;
    t.send("GET", "/sessions?include_deleted=maybe", "").await;
    t.send("POST", "/session/0badc0de/token", "").await;
    t.send("POST", "/session/0badc0de/revoke", "").await;
    t.send("GET", "/backups?uuid=zz", "").await;
    t.send("GET", "/backups/nope", "").await;
    t.send("GET", "/backups/workspace-abc12345-20250101-120000", "").await;
    t.send("GET", "/backups/workspace-abc12345-20250101-120000/download", "").await;
    t.send("PATCH", &format!("/backups/{backup}"), "{}").await;
    t.send("PATCH", &format!("/backups/{backup}"), r#"{"keep":1}"#).await;
    t.send("PATCH", &format!("/backups/{backup}"), r#"{"keep":true,"why":"x"}"#).await;
    t.send("POST", &format!("/session/{second}/restore"), "{}").await;
    t.send("POST", &format!("/session/{second}/restore"), r#"{"backup":7}"#).await;
    t.send("POST", &format!("/session/{second}/restore"), r#"{"backup":"nope"}"#).await;
    t.send("POST", &format!("/session/{second}/restore"), &format!(r#"{{"backup":"{backup}","force":true}}"#)).await;
    t.send(
        "POST",
        &format!("/session/{second}/restore"),
        &format!(r#"{{"backup":"{backup}","skip_escaping_symlinks":"yes"}}"#),
    )
    .await;
    t.send("PATCH", &format!("/session/{second}/policy"), "{}").await;
    t.send("PATCH", &format!("/session/{second}/policy"), r#"{"idle_timeout":"99d"}"#).await;
    t.send("PATCH", &format!("/session/{second}/policy"), r#"{"idle_timeout":"soon"}"#).await;
    t.send("PATCH", &format!("/session/{second}/policy"), r#"{"idle_timeout":5}"#).await;
    t.send("PATCH", &format!("/session/{second}/policy"), r#"{"keep":"yes"}"#).await;
    t.send("PATCH", &format!("/session/{second}/policy"), r#"{"idle":"5m"}"#).await;
    h.manager.stop_all().await;
    let text = t.finish();

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/snapshots.txt");
    if std::env::var_os("WAKEWAY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != text {
        let first = expected.lines().zip(text.lines()).position(|(a, b)| a != b);
        let line = first.unwrap_or(expected.lines().count().min(text.lines().count()));
        let actual: Vec<&str> = text.lines().skip(line.saturating_sub(3)).take(8).collect();
        let wanted: Vec<&str> = expected.lines().skip(line.saturating_sub(3)).take(8).collect();
        panic!(
            "the API's answers changed at line {} of snapshots.txt\nexpected:\n{}\nactual:\n{}",
            line + 1,
            wanted.join("\n"),
            actual.join("\n")
        );
    }
}

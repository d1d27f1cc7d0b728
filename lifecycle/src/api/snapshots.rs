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

/// The pinned transcript, and the script it was written by: each block's `### ` line is a
/// request, sent in order: `[NOKEY |BADKEY ]METHOD PATH[ BODY]` (without the key / with a wrong
/// one), or `WAIT` (a minute passes, so backups get names of their own). `{uuid}` is the first
/// session created, `{uuid2}` the second, `{backup}` the backup the first one's deletion made,
/// filled in as they become known. The v3.1.0 endpoints come first, then wakeway's, then the
/// errors endpoint by endpoint.
const SNAPSHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/snapshots.txt");

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
    async fn run(&mut self, step: &str) {
        if step == "WAIT" {
            self.h.clock.advance(Duration::from_secs(60));
            self.text.push_str("### WAIT\n\n");
            return;
        }
        let (key, step) = match step.split_once(' ') {
            Some(("NOKEY", rest)) => (None, rest),
            Some(("BADKEY", rest)) => (Some("wrong-key-0123456789"), rest),
            _ => (Some(KEY), step),
        };
        let mut words = step.splitn(3, ' ');
        let (method, path, body) = (words.next().unwrap(), words.next().unwrap(), words.next().unwrap_or(""));
        let (status, json, headers) = call(&self.h.router, method, &self.fill(path), key, &self.fill(body)).await;
        self.learn(path, &json);
        let mut shown = json;
        mask(&mut shown);
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let body = if body.is_empty() { String::new() } else { format!(" {body}") };
        let key = match key {
            None => "NOKEY ",
            Some(KEY) => "",
            Some(_) => "BADKEY ",
        };
        self.text.push_str(&format!("### {key}{method} {path}{body}\n{} {content_type}\n", status.as_u16()));
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
    let expected = std::fs::read_to_string(SNAPSHOTS).unwrap();
    let h = harness(1000).await;
    let mut t = Transcript { h: &h, text: String::new(), known: Vec::new() };
    for step in expected.lines().filter_map(|line| line.strip_prefix("### ")) {
        t.run(step).await;
    }
    h.manager.stop_all().await;
    let text = t.finish();
    if std::env::var_os("WAKEWAY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(SNAPSHOTS, &text).unwrap();
        return;
    }
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

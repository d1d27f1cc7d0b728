//! `wakeway-testspace`: a small workspace server the black-box tests run instead of code-server.
//! It starts in milliseconds, writes one line per start to `--starts FILE`, and serves:
//!
//! - `GET /` (HTML), `GET /healthz` (JSON)
//! - `PUT /files/<path>` and `GET /files/<path>`: write/read files in the workspace folder
//! - `PUT /home/<path>` and `GET /home/<path>`: the same in its HOME (as code-server writes its
//!   settings there)
//! - `GET /headers`: the request headers it received, as JSON
//! - `GET /ws`: a WebSocket that echoes every message
//!
//! With `--requests FILE` it appends one line per request it receives (`METHOD PATH`), so a test
//! can tell what reached the workspace.
//!
//! Usage: `wakeway-testspace (--port PORT | --socket PATH) [--starts FILE] [--requests FILE] [--delay-ms N]
//! [--fail] WORKSPACE`
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

struct Args {
    port: u16,
    socket: Option<PathBuf>,
    starts: Option<PathBuf>,
    requests: Option<PathBuf>,
    delay: Duration,
    fail: bool,
    workspace: PathBuf,
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let mut out = Args {
        port: 0,
        socket: None,
        starts: None,
        requests: None,
        delay: Duration::ZERO,
        fail: false,
        workspace: PathBuf::from("."),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => out.port = args.next().and_then(|p| p.parse().ok()).expect("--port PORT"),
            "--starts" => out.starts = args.next().map(PathBuf::from),
            "--requests" => out.requests = args.next().map(PathBuf::from),
            "--delay-ms" => {
                out.delay = Duration::from_millis(args.next().and_then(|p| p.parse().ok()).expect("--delay-ms N"))
            }
            "--fail" => out.fail = true,
            "--socket" => out.socket = args.next().map(PathBuf::from),
            other => out.workspace = PathBuf::from(other),
        }
    }
    out
}

fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    rel.components().all(|c| matches!(c, Component::Normal(_))).then(|| root.join(rel))
}

async fn put_file(State(root): State<Arc<PathBuf>>, UrlPath(rel): UrlPath<String>, body: Bytes) -> Response {
    let Some(path) = safe_join(&root, &rel) else { return StatusCode::BAD_REQUEST.into_response() };
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&path, &body) {
        Ok(()) => (StatusCode::CREATED, format!("wrote {} bytes\n", body.len())).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn get_file(State(root): State<Arc<PathBuf>>, UrlPath(rel): UrlPath<String>) -> Response {
    let Some(path) = safe_join(&root, &rel) else { return StatusCode::BAD_REQUEST.into_response() };
    match std::fs::read(&path) {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn headers(headers: HeaderMap) -> axum::Json<BTreeMap<String, String>> {
    axum::Json(
        headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
    )
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    if let Some(starts) = &args.starts {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(starts).expect("starts file");
        writeln!(f, "{} {}", std::process::id(), args.port).expect("write starts file");
    }
    if args.fail {
        eprintln!("testspace: failing on purpose (--fail)");
        std::process::exit(3);
    }
    tokio::time::sleep(args.delay).await;
    let files = |root: PathBuf| Router::new().route("/{*path}", get(get_file).put(put_file)).with_state(Arc::new(root));
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| args.workspace.clone());
    let app = Router::new()
        .route("/", get(|| async { Html("<!doctype html><title>testspace</title><h1>testspace</h1>") }))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "alive" })) }))
        .route("/headers", get(headers))
        .route("/ws", get(ws))
        .nest("/files", files(args.workspace.clone()))
        .nest("/home", files(home));
    let app = match args.requests {
        Some(log) => {
            app.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
                let line = format!("{} {}\n", req.method(), req.uri());
                let log = log.clone();
                async move {
                    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&log) {
                        let _ = f.write_all(line.as_bytes());
                    }
                    next.run(req).await
                }
            }))
        }
        None => app,
    };
    if let Some(socket) = &args.socket {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the socket");
        eprintln!("testspace: serving {} on {}", args.workspace.display(), socket.display());
        axum::serve(listener, app).await.expect("serve");
    } else {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await.expect("bind");
        eprintln!("testspace: serving {} on port {}", args.workspace.display(), args.port);
        axum::serve(listener, app).await.expect("serve");
    }
}

//! Starts the real `wakeway` binary on an ephemeral port, with `wakeway-testspace` as the
//! workspace command, and talks to it with real HTTP and WebSocket clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

/// The API key every test sends: generated (`openssl rand -hex 32`), as wakeway refuses guessable keys.
pub const KEY: &str = "49cbe787f5feadea1da2c6dca33925d9976076f39774eab631df0a5a02e75254";

pub struct Wakeway {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
}

/// The HTTP clients here use rustls with ring, as wakeway does (process-wide, once).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The testspace binary copied where every workspace uid can run it: the build folder may lie
/// below a private one (a clone under /root, mode 0700).
pub fn testspace_binary() -> &'static Path {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wakeway-e2e-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("wakeway-testspace");
        std::fs::copy(env!("CARGO_BIN_EXE_wakeway-testspace"), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
}

/// Let workspace uids pass through `dir` (a test's private temporary folder) and write `starts`.
pub fn open_to_workspaces(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    writable_by_workspaces(&dir.join("starts"));
}

/// Create `file` (if missing) so that a workspace, under any uid, can append to it.
pub fn writable_by_workspaces(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::OpenOptions::new().create(true).append(true).open(file).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).unwrap();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn testspace_command(dir: &Path, extra: &str) -> String {
    format!(
        "exec {} --socket {{socket}} --starts {} {extra} {{workspace}}",
        testspace_binary().display(),
        dir.join("starts").display()
    )
}

impl Wakeway {
    /// Start wakeway in a fresh data folder with `env` on top of the test defaults.
    pub async fn start(env: &[(&str, &str)]) -> Wakeway {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut w = Wakeway::start_in(&dir, env).await;
        w._tmp = Some(tmp);
        w
    }

    /// Start wakeway on an existing data folder (restart tests). If the port picked for it was
    /// taken in the meantime by another test's process, it retries on another port.
    pub async fn start_in(dir: &Path, env: &[(&str, &str)]) -> Wakeway {
        Wakeway::start_with(dir, env, None).await
    }

    /// Start wakeway armed to abort at failpoint `name` (no core file).
    pub async fn start_armed(dir: &Path, env: &[(&str, &str)], name: &str) -> Wakeway {
        Wakeway::start_with(dir, env, Some(name)).await
    }

    async fn start_with(dir: &Path, env: &[(&str, &str)], failpoint: Option<&str>) -> Wakeway {
        install_crypto_provider();
        let fixed: Option<u16> =
            env.iter().find(|(k, _)| *k == "WAKEWAY_LISTEN").and_then(|(_, v)| v.rsplit(':').next()?.parse().ok());
        for attempt in 0.. {
            let port = fixed.unwrap_or_else(free_port);
            let mut w = Wakeway::spawn(dir, port, env, failpoint);
            match w.wait_healthy().await {
                Ok(()) => return w,
                Err(e) if fixed.is_none() && attempt < 4 && e.contains("cannot listen") => w.child = None,
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    fn spawn(dir: &Path, port: u16, env: &[(&str, &str)], failpoint: Option<&str>) -> Wakeway {
        let mut vars: Vec<(String, String)> = vec![
            ("WAKEWAY_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("WAKEWAY_DATA_DIR".into(), dir.join("data").display().to_string()),
            ("WAKEWAY_API_KEY".into(), KEY.into()),
            ("WAKEWAY_WORKSPACE_COMMAND".into(), testspace_command(dir, "")),
            ("WAKEWAY_SHUTDOWN_GRACE".into(), "0s".into()),
            ("WAKEWAY_STOP_GRACE".into(), "3s".into()),
            ("WAKEWAY_THREADS".into(), "2".into()),
        ];
        for (k, v) in env {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        // Workspaces run under uids of their own (the tests run as root, as CI does): they must
        // pass through the test folder to their own, and append to the shared `starts` file.
        open_to_workspaces(dir);
        // Everything that can fail comes before the spawn: a started child is always owned by a
        // `Wakeway`, whose drop stops it.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("wakeway.log")).unwrap();
        let mut command = match failpoint {
            None => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_wakeway"));
                c.arg("serve");
                c
            }
            Some(name) => {
                vars.push(("WAKEWAY_FAILPOINT".into(), name.into()));
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("ulimit -c 0; exec '{}' serve", env!("CARGO_BIN_EXE_wakeway")));
                c
            }
        };
        let child = command
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("WAKEWAY_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start wakeway");
        Wakeway { child: Some(child), port, dir: dir.to_owned(), _tmp: None, client }
    }

    /// Wait until *this* wakeway answers `/health` (its pid, not another test's instance that
    /// happens to hold the port), or panic with its log if it exits.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or_default();
        for _ in 0..300 {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("wakeway exited ({status}) before it was healthy; log:\n{}", self.log()));
            }
            if let Ok(r) = self.client.get(self.url("/health")).send().await
                && r.status() == 200
                && r.json::<serde_json::Value>().await.is_ok_and(|v| v["pid"] == pid)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("wakeway did not become healthy; log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wakeway.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn host(&self, id: &str) -> String {
        format!("vs-code-{id}.localhost:{}", self.port)
    }

    /// A request to the management API with the key.
    pub fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).header("x-api-key", KEY)
    }

    /// A request to session `id`'s workspace host.
    pub fn ws(&self, method: Method, id: &str, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).header("host", self.host(id))
    }

    pub async fn create(&self) -> String {
        let r =
            self.api(Method::POST, "/session/create").body(r#"{"user_id":"user@example.com"}"#).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["uuid"].as_str().unwrap().to_string()
    }

    pub async fn status(&self, id: &str) -> Value {
        self.api(Method::GET, &format!("/session/{id}/status")).send().await.unwrap().json().await.unwrap()
    }

    /// Poll status until `state` (panics with the log after `limit`).
    pub async fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let s = self.status(id).await;
            if s["state"] == state {
                return s;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("session {id} did not reach {state} within {limit:?}: {s}\nlog:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn sleep(&self, id: &str) {
        let r = self.api(Method::POST, &format!("/session/{id}/sleep")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// Workspace starts recorded by the testspace (one line each).
    pub fn starts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("starts")).map(|t| t.lines().count()).unwrap_or(0)
    }

    pub fn workspace_dir(&self, id: &str) -> PathBuf {
        self.dir.join("data/workspaces").join(id)
    }

    /// The workspace's HOME on the local backend.
    pub fn home_dir(&self, id: &str) -> PathBuf {
        self.dir.join("data/state").join(id)
    }

    /// The wakeway process id.
    /// Write `rel` into `id`'s workspace folder owned by the folder's owner (the workspace's uid
    /// when isolated), as if the workspace's user had written it.
    pub fn write_as_workspace(&self, id: &str, rel: &str, content: &str) {
        use std::os::unix::fs::MetadataExt;
        let dir = self.workspace_dir(id);
        let owner = std::fs::metadata(&dir).unwrap();
        let path = dir.join(rel);
        std::fs::write(&path, content).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.dir.join("data/backups")
    }

    /// `GET /backups<query>`: the list.
    pub async fn backups(&self, query: &str) -> Vec<Value> {
        let r = self.api(Method::GET, &format!("/backups{query}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["backups"].as_array().unwrap().clone()
    }

    /// Wait for a crash at a failpoint: the process must die of SIGABRT.
    pub fn wait_abort(&mut self, limit: Duration) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(
                    status.signal(),
                    Some(6),
                    "wakeway should abort at the failpoint: {status}; log:\n{}",
                    self.log()
                );
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("wakeway did not reach its failpoint within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn metrics(&self) -> String {
        self.client.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// SIGTERM and wait for exit (workspaces stopped if configured).
    pub fn stop(&mut self) {
        assert!(self.terminate(), "wakeway did not exit within 20 s of SIGTERM; log:\n{}", self.log());
    }

    /// SIGTERM, wait up to 20 s, then SIGKILL. True when it exited on its own.
    fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        for _ in 0..400 {
            if child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL: a crash. Workspace processes are left running.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Wakeway {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Processes whose working folder is `dir` (a workspace process left running).
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(dir) = dir.canonicalize() else { return Vec::new() };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect()
}

pub fn assert_status(got: StatusCode, want: u16, context: &str) {
    assert_eq!(got.as_u16(), want, "{context}");
}

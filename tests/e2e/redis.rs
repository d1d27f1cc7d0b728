//! Several replicas share one Redis (a real `redis-server` per test): activity anywhere keeps a
//! session awake, one start however the requests spread, the sweep moves when its holder dies,
//! and a Redis restart loses nothing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::harness::{KEY, Wakeway, free_port};

const LONG: Duration = Duration::from_secs(30);

pub(crate) struct Redis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    pub(crate) async fn start(dir: &Path) -> Redis {
        let mut redis = Redis { child: None, port: free_port(), dir: dir.to_owned() };
        redis.restart().await;
        redis
    }

    /// (Re)start on the same port, empty: no persistence.
    async fn restart(&mut self) {
        assert!(
            Path::new("/usr/bin/redis-server").exists(),
            "redis-server is missing: run scripts/install-test-deps.sh"
        );
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("redis.log")).unwrap();
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start");
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Redis {
    /// Empty the database (`FLUSHALL`) while it keeps running: every record is lost at once.
    async fn flush_all(&self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        conn.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n").await.unwrap();
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"+OK\r\n");
    }
}

fn replica<'a>(name: &'a str, url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("WAKEWAY_REDIS_URL", url),
        ("WAKEWAY_REPLICA_ID", name),
        ("WAKEWAY_SWEEP_INTERVAL", "200ms"),
        ("WAKEWAY_CHECKPOINT_INTERVAL", "300ms"),
        ("WAKEWAY_LEASE_TTL", "2s"),
    ];
    env.extend_from_slice(extra);
    env
}

/// The status of `id` once its record, lost with Redis' data, is rebuilt (404 until then).
async fn rebuilt_status(w: &Wakeway, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let r = w.api(Method::GET, &format!("/session/{id}/status")).send().await.unwrap();
        if r.status() == 200 {
            return r.json::<Value>().await.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "the session was not rebuilt:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn state(w: &Wakeway, id: &str) -> String {
    w.status(id).await["state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_on_activity_wakes_and_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path()).await;
    let url = redis.url();
    let a = Wakeway::start_in(tmp.path(), &replica("a", &url, &[("WAKEWAY_IDLE_TIMEOUT", "3s")])).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a takes the sweep lease first
    let b = Wakeway::start_in(tmp.path(), &replica("b", &url, &[("WAKEWAY_IDLE_TIMEOUT", "3s")])).await;
    let id = a.create().await;
    b.wait_state(&id, "running", LONG).await;

    // Traffic through B only, for twice the idle timeout: A's sweep must not sleep it.
    for _ in 0..20 {
        let r = b.ws(Method::GET, &id, "/headers").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(state(&a, &id).await, "running", "activity on B keeps the session awake for A's sweep");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Then idle: it sleeps (A's sweep), and B learns it.
    b.wait_state(&id, "sleeping", LONG).await;
    assert_eq!(a.starts(), 1, "{}", a.log());
    assert!(a.metrics().await.contains("wakeway_sleeps_total{reason=\"idle\"} 1"), "the leader slept it");
    assert!(!b.metrics().await.contains("wakeway_sleeps_total{reason=\"idle\"}"), "only the leader sweeps");

    // A wake through A is seen by B: no second start.
    assert_eq!(a.ws(Method::GET, &id, "/headers").send().await.unwrap().status(), 200);
    b.wait_state(&id, "running", LONG).await;
    assert_eq!(b.ws(Method::GET, &id, "/headers").send().await.unwrap().status(), 200);
    assert_eq!(a.starts(), 2);

    // 100 concurrent requests spread over both replicas to a sleeping session: one start.
    a.sleep(&id).await;
    b.wait_state(&id, "sleeping", LONG).await;
    let requests = (0..100).map(|i| {
        let req = if i % 2 == 0 { a.ws(Method::GET, &id, "/headers") } else { b.ws(Method::GET, &id, "/headers") };
        async move { req.send().await.map(|r| r.status().as_u16()) }
    });
    let results = futures::future::join_all(requests).await;
    assert!(results.iter().all(|r| matches!(r, Ok(200))), "{results:?}");
    assert_eq!(a.starts(), 3, "one start for 100 requests over two replicas");

    // A sleep decided on A while requests arrive on B: every request is served.
    let sleeper = {
        let client = a.client.clone();
        let url = a.url(&format!("/session/{id}/sleep"));
        tokio::spawn(async move { client.post(url).header("x-api-key", KEY).send().await.map(|r| r.status().as_u16()) })
    };
    let during = (0..20).map(|i| {
        let req = b.ws(Method::GET, &id, "/headers");
        async move {
            tokio::time::sleep(Duration::from_millis(i * 10)).await;
            req.send().await.map(|r| r.status().as_u16())
        }
    });
    let during = futures::future::join_all(during).await;
    assert_eq!(sleeper.await.unwrap().unwrap(), 200);
    assert!(during.iter().all(|r| matches!(r, Ok(200))), "no request is dropped by a sleep elsewhere: {during:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_moves_to_another_replica_when_its_holder_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path()).await;
    let url = redis.url();
    let mut a = Wakeway::start_in(tmp.path(), &replica("a", &url, &[("WAKEWAY_IDLE_TIMEOUT", "4s")])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = Wakeway::start_in(tmp.path(), &replica("b", &url, &[("WAKEWAY_IDLE_TIMEOUT", "4s")])).await;
    let id = a.create().await;
    b.wait_state(&id, "running", LONG).await;
    a.crash(); // SIGKILL: the lease is not released, it expires
    // B takes the lease within lease_ttl and sleeps the idle session, exactly once.
    b.wait_state(&id, "sleeping", LONG).await;
    assert!(b.metrics().await.contains("wakeway_sleeps_total{reason=\"idle\"} 1"), "B swept after A died");
    assert_eq!(b.starts(), 1);
    assert_eq!(b.ws(Method::GET, &id, "/headers").send().await.unwrap().status(), 200, "B wakes it");
    assert_eq!(b.starts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(tmp.path()).await;
    let url = redis.url();
    let a = Wakeway::start_in(tmp.path(), &replica("a", &url, &[("WAKEWAY_IDLE_TIMEOUT", "2s")])).await;
    let id = a.create().await;
    a.wait_state(&id, "running", LONG).await;
    a.ws(Method::PUT, &id, "/files/keep.txt").body("still here").send().await.unwrap();

    redis.stop();
    // Proxying goes on from memory; the API says the store is unavailable; /health shows it.
    let r = a.ws(Method::GET, &id, "/files/keep.txt").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = a.api(Method::GET, &format!("/session/{id}/status")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "store_unavailable");
    let health: Value = a.client.get(a.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!((health["status"].as_str(), health["store"]["status"].as_str()), (Some("degraded"), Some("unhealthy")));
    // Longer than idle_timeout without Redis: nothing is slept on stale data.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(a.ws(Method::GET, &id, "/files/keep.txt").send().await.unwrap().status(), 200);

    redis.restart().await; // empty: no persistence
    let status = rebuilt_status(&a, &id).await;
    assert_eq!(status["session"]["user_id"], "user@example.com", "rebuilt from the workspace's sidecar");
    let log = a.log();
    let rebuilt = log.lines().find(|l| l.contains("session record rebuilt from its workspace"));
    assert!(rebuilt.is_some_and(|l| l.contains("running")), "the running workspace is adopted, not restarted:\n{log}");
    assert!(a.workspace_dir(&id).join("keep.txt").exists(), "no workspace is deleted because its record vanished");
    assert_eq!(a.ws(Method::GET, &id, "/files/keep.txt").send().await.unwrap().text().await.unwrap(), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_link_minted_on_one_replica_works_on_another_once() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path()).await;
    let url = redis.url();
    // Replicas sharing Redis must share the cookie secret (wakeway refuses to start without one).
    let token = [
        ("WAKEWAY_WORKSPACE_AUTH", "token"),
        ("WAKEWAY_COOKIE_SECRET", "5e6b52afc43296ad52e4a7f5086382bb02a8041dda9325e090d540925b9a5c0b"),
    ];
    let a = Wakeway::start_in(tmp.path(), &replica("a", &url, &token)).await;
    let b = Wakeway::start_in(tmp.path(), &replica("b", &url, &token)).await;
    let r = a.api(Method::POST, "/session/create").body(r#"{"user_id":"owner@example.com"}"#).send().await.unwrap();
    let created: Value = r.json().await.unwrap();
    let id = created["uuid"].as_str().unwrap().to_string();
    let access = created["access_url"].as_str().unwrap();
    let path = access.split_once(&a.host(&id)).unwrap().1.to_string();
    b.wait_state(&id, "running", LONG).await;
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // Browser navigations (anything else leaves a sign-in link unused).
    let navigate =
        |w: &Wakeway| no_redirect.get(w.url(&path)).header("host", w.host(&id)).header("sec-fetch-mode", "navigate");
    let first = navigate(&b).send().await.unwrap();
    assert_eq!(first.status(), 302, "minted on A, redeemed on B");
    let cookie = first.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let again = navigate(&a).send().await.unwrap();
    assert_eq!(again.status(), 401, "used once, on any replica");
    // The cookie is signed with the shared secret: it opens the workspace on either replica.
    for w in [&a, &b] {
        let r = w.ws(Method::GET, &id, "/headers").header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Revoked on A: refused on A at once, and on B as soon as it reads the record.
    assert_eq!(a.api(Method::POST, &format!("/session/{id}/revoke")).send().await.unwrap().status(), 200);
    assert_eq!(a.ws(Method::GET, &id, "/headers").header("cookie", &cookie).send().await.unwrap().status(), 401);
    let deadline = tokio::time::Instant::now() + LONG;
    while b.ws(Method::GET, &id, "/headers").header("cookie", &cookie).send().await.unwrap().status() != 401 {
        assert!(tokio::time::Instant::now() < deadline, "replica B still takes a revoked cookie:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A session's policy survives the loss of its record: after `FLUSHALL` a kept session is
/// rebuilt kept, with its overrides, and is not deleted after `sleep_to_delete`; one that was not
/// kept is (the policy does run on rebuilt records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_session_stays_kept_after_redis_loses_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path()).await;
    let url = redis.url();
    let a = Wakeway::start_in(tmp.path(), &replica("a", &url, &[("WAKEWAY_SLEEP_TO_DELETE", "5s")])).await;
    let (kept, other) = (a.create().await, a.create().await);
    a.wait_state(&kept, "running", LONG).await;
    a.wait_state(&other, "running", LONG).await;
    let body = r#"{"idle_timeout": "30m", "keep": true}"#;
    let r = a.api(Method::PATCH, &format!("/session/{kept}/policy")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    a.ws(Method::PUT, &kept, "/files/keep.txt").body("still here").send().await.unwrap();
    a.sleep(&kept).await;
    a.sleep(&other).await;

    redis.flush_all().await;
    let status = rebuilt_status(&a, &kept).await;
    assert_eq!(status["session"]["policy"]["keep"], true, "rebuilt kept: {status}");
    assert_eq!(status["session"]["policy"]["idle_timeout"], "30m", "with its overrides: {status}");

    // The one that was not kept is rebuilt asleep and deleted after sleep_to_delete; the kept one,
    // rebuilt at the same time, is past that deadline too and stays.
    a.wait_state(&other, "deleted", LONG).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(state(&a, &kept).await, "sleeping", "kept: never deleted by the policy\n{}", a.log());
    assert!(a.workspace_dir(&kept).join("keep.txt").exists());
}

/// A restore holds the session's operation lease on the replica running it. That replica dies
/// mid-restore (failpoint): the other replica's sweep and a user's request through it wait for
/// the lease to expire, then finish the restore (the folder holds the backup, what it replaced is
/// in the pre-restore backup) and wake the workspace for that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_replica_died_is_finished_by_the_other_once_its_lease_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path()).await;
    let url = redis.url();
    let b = Wakeway::start_in(tmp.path(), &replica("b", &url, &[])).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // b takes the sweep lease first
    let mut a = Wakeway::start_armed(tmp.path(), &replica("a", &url, &[]), "restore.after_safety_backup").await;

    // A verified backup of one session, and another session (asleep) to restore it into.
    let source = b.create().await;
    b.wait_state(&source, "running", LONG).await;
    b.ws(Method::PUT, &source, "/files/restored.txt").body("from the backup").send().await.unwrap();
    let r = b.api(Method::DELETE, &format!("/session/{source}")).send().await.unwrap();
    let deleted: Value = r.json().await.unwrap();
    let backup = deleted["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string();
    let target = b.create().await;
    b.wait_state(&target, "running", LONG).await;
    b.ws(Method::PUT, &target, "/files/replaced.txt").body("before the restore").send().await.unwrap();
    b.sleep(&target).await;
    a.wait_state(&target, "sleeping", LONG).await;

    // The restore runs on A, which dies in the middle of it, holding the lease.
    let body = serde_json::json!({ "backup": backup }).to_string();
    let _ = a.api(Method::POST, &format!("/session/{target}/restore")).body(body).send().await;
    a.wait_abort(LONG);
    assert!(a.log().contains("failpoint restore.after_safety_backup reached"));

    // A user's request through B: answered once B has finished A's restore and woken it.
    let r = b.ws(Method::GET, &target, "/files/restored.txt").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", b.log());
    assert_eq!(r.text().await.unwrap(), "from the backup");
    let s = b.wait_state(&target, "running", LONG).await;
    assert_eq!(s["session"]["restored_from"], backup.as_str(), "{s}");
    assert!(!b.workspace_dir(&target).join("replaced.txt").exists(), "the folder holds the backup");
    let safety = s["session"]["pre_restore_backup"].as_str().expect("what it replaced was backed up first");
    let zip = std::fs::read(b.backup_dir().join(format!("{safety}.zip"))).unwrap();
    assert!(zip.windows(18).any(|w| w == b"before the restore"), "the replaced file is in the pre-restore backup");
}

/// A delete decided on A while the workspace runs under B (B woke it) and users keep coming
/// through B: A takes the operation lease, stops B's workspace, backs it up and deletes it; B's
/// requests during the delete wait for the lease or are refused, never restart the workspace,
/// and end in `410 gone`. Every file is in the verified backup, none is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_replica_while_the_other_serves_the_workspace_keeps_every_file() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path()).await;
    let url = redis.url();
    let a = Wakeway::start_in(tmp.path(), &replica("a", &url, &[])).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a takes the sweep lease first
    let b = Wakeway::start_in(tmp.path(), &replica("b", &url, &[])).await;

    // Woken through B: B started the workspace process and routes to it.
    let id = b.create().await;
    b.wait_state(&id, "running", LONG).await;
    a.wait_state(&id, "running", LONG).await;
    let r = b.ws(Method::PUT, &id, "/files/notes.txt").body("written through B").send().await.unwrap();
    assert_eq!(r.status(), 201);
    // Incompressible bytes make the backup take a while: the requests below meet it.
    let dir = b.workspace_dir(&id);
    let owner = std::fs::metadata(&dir).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let big: Vec<u8> = (0..48u32 << 17)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::os::unix::fs::chown(dir.join("big.bin"), Some(owner.uid()), Some(owner.gid())).unwrap();
    let pids = crate::harness::processes_in(&dir);
    assert!(!pids.is_empty(), "the workspace runs");
    let starts = a.starts();

    let deleting = {
        let req = a.api(Method::DELETE, &format!("/session/{id}"));
        tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    let deadline = tokio::time::Instant::now() + LONG;
    while state(&b, &id).await == "running" {
        assert!(tokio::time::Instant::now() < deadline, "the delete never began:\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Users keep coming through B while A stops, backs up and deletes.
    let mut seen = Vec::new();
    while !deleting.is_finished() {
        let r = b.ws(Method::GET, &id, "/files/notes.txt").send().await.unwrap();
        seen.push(r.status().as_u16());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deleted = deleting.await.unwrap();
    assert_eq!(deleted["status"], "deleted", "{deleted}\n{}", a.log());
    assert!(
        seen.iter().all(|s| [200, 410, 503].contains(s)),
        "requests during the delete are served, held or refused, never a proxy error: {seen:?}\n{}",
        b.log()
    );

    // B converges: gone, and nothing started again.
    let r = b.ws(Method::GET, &id, "/files/notes.txt").send().await.unwrap();
    assert_eq!(r.status(), 410, "{}", b.log());
    b.wait_state(&id, "deleted", LONG).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.starts(), starts, "no replica restarted the workspace\n{}\n{}", a.log(), b.log());
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "workspace process {pid} still runs: {stat}");
    }
    assert!(!dir.exists(), "the folder is gone");
    // Every file is in the backup the delete made, verified.
    let file = deleted["backup"]["file"].as_str().expect("deleted after a backup");
    let files = crate::tree::zip_root_files(&b.backup_dir().join(file), "workspace");
    assert_eq!(files["notes.txt"], b"written through B");
    assert!(files["big.bin"] == big, "the large file is whole in the backup");
}

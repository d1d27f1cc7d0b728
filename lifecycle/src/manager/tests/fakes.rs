//! In-memory fakes for the manager's unit tests: a store that keeps records with the same
//! compare-and-set rule as the real ones and can be made unavailable or beaten to a write by
//! "another replica", and a backend whose starts are scripted (start, fail, hang, panic).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wakeway_config::Tier;
use wakeway_proxy::Upstream;

use crate::backend::{Backend, BackendError, Started};
use crate::catalog::BackupReason;
use crate::restore::{Limits, Options, Report};
use crate::session::{BackupInfo, ObjectUids, Placement, Session};
use crate::store::{ActivityCheckpoint, MergedActivity, Store, StoreError};

type Interleaved = Box<dyn FnOnce(&mut Session) + Send>;

/// A session's latest activity, latest interaction and open connections by replica.
type Merged = (i64, i64, HashMap<String, usize>);

/// Session records and blobs in memory, written with compare-and-set on `version`.
pub struct FakeStore {
    shared: bool,
    records: Mutex<BTreeMap<String, Session>>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    /// While set, every call answers `Unavailable` (Redis gone).
    pub down: AtomicBool,
    /// `list` and `get` panic this many more times in all (a bug in a step of the background
    /// loop: the sweep reads every record with `list`, or the sessions due with `get`).
    pub read_panics: AtomicU32,
    /// Leases by name → holder (they never expire on their own: [`FakeStore::expire`] does it).
    leases: Mutex<HashMap<String, String>>,
    /// Applied to the stored record just before the next write of it lands: another replica
    /// wrote first, so that write is a compare-and-set conflict.
    interleaved: Mutex<Option<Interleaved>>,
    /// Merged activity by session: latest activity, latest interaction, open connections by
    /// replica (as the Redis store keeps it, without expiry).
    activity: Mutex<HashMap<String, Merged>>,
}

impl FakeStore {
    pub fn new(shared: bool) -> Self {
        FakeStore {
            shared,
            records: Mutex::default(),
            blobs: Mutex::default(),
            down: AtomicBool::new(false),
            read_panics: AtomicU32::new(0),
            leases: Mutex::default(),
            interleaved: Mutex::default(),
            activity: Mutex::default(),
        }
    }

    /// Another writer changes the record (with `change`) just before the manager's next write.
    pub fn before_next_put(&self, change: impl FnOnce(&mut Session) + Send + 'static) {
        *self.interleaved.lock().unwrap() = Some(Box::new(change));
    }

    /// The stored record of `id`, read directly.
    pub fn record(&self, id: &str) -> Session {
        self.records.lock().unwrap().get(id).cloned().expect("a stored record")
    }

    /// Panic if [`FakeStore::read_panics`] says so.
    fn panic_if_told(&self) {
        if self.read_panics.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            panic!("the fake store's read panicked");
        }
    }

    /// Store `s` as it is (a record written before this replica started).
    pub fn seed(&self, mut s: Session) {
        s.version = 1;
        self.records.lock().unwrap().insert(s.uuid.clone(), s);
    }

    /// Another replica (`holder`) takes the lease `name`.
    pub fn hold(&self, name: &str, holder: &str) {
        self.leases.lock().unwrap().insert(name.into(), holder.into());
    }

    /// The lease `name` expires (its holder died).
    pub fn expire(&self, name: &str) {
        self.leases.lock().unwrap().remove(name);
    }

    /// Who holds the lease `name`.
    pub fn holder(&self, name: &str) -> Option<String> {
        self.leases.lock().unwrap().get(name).cloned()
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the fake store is down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FakeStore {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.up()?;
        self.panic_if_told();
        Ok(self.records.lock().unwrap().get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<Session>, StoreError> {
        self.up()?;
        self.panic_if_told();
        Ok(self.records.lock().unwrap().values().cloned().collect())
    }

    async fn put(&self, session: &Session) -> Result<Session, StoreError> {
        self.up()?;
        let mut records = self.records.lock().unwrap();
        if let Some(change) = self.interleaved.lock().unwrap().take()
            && let Some(stored) = records.get_mut(&session.uuid)
        {
            change(stored);
            stored.version += 1;
        }
        let found = records.get(&session.uuid).map(|s| s.version);
        if found.unwrap_or(0) != session.version {
            return Err(StoreError::Conflict { id: session.uuid.clone(), expected: session.version, found });
        }
        let mut next = session.clone();
        next.version += 1;
        records.insert(next.uuid.clone(), next.clone());
        Ok(next)
    }

    async fn remove(&self, id: &str, version: u64) -> Result<(), StoreError> {
        self.up()?;
        let mut records = self.records.lock().unwrap();
        let found = records.get(id).map(|s| s.version);
        if found != Some(version) {
            return Err(StoreError::Conflict { id: id.into(), expected: version, found });
        }
        records.remove(id);
        Ok(())
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.up()?;
        Ok(self.blobs.lock().unwrap().get(key).cloned())
    }

    async fn put_blob(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.up()?;
        self.blobs.lock().unwrap().insert(key.into(), value.to_vec());
        Ok(())
    }

    async fn take_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.up()?;
        Ok(self.blobs.lock().unwrap().remove(key))
    }

    async fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.up()?;
        Ok(self.blobs.lock().unwrap().keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    fn shared(&self) -> bool {
        self.shared
    }

    async fn merge_activity(
        &self,
        batch: &[ActivityCheckpoint],
        _now_ms: i64,
        _ttl: std::time::Duration,
    ) -> Result<Vec<MergedActivity>, StoreError> {
        self.up()?;
        let mut all = self.activity.lock().unwrap();
        let merged = batch.iter().map(|c| {
            let (activity, interaction, open) = all.entry(c.id.clone()).or_default();
            *activity = (*activity).max(c.last_activity_ms);
            *interaction = (*interaction).max(c.last_interaction_ms);
            open.insert(c.replica.clone(), c.open_connections);
            MergedActivity {
                id: c.id.clone(),
                last_activity_ms: *activity,
                last_interaction_ms: *interaction,
                open_connections: open.values().sum(),
            }
        });
        Ok(merged.collect())
    }

    async fn lease(&self, name: &str, holder: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        self.up()?;
        let mut leases = self.leases.lock().unwrap();
        Ok(leases.entry(name.into()).or_insert_with(|| holder.into()) == holder)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.up()?;
        let mut leases = self.leases.lock().unwrap();
        if leases.get(name).is_some_and(|h| h == holder) {
            leases.remove(name);
        }
        Ok(())
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.up()
    }
}

/// How the scripted backend answers the next start.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// It answers at once.
    Answers,
    /// It fails with this message.
    Fails(&'static str),
    /// It never answers: the start fails at its deadline (`start_timeout`).
    Hangs,
    /// The backend panics (a bug).
    Panics,
}

/// Workspaces that are only entries in a table; starts follow a script (then answer).
#[derive(Default)]
pub struct ScriptedBackend {
    starts: Mutex<VecDeque<Start>>,
    running: Mutex<HashMap<String, Placement>>,
    next_pid: AtomicU32,
    /// What was asked, in order: `start <id>`, `stop <id>`, `backup <id> <reason>`, ….
    calls: Mutex<Vec<String>>,
}

impl ScriptedBackend {
    /// Answer the next starts like this, in order.
    pub fn script(&self, starts: &[Start]) {
        self.starts.lock().unwrap().extend(starts.iter().copied());
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// How many calls began with `verb`.
    pub fn count(&self, verb: &str) -> usize {
        self.calls().iter().filter(|c| c.split(' ').next() == Some(verb)).count()
    }

    fn call(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }
}

#[async_trait]
impl Backend for ScriptedBackend {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn create(&self, session: &Session) -> Result<Option<ObjectUids>, BackendError> {
        self.call(format!("create {}", session.uuid));
        Ok(None)
    }

    async fn start(
        &self,
        session: &Session,
        _tier: &Tier,
        deadline: tokio::time::Instant,
    ) -> Result<Started, BackendError> {
        self.call(format!("start {}", session.uuid));
        let next = self.starts.lock().unwrap().pop_front().unwrap_or(Start::Answers);
        match next {
            Start::Answers => {}
            Start::Fails(why) => return Err(BackendError::Start(why.into())),
            Start::Hangs => {
                tokio::time::sleep_until(deadline).await;
                return Err(BackendError::Start("it did not answer within start_timeout".into()));
            }
            Start::Panics => panic!("the scripted backend panics in start (a test of a bug)"),
        }
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        let placement =
            Placement::Local { pid, start_ticks: 1, port: 20_000 + pid as u16 % 10_000, socket: None, uid: None };
        self.running.lock().unwrap().insert(session.uuid.clone(), placement.clone());
        Ok(Started { addr: placement.upstream(), placement, objects: None, phases: Vec::new() })
    }

    async fn stop(&self, session: &Session) -> Result<(), BackendError> {
        self.call(format!("stop {}", session.uuid));
        self.running.lock().unwrap().remove(&session.uuid);
        Ok(())
    }

    async fn find_running(&self, session: &Session) -> Option<Upstream> {
        if !self.is_alive(session) {
            return None;
        }
        session.placement.as_ref().map(Placement::upstream)
    }

    fn is_alive(&self, session: &Session) -> bool {
        session.placement.is_some() && self.running.lock().unwrap().get(&session.uuid) == session.placement.as_ref()
    }

    async fn backup(&self, s: &Session, now: DateTime<Utc>, why: BackupReason) -> Result<BackupInfo, BackendError> {
        self.call(format!("backup {} {why}", s.uuid));
        Ok(BackupInfo {
            file: crate::backup::backup_file_name(&s.uuid, now),
            size: 22,
            sha256: "0".repeat(64),
            entries: 0,
            content_bytes: 0,
            verified_at: now,
            skipped: Vec::new(),
        })
    }

    async fn restore(
        &self,
        session: &Session,
        zip: &Path,
        _limits: Limits,
        _options: Options,
    ) -> Result<Report, BackendError> {
        let name = zip.file_name().unwrap_or_default().to_string_lossy();
        self.call(format!("restore {} {name}", session.uuid));
        Ok(Report { files: 1, ..Report::default() })
    }

    async fn clean_interrupted_restore(&self, session: &Session) -> Result<(), BackendError> {
        self.call(format!("clean {}", session.uuid));
        Ok(())
    }

    async fn destroy(&self, session: &Session) -> Result<(), BackendError> {
        self.call(format!("destroy {}", session.uuid));
        Ok(())
    }
}

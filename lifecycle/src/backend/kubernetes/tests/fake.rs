//! An in-process fake Kubernetes API server (axum on an ephemeral port) serving exactly what the
//! backend uses, with the API server's semantics that matter to it: server-side apply (field
//! manager and force required; a second manager's annotations kept by the first's applies), resourceVersions and watch streams that resume from one, label
//! and field selectors, the `scale` subresource, delete preconditions (409 on a UID mismatch,
//! dry runs), and small stand-ins for the controllers and the kubelet: a Deployment controller
//! (Recreate: pods of an old template go first) that runs a new pod's `wakeway migrate-volume`
//! init container for real on the folder standing for its PVC, and a Job controller that really
//! runs the init container and then `wakeway backup` / `wakeway restore` (the library calls they
//! make) and serves the JSON line as the pod log.
//! Every request is recorded for assertions, and a test can hold back watch events (a watcher
//! that lags behind the API server, as a real one can).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::super::objects::{DURABLE_MANAGER, FIELD_MANAGER};

/// What a backup Job that reports success did to its zip behind wakeway's back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tamper {
    /// The zip is not on the backup volume.
    Missing,
    /// The zip lost its second half (the Job reports the whole size and SHA-256).
    Truncated,
    /// The zip is whole, the reported SHA-256 is another one.
    WrongSha256,
    /// A byte inside an entry's compressed data is flipped; size and SHA-256 are reported as the
    /// file has them now, so only the entries' CRC-32 can tell.
    FlippedByte,
}

/// What the Job controller does with a new Job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobMode {
    /// Run `wakeway backup` for real on the PVC's folder.
    Run,
    /// Run it, then damage the result as `Tamper` says and still report success.
    Tamper(Tamper),
    /// The backup command fails with this message.
    Fail(String),
    /// Never finishes; `activeDeadlineSeconds` fails it (DeadlineExceeded).
    Hang,
    /// Never finishes and ignores the deadline (a stuck controller).
    Stuck,
}

/// How new workspace pods come up.
#[derive(Debug, Clone, PartialEq)]
pub enum PodMode {
    /// Running and Ready with `pod_ip`.
    Ready,
    /// Running, container waiting in CrashLoopBackOff.
    CrashLoop,
    /// Pending: the scheduler finds no node (`PodScheduled=False`, `Unschedulable`).
    Unschedulable,
}

/// The scheduler's message of `PodMode::Unschedulable`: kube-scheduler v1.36.2's own words for a
/// pod whose CPU request no node has (seen on a real control plane).
pub const NO_NODE: &str = "0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
    /// (API group, resource[/subresource], verb) as RBAC sees it.
    pub rbac: (String, String, String),
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

pub struct State {
    rv: u64,
    seq: u64,
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Event>,
    pub requests: Vec<Recorded>,
    logs: HashMap<String, String>,
    pub pod_ip: String,
    pub pod_mode: PodMode,
    pub job_mode: JobMode,
    /// When set, the ReplicaSet cannot create pods: the API server refuses them with this message
    /// (quota, admission, missing service account), which the Deployment controller reports as
    /// the Deployment's `ReplicaFailure` condition.
    pub create_failure: Option<String>,
    /// Writes to `events` are refused (403), as without the RBAC rule.
    pub refuse_events: bool,
    /// PVC name → the folder standing for its volume.
    pub volumes: HashMap<String, PathBuf>,
    /// When set, a new PVC gets an empty folder here as its volume (dynamic provisioning).
    pub provision_into: Option<PathBuf>,
    /// Where `/backups` of a Job is.
    pub backup_dir: PathBuf,
    /// Backup Jobs that started while a workspace pod of the same session existed.
    pub rwo_violations: u32,
    /// The `migrate-volume` init containers run: (pod, claim), in order.
    pub migrations: Vec<(String, String)>,
    /// Authorization checks beyond the request's own verb: an apply that creates an object is
    /// also authorized as `create` by the API server.
    extra_rbac: Vec<(String, String, String)>,
}

pub struct Fake {
    pub url: String,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
    hold: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
    /// Watch streams deliver no event with a resourceVersion above this (until it is raised).
    hold: Arc<tokio::sync::watch::Sender<Option<u64>>>,
}

const NAMESPACE: &str = "wakeway";

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "pods" => ("v1", "Pod"),
        "services" => ("v1", "Service"),
        "persistentvolumeclaims" => ("v1", "PersistentVolumeClaim"),
        "deployments" => ("apps/v1", "Deployment"),
        "jobs" => ("batch/v1", "Job"),
        "events" => ("events.k8s.io/v1", "Event"),
        _ => ("v1", "Unknown"),
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default()
}

/// `a=b,c==d` (the only selectors the backend sends).
fn matches_labels(selector: Option<&String>, object: &Value) -> bool {
    let Some(selector) = selector else { return true };
    let labels = labels_of(object);
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term.split_once("==").or_else(|| term.split_once('=')).expect("equality selectors only");
        labels.get(k).map(String::as_str) == Some(v)
    })
}

fn matches_fields(selector: Option<&String>, object: &Value) -> bool {
    let Some(selector) = selector else { return true };
    selector.split(',').all(|term| match term.split_once('=') {
        Some(("metadata.name", name)) => object["metadata"]["name"] == name,
        _ => panic!("unsupported field selector {term}"),
    })
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn new_uid(&mut self) -> String {
        self.seq += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.seq)
    }

    fn emit(&mut self, events: &broadcast::Sender<Event>, resource: &str, kind: &'static str, object: Value) {
        let event = Event { rv: self.rv, resource: resource.into(), kind, object };
        self.history.push(event.clone());
        let _ = events.send(event);
    }

    /// Store `object` (new or changed) with a fresh resourceVersion and emit its event.
    fn put(&mut self, events: &broadcast::Sender<Event>, resource: &str, mut object: Value) -> Value {
        let name = object["metadata"]["name"].as_str().expect("named").to_string();
        let key = (resource.to_string(), name);
        let existed = self.objects.contains_key(&key);
        if !existed && object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(self.new_uid());
            if object["metadata"]["creationTimestamp"].is_null() {
                object["metadata"]["creationTimestamp"] = json!(format!("2026-01-01T00:00:{:02}Z", self.seq % 60));
            }
        }
        let (api_version, kind) = kind_of(resource);
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        object["metadata"]["namespace"] = json!(NAMESPACE);
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(key, object.clone());
        self.emit(events, resource, if existed { "MODIFIED" } else { "ADDED" }, object.clone());
        object
    }

    fn remove(&mut self, events: &broadcast::Sender<Event>, resource: &str, name: &str) -> Option<Value> {
        let mut object = self.objects.remove(&(resource.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.emit(events, resource, "DELETED", object.clone());
        Some(object)
    }

    fn get(&self, resource: &str, name: &str) -> Option<Value> {
        self.objects.get(&(resource.to_string(), name.to_string())).cloned()
    }

    fn list(&self, resource: &str) -> Vec<Value> {
        self.objects.iter().filter(|((r, _), _)| r == resource).map(|(_, o)| o.clone()).collect()
    }

    /// The Deployment controller: pods of another template go first (Recreate), then the count
    /// is brought to `spec.replicas`.
    fn reconcile_deployment(&mut self, events: &broadcast::Sender<Event>, name: &str) {
        let deployment = self.get("deployments", name);
        let (replicas, template, selector) = match &deployment {
            Some(d) => (
                d["spec"]["replicas"].as_i64().unwrap_or(1) as usize,
                d["spec"]["template"].clone(),
                d["spec"]["selector"]["matchLabels"].clone(),
            ),
            None => (0, Value::Null, Value::Null),
        };
        let hash = format!("{:08x}", crc32fast::hash(template.to_string().as_bytes()));
        let prefix = format!("{name}-");
        let mine: Vec<Value> = self
            .list("pods")
            .into_iter()
            .filter(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .filter(|p| labels_of(p).get("app.kubernetes.io/name").map(String::as_str) == Some("workspace"))
            .collect();
        let mut current = Vec::new();
        for pod in mine {
            let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
            if labels_of(&pod).get("pod-template-hash") == Some(&hash) {
                current.push(pod_name);
            } else {
                self.remove(events, "pods", &pod_name);
            }
        }
        while current.len() > replicas {
            let pod_name = current.pop().unwrap();
            self.remove(events, "pods", &pod_name);
        }
        if let Some(deployment) = deployment {
            self.report_replica_failure(events, deployment, current.len() < replicas);
        }
        if self.create_failure.is_some() {
            return;
        }
        while current.len() < replicas {
            self.seq += 1;
            let pod_name = format!("{name}-{hash}-{:05x}", self.seq);
            let mut labels: BTreeMap<String, String> = serde_json::from_value(selector.clone()).unwrap_or_default();
            labels.extend(
                serde_json::from_value::<BTreeMap<String, String>>(template["metadata"]["labels"].clone())
                    .unwrap_or_default(),
            );
            labels.insert("pod-template-hash".into(), hash.clone());
            // The kubelet runs the init containers first; a failing one keeps the pod from starting.
            if let Err(why) = self.run_init_containers(&pod_name, &template["spec"]) {
                let pod = json!({
                    "metadata": {"name": pod_name, "labels": labels, "annotations": template["metadata"]["annotations"].clone()},
                    "spec": template["spec"].clone(),
                    "status": {"phase": "Pending", "podIP": self.pod_ip,
                        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotInitialized"}],
                        "initContainerStatuses": [{
                            "name": "migrate-volume", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
                            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": why}},
                        }]},
                });
                self.put(events, "pods", pod);
                current.push(pod_name);
                continue;
            }
            // Scheduled, started and Ready at once: the kubelet's times, to the second.
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let status = self.new_pod_status(&now);
            let pod = json!({
                "metadata": {
                    "name": pod_name, "labels": labels, "creationTimestamp": now,
                    "annotations": template["metadata"]["annotations"].clone(),
                },
                "spec": template["spec"].clone(),
                "status": status,
            });
            self.put(events, "pods", pod);
            current.push(pod_name);
        }
    }
}

impl State {
    /// The status of a new workspace pod as `pod_mode` says, the kubelet's times `now`.
    fn new_pod_status(&self, now: &str) -> Value {
        match self.pod_mode {
            PodMode::Ready => json!({
                "phase": "Running", "podIP": self.pod_ip,
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now}],
                "containerStatuses": [{"name": "workspace", "ready": true, "restartCount": 0, "image": "x",
                    "imageID": "", "state": {"running": {"startedAt": now}}}],
            }),
            PodMode::Unschedulable => json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": NO_NODE, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            }),
            PodMode::CrashLoop => json!({
                "phase": "Running", "podIP": self.pod_ip,
                "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                "containerStatuses": [{
                    "name": "workspace", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                }],
            }),
        }
    }

    /// The Deployment controller's status: `observedGeneration`, and the ReplicaSet's
    /// `ReplicaFailure` copied while pods are missing and cannot be created (removed otherwise).
    fn report_replica_failure(&mut self, events: &broadcast::Sender<Event>, mut deployment: Value, missing: bool) {
        let failing = match (&self.create_failure, missing) {
            (Some(message), true) => Some(message.clone()),
            _ => None,
        };
        let had = deployment["status"]["conditions"].as_array().is_some_and(|c| !c.is_empty());
        if failing.is_none() && !had {
            return;
        }
        let name = deployment["metadata"]["name"].as_str().unwrap().to_string();
        let conditions: Vec<Value> = failing
            .into_iter()
            .map(|message| {
                json!({
                    "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                    "message": format!("pods \"{name}-5d8f7c9b4-\" is forbidden: {message}"),
                })
            })
            .collect();
        deployment["status"] = json!({
            "observedGeneration": deployment["metadata"]["generation"].clone(),
            "conditions": conditions,
        });
        self.put(events, "deployments", deployment);
    }
}

/// The folder standing for the PVC behind pod volume `volume` of `pod_spec`.
fn claim_of(pod_spec: &Value, volume: &str) -> Option<String> {
    pod_spec["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["persistentVolumeClaim"]["claimName"].as_str().map(String::from))
}

/// Where `path` of a container (a mount of `volume` at `mount_path`) is in the folder `dir`.
fn in_volume(dir: &std::path::Path, mount_path: &str, path: &str) -> PathBuf {
    let rest = path.strip_prefix(mount_path).unwrap_or_else(|| panic!("{path} is not under {mount_path}"));
    dir.join(rest.trim_start_matches('/'))
}

impl State {
    /// What the kubelet does before a pod's containers start: each init container, which must be
    /// `wakeway migrate-volume <mount>` of a PVC here, run for real on the PVC's folder.
    fn run_init_containers(&mut self, pod: &str, pod_spec: &Value) -> Result<(), String> {
        for init in pod_spec["initContainers"].as_array().into_iter().flatten() {
            let command: Vec<String> = serde_json::from_value(init["command"].clone()).unwrap();
            assert_eq!(command[..2], ["wakeway", "migrate-volume"], "the only init container wakeway uses");
            let mount = &init["volumeMounts"][0];
            assert_eq!(mount["mountPath"], command[2].as_str(), "migrates what it mounts");
            assert!(mount.get("subPath").is_none() && mount.get("readOnly").is_none(), "the whole volume, writable");
            let claim = claim_of(pod_spec, mount["name"].as_str().unwrap()).expect("a PVC volume");
            // A PVC whose content a test does not follow has no folder: nothing to run on.
            let Some(dir) = self.volumes.get(&claim).cloned() else { continue };
            self.migrations.push((pod.to_string(), claim));
            crate::backend::kubernetes::volume::migrate(&dir).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Fake {
    pub async fn start(backup_dir: PathBuf) -> Fake {
        let (events, _) = broadcast::channel(4096);
        let state = Arc::new(Mutex::new(State {
            rv: 100,
            seq: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            requests: Vec::new(),
            logs: HashMap::new(),
            pod_ip: "127.0.0.1".into(),
            pod_mode: PodMode::Ready,
            job_mode: JobMode::Run,
            create_failure: None,
            refuse_events: false,
            volumes: HashMap::new(),
            provision_into: None,
            backup_dir,
            rwo_violations: 0,
            migrations: Vec::new(),
            extra_rbac: Vec::new(),
        }));
        let hold = Arc::new(tokio::sync::watch::Sender::new(None));
        let shared = Shared { state: state.clone(), events: events.clone(), hold: hold.clone() };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { url, state, events, hold, server }
    }

    /// The resourceVersion of the last change.
    pub fn resource_version(&self) -> u64 {
        self.with(|s| s.rv)
    }

    /// Watch streams deliver events up to resourceVersion `rv` only, and the rest once it is
    /// raised (`None`: everything). Lists and writes are not held: the watcher lags behind them.
    pub fn hold_watches_after(&self, rv: Option<u64>) {
        self.hold.send_replace(rv);
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn object(&self, resource: &str, name: &str) -> Option<Value> {
        self.with(|s| s.get(resource, name))
    }

    /// Put an object as if someone else created it.
    pub fn insert(&self, resource: &str, object: Value) -> Value {
        let events = self.events.clone();
        self.with(|s| s.put(&events, resource, object))
    }

    /// Delete a pod as an eviction would (the Deployment controller replaces it).
    pub fn evict(&self, pod: &str) {
        let events = self.events.clone();
        self.with(|s| {
            let removed = s.remove(&events, "pods", pod).expect("pod exists");
            let owner = pod.rsplitn(3, '-').nth(2).unwrap().to_string();
            assert!(removed["metadata"]["name"].as_str().unwrap().starts_with(&owner));
            s.reconcile_deployment(&events, &owner);
        });
    }

    pub fn pods_of(&self, id: &str) -> Vec<Value> {
        self.with(|s| {
            s.list("pods").into_iter().filter(|p| labels_of(p).get("uuid").map(String::as_str) == Some(id)).collect()
        })
    }

    /// Every Event, oldest first.
    pub fn events(&self) -> Vec<Value> {
        let mut all = self.with(|s| s.list("events"));
        // UIDs are handed out in order, at creation.
        all.sort_by_key(|e| e["metadata"]["uid"].as_str().unwrap_or_default().to_string());
        all
    }

    pub fn workspace_pods_of(&self, id: &str) -> Vec<Value> {
        self.pods_of(id)
            .into_iter()
            .filter(|p| labels_of(p).get("app.kubernetes.io/name").map(String::as_str) == Some("workspace"))
            .collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// Requests other than the watcher's own list and watch calls.
    pub fn calls(&self, method: &str, path_contains: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.method == method && r.path.contains(path_contains)).collect()
    }

    /// Every (group, resource, verb) used so far.
    pub fn rbac_used(&self) -> BTreeSet<(String, String, String)> {
        let extra = self.with(|s| s.extra_rbac.clone());
        self.requests().into_iter().map(|r| r.rbac).chain(extra).collect()
    }
}

struct Target {
    group: String,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", "namespaces", ns, rest @ ..] if *ns == NAMESPACE => (String::new(), rest),
        ["apis", group, _version, "namespaces", ns, rest @ ..] if *ns == NAMESPACE => (group.to_string(), rest),
        _ => return None,
    };
    match rest {
        [resource] => Some(Target { group, resource: resource.to_string(), name: None, sub: None }),
        [resource, name] => {
            Some(Target { group, resource: resource.to_string(), name: Some(name.to_string()), sub: None })
        }
        [resource, name, sub] => Some(Target {
            group,
            resource: resource.to_string(),
            name: Some(name.to_string()),
            sub: Some(sub.to_string()),
        }),
        _ => None,
    }
}

async fn handle(
    AxumState(shared): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: BTreeMap<String, String> = uri.query().map(form_urlencoded).unwrap_or_default();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    let Some(target) = parse_path(&path) else {
        return status(404, "NotFound", format!("the fake does not serve {path}"));
    };
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (&method, &target.name, watch) {
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::PATCH, _, _) => "patch",
        (&Method::POST, None, _) => "create",
        (&Method::DELETE, _, _) => "delete",
        _ => "unknown",
    };
    let resource_path = match &target.sub {
        Some(sub) => format!("{}/{sub}", target.resource),
        None => target.resource.clone(),
    };
    shared.state.lock().unwrap().requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
        rbac: (target.group.clone(), resource_path, verb.into()),
    });
    if watch {
        return watch_stream(&shared, &target.resource, &query);
    }
    let resource = target.resource.as_str();
    match (method, target.name.as_deref(), target.sub.as_deref()) {
        (Method::GET, None, None) => list(&shared, resource, &query),
        (Method::GET, Some(name), None) => match shared.state.lock().unwrap().get(resource, name) {
            Some(object) => axum::Json(object).into_response(),
            None => status(404, "NotFound", format!("{resource} \"{name}\" not found")),
        },
        (Method::GET, Some(name), Some("log")) => match shared.state.lock().unwrap().logs.get(name) {
            Some(log) => log.clone().into_response(),
            None => status(404, "NotFound", format!("no log for pod {name}")),
        },
        (Method::POST, None, None) if resource == "events" => create_event(&shared, body),
        (Method::PATCH, Some(name), None) if resource == "events" => patch_series(&shared, name, &content_type, body),
        (Method::PATCH, Some(name), None) => apply(&shared, resource, name, &query, &content_type, body),
        (Method::PATCH, Some(name), Some("scale")) if resource == "deployments" => {
            scale(&shared, name, &query, &content_type, body)
        }
        (Method::DELETE, Some(name), None) => delete(&shared, resource, name, &body),
        (method, _, _) => status(405, "MethodNotAllowed", format!("the fake does not serve {method} {path}")),
    }
}

fn form_urlencoded(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn list(shared: &Shared, resource: &str, query: &BTreeMap<String, String>) -> Response {
    let state = shared.state.lock().unwrap();
    let items: Vec<Value> = state
        .list(resource)
        .into_iter()
        .filter(|o| matches_labels(query.get("labelSelector"), o) && matches_fields(query.get("fieldSelector"), o))
        .collect();
    let (api_version, kind) = kind_of(resource);
    axum::Json(json!({
        "apiVersion": api_version, "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": state.rv.to_string()}, "items": items,
    }))
    .into_response()
}

fn watch_stream(shared: &Shared, resource: &str, query: &BTreeMap<String, String>) -> Response {
    let since: u64 = query.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
    let labels = query.get("labelSelector").cloned();
    let fields = query.get("fieldSelector").cloned();
    let state = shared.state.lock().unwrap();
    // Subscribe under the lock: no event falls between the replay and the live stream.
    let live = shared.events.subscribe();
    let replay: Vec<Event> = if since == 0 {
        state
            .list(resource)
            .into_iter()
            .map(|o| Event { rv: state.rv, resource: resource.into(), kind: "ADDED", object: o })
            .collect()
    } else {
        state.history.iter().filter(|e| e.rv > since && e.resource == resource).cloned().collect()
    };
    drop(state);
    let resource = resource.to_string();
    let keep = move |e: &Event| {
        e.resource == resource
            && matches_labels(labels.as_ref(), &e.object)
            && matches_fields(fields.as_ref(), &e.object)
    };
    let keep_live = keep.clone();
    let line = |e: Event| {
        Ok::<_, std::convert::Infallible>(Bytes::from(format!("{}\n", json!({"type": e.kind, "object": e.object}))))
    };
    let replayed = futures::stream::iter(replay.into_iter().filter(keep));
    let following = futures::stream::unfold(live, move |mut rx| {
        let keep = keep_live.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(e) if keep(&e) => return Some((e, rx)),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let hold = shared.hold.subscribe();
    let released = replayed.chain(following).then(move |e| {
        let mut hold = hold.clone();
        async move {
            // A dropped sender (the fake is going away) holds nothing.
            let _ = hold.wait_for(|h| h.is_none_or(|h| e.rv <= h)).await;
            line(e)
        }
    });
    Response::builder().header("content-type", "application/json").body(Body::from_stream(released)).unwrap()
}

fn api_group(resource: &str) -> String {
    kind_of(resource).0.rsplit_once('/').map(|(g, _)| g.to_string()).unwrap_or_default()
}

fn apply(
    shared: &Shared,
    resource: &str,
    name: &str,
    query: &BTreeMap<String, String>,
    content_type: &str,
    body: Value,
) -> Response {
    if content_type != "application/apply-patch+yaml" {
        return status(
            415,
            "UnsupportedMediaType",
            format!("apply needs application/apply-patch+yaml, got {content_type}"),
        );
    }
    let manager = match query.get("fieldManager").map(String::as_str) {
        Some(m @ (FIELD_MANAGER | DURABLE_MANAGER)) => m,
        _ => return status(400, "BadRequest", "fieldManager is required for apply requests".into()),
    };
    if query.get("force").map(String::as_str) != Some("true") {
        return status(409, "Conflict", "Apply failed with conflicts (use force)".into());
    }
    if manager == DURABLE_MANAGER {
        return apply_annotations(shared, resource, name, manager, body);
    }
    if body["metadata"]["name"] != name || body["kind"] != kind_of(resource).1 {
        return status(400, "BadRequest", format!("the applied object does not match {resource}/{name}"));
    }
    if !body["metadata"]["uid"].is_null() || !body["metadata"]["resourceVersion"].is_null() || !body["status"].is_null()
    {
        return status(400, "BadRequest", "apply configurations carry no uid, resourceVersion or status".into());
    }
    let events = shared.events.clone();
    let mut state = shared.state.lock().unwrap();
    let existing = state.get(resource, name);
    let mut object = body.clone();
    match &existing {
        Some(old) => {
            for key in ["uid", "creationTimestamp", "managedFields", "generation"] {
                object["metadata"][key] = old["metadata"][key].clone();
            }
            // Annotations another field manager applied stay: this manager never owned them.
            for key in annotations_owned(old, FIELD_MANAGER, false) {
                if object["metadata"]["annotations"].get(&key).is_none() {
                    object["metadata"]["annotations"][&key] = old["metadata"]["annotations"][&key].clone();
                }
            }
            // Fields the applier does not own are kept (replicas belongs to the scale subresource).
            if object["spec"]["replicas"].is_null() && !old["spec"]["replicas"].is_null() {
                object["spec"]["replicas"] = old["spec"]["replicas"].clone();
            }
            if !old["status"].is_null() {
                object["status"] = old["status"].clone();
            }
            let unchanged = {
                let mut a = object.clone();
                let mut b = old.clone();
                for v in [&mut a, &mut b] {
                    v["metadata"]["resourceVersion"] = Value::Null;
                    v["metadata"]["namespace"] = Value::Null;
                    v["apiVersion"] = Value::Null;
                    v["kind"] = Value::Null;
                }
                a == b
            };
            if unchanged {
                return axum::Json(old.clone()).into_response();
            }
            if resource == "deployments" {
                object["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
            }
        }
        None => {
            state.extra_rbac.push((api_group(resource), resource.to_string(), "create".into()));
            object["metadata"]["managedFields"] =
                json!([{"manager": "wakeway", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {}}]);
            match resource {
                "deployments" => {
                    object["metadata"]["generation"] = json!(1);
                    if object["spec"]["replicas"].is_null() {
                        object["spec"]["replicas"] = json!(1);
                    }
                }
                "persistentvolumeclaims" => {
                    object["status"] = json!({"phase": "Bound"});
                    if let Some(root) = state.provision_into.clone()
                        && !state.volumes.contains_key(name)
                    {
                        let dir = root.join(name);
                        std::fs::create_dir_all(&dir).unwrap();
                        state.volumes.insert(name.to_string(), dir);
                    }
                }
                "services" => object["spec"]["clusterIP"] = json!("10.96.0.10"),
                _ => {}
            }
        }
    }
    let stored = state.put(&events, resource, object);
    if resource == "deployments" {
        state.reconcile_deployment(&events, name);
    }
    drop(state);
    if resource == "jobs" && existing.is_none() {
        tokio::spawn(run_job(shared.clone(), name.to_string()));
    }
    axum::Json(stored).into_response()
}

/// The annotation keys the `managedFields` entries of `manager` (`by_it`) or of every other
/// manager (`!by_it`) hold.
fn annotations_owned(object: &Value, manager: &str, by_it: bool) -> Vec<String> {
    let entries = object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .filter(|e| (e["manager"] == manager) == by_it)
        .filter_map(|e| e["fieldsV1"]["f:metadata"]["f:annotations"].as_object())
        .flat_map(|owned| owned.keys().filter_map(|k| k.strip_prefix("f:").map(str::to_string)))
        .collect()
}

/// Server-side apply by a field manager that owns annotations only (the fake models no other
/// partial apply): its annotations are set, the ones it applied before and left out now are
/// removed, everything else stays. Like the API server, an apply that would create the object
/// from such a partial configuration is invalid.
fn apply_annotations(shared: &Shared, resource: &str, name: &str, manager: &str, body: Value) -> Response {
    let metadata_keys: BTreeSet<&str> =
        body["metadata"].as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
    let top_keys: BTreeSet<&str> = body.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
    if !top_keys.is_subset(&BTreeSet::from(["apiVersion", "kind", "metadata"]))
        || !metadata_keys.is_subset(&BTreeSet::from(["name", "namespace", "annotations"]))
    {
        return status(400, "BadRequest", format!("{manager} may apply annotations only, got {body}"));
    }
    let events = shared.events.clone();
    let mut state = shared.state.lock().unwrap();
    let Some(mut object) = state.get(resource, name) else {
        return status(422, "Invalid", format!("{resource} \"{name}\" is invalid: spec: Required value"));
    };
    let applied = body["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
    let before = annotations_owned(&object, manager, true);
    let entries = object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    let annotations = &mut object["metadata"]["annotations"];
    if annotations.is_null() {
        *annotations = json!({});
    }
    for key in before.iter().filter(|k| !applied.contains_key(*k)) {
        annotations.as_object_mut().unwrap().remove(key);
    }
    for (key, value) in &applied {
        annotations[key] = value.clone();
    }
    let owned: serde_json::Map<String, Value> = applied.keys().map(|k| (format!("f:{k}"), json!({}))).collect();
    let mut entries: Vec<Value> = entries.into_iter().filter(|e| e["manager"] != manager).collect();
    entries.push(json!({"manager": manager, "operation": "Apply", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": owned}}}));
    object["metadata"]["managedFields"] = json!(entries);
    let stored = state.put(&events, resource, object);
    axum::Json(stored).into_response()
}

/// 403 for a write to `events` while `refuse_events` is set.
fn events_refused(shared: &Shared) -> Option<Response> {
    let message = "events.events.k8s.io is forbidden: User \"system:serviceaccount:wakeway:wakeway\" cannot create resource \"events\"";
    shared.state.lock().unwrap().refuse_events.then(|| status(403, "Forbidden", message.into()))
}

/// `POST` of an events.k8s.io/v1 Event, checked as the API server validates a new one.
fn create_event(shared: &Shared, body: Value) -> Response {
    if let Some(refused) = events_refused(shared) {
        return refused;
    }
    let text = |key: &str| body[key].as_str().unwrap_or("");
    let required = ["reportingController", "reportingInstance", "action", "reason", "eventTime", "note"];
    if let Some(missing) = required.iter().find(|k| text(k.to_owned()).is_empty()) {
        return status(422, "Invalid", format!("Event is invalid: {missing}: Required value"));
    }
    if ["reportingInstance", "action", "reason"].iter().any(|k| text(k).len() > 128) || text("note").len() > 1024 {
        return status(422, "Invalid", "Event is invalid: a field is too long".into());
    }
    if !matches!(text("type"), "Normal" | "Warning") || body["apiVersion"] != "events.k8s.io/v1" {
        return status(422, "Invalid", format!("Event is invalid: type {:?}", body["type"]));
    }
    if !body["series"].is_null() || body["regarding"]["name"].as_str().is_none() {
        return status(422, "Invalid", "Event is invalid: series or regarding".into());
    }
    let Some(name) = body["metadata"]["name"].as_str() else {
        return status(422, "Invalid", "Event is invalid: metadata.name: Required value".into());
    };
    let events = shared.events.clone();
    let mut state = shared.state.lock().unwrap();
    if state.get("events", name).is_some() {
        return status(409, "AlreadyExists", format!("events.events.k8s.io \"{name}\" already exists"));
    }
    let stored = state.put(&events, "events", body);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

/// A merge patch of an Event's series, the only change of an Event wakeway makes.
fn patch_series(shared: &Shared, name: &str, content_type: &str, body: Value) -> Response {
    if let Some(refused) = events_refused(shared) {
        return refused;
    }
    if content_type != "application/merge-patch+json" {
        return status(415, "UnsupportedMediaType", format!("event patch with {content_type}"));
    }
    let keys: Vec<&String> = body.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    let series = &body["series"];
    if keys != ["series"] || series["count"].as_i64().is_none_or(|c| c < 2) || series["lastObservedTime"].is_null() {
        return status(422, "Invalid", format!("Event is invalid: series {body}"));
    }
    let events = shared.events.clone();
    let mut state = shared.state.lock().unwrap();
    let Some(mut event) = state.get("events", name) else {
        return status(404, "NotFound", format!("events.events.k8s.io \"{name}\" not found"));
    };
    event["series"] = series.clone();
    axum::Json(state.put(&events, "events", event)).into_response()
}

fn scale(shared: &Shared, name: &str, query: &BTreeMap<String, String>, content_type: &str, body: Value) -> Response {
    if content_type != "application/merge-patch+json" {
        return status(415, "UnsupportedMediaType", format!("scale patch with {content_type}"));
    }
    if query.get("fieldManager").map(String::as_str) != Some("wakeway") {
        return status(400, "BadRequest", "the fake expects fieldManager=wakeway on scale".into());
    }
    let Some(replicas) = body["spec"]["replicas"].as_i64() else {
        return status(422, "Invalid", "spec.replicas is required".into());
    };
    let events = shared.events.clone();
    let mut state = shared.state.lock().unwrap();
    let Some(mut deployment) = state.get("deployments", name) else {
        return status(404, "NotFound", format!("deployments.apps \"{name}\" not found"));
    };
    deployment["spec"]["replicas"] = json!(replicas);
    deployment["metadata"]["generation"] = json!(deployment["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    let mut managed: Vec<Value> =
        serde_json::from_value(deployment["metadata"]["managedFields"].clone()).unwrap_or_default();
    managed.retain(|m| m["subresource"] != "scale");
    managed.push(json!({"manager": "wakeway", "operation": "Update", "subresource": "scale", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}));
    deployment["metadata"]["managedFields"] = json!(managed);
    let stored = state.put(&events, "deployments", deployment);
    state.reconcile_deployment(&events, name);
    axum::Json(json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": stored["metadata"]["uid"], "resourceVersion": stored["metadata"]["resourceVersion"]},
        "spec": {"replicas": replicas}, "status": {"replicas": replicas},
    }))
    .into_response()
}

fn delete(shared: &Shared, resource: &str, name: &str, options: &Value) -> Response {
    let events = shared.events.clone();
    let mut state = shared.state.lock().unwrap();
    let Some(existing) = state.get(resource, name) else {
        return status(404, "NotFound", format!("{resource} \"{name}\" not found"));
    };
    if let Some(uid) = options["preconditions"]["uid"].as_str()
        && existing["metadata"]["uid"] != uid
    {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                existing["metadata"]["uid"].as_str().unwrap_or("")
            ),
        );
    }
    if options["dryRun"] == json!(["All"]) {
        return axum::Json(existing).into_response();
    }
    let removed = state.remove(&events, resource, name).unwrap();
    if resource == "deployments" {
        // Background propagation: the garbage collector removes the pods.
        state.reconcile_deployment(&events, name);
    }
    axum::Json(removed).into_response()
}

/// The Job controller plus kubelet for one backup or restore Job: it runs what the pod's
/// `wakeway backup` / `wakeway restore` would, on the folder standing for the PVC.
async fn run_job(shared: Shared, name: String) {
    let (mode, job) = {
        let state = shared.state.lock().unwrap();
        (state.job_mode.clone(), state.get("jobs", &name).unwrap())
    };
    let deadline = job["spec"]["activeDeadlineSeconds"].as_u64().unwrap_or(600);
    let finish = |succeeded: bool, reason: &str, message: &str| {
        let events = shared.events.clone();
        let mut state = shared.state.lock().unwrap();
        let Some(mut job) = state.get("jobs", &name) else { return };
        job["status"] = if succeeded {
            json!({"succeeded": 1, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"}]})
        } else {
            json!({"failed": 1, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                {"type": "Failed", "status": "True", "reason": reason, "message": message}]})
        };
        state.put(&events, "jobs", job);
    };
    match mode {
        JobMode::Stuck => return,
        JobMode::Hang => {
            tokio::time::sleep(Duration::from_secs(deadline)).await;
            finish(false, "DeadlineExceeded", "Job was active longer than specified deadline");
            return;
        }
        JobMode::Run | JobMode::Fail(_) | JobMode::Tamper(_) => {}
    }
    let template = &job["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    let command: Vec<String> = serde_json::from_value(container["command"].clone()).unwrap();
    let arg = |flag: &str| command.iter().position(|c| c == flag).map(|i| command[i + 1].clone()).unwrap();
    let flag = |flag: &str| command.iter().any(|c| c == flag);
    let what = command[1].clone();
    let dest = arg("--dest");
    // The session's PVC is the pod volume the container mounts at /data.
    let data = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == "/data").unwrap();
    let claim = claim_of(&template["spec"], data["name"].as_str().unwrap()).unwrap();
    let session = labels_of(template).get("uuid").cloned().unwrap_or_default();
    let (src, backup_dir, attached, migrated) = {
        let mut state = shared.state.lock().unwrap();
        let attached = state.list("pods").iter().any(|p| {
            let l = labels_of(p);
            l.get("uuid") == Some(&session) && l.get("app.kubernetes.io/name").map(String::as_str) == Some("workspace")
        });
        if attached {
            state.rwo_violations += 1;
        }
        let migrated =
            if attached { Ok(()) } else { state.run_init_containers(&format!("{name}-x7k2p"), &template["spec"]) };
        (state.volumes.get(&claim).cloned(), state.backup_dir.clone(), attached, migrated)
    };
    let line = match (&mode, attached, src) {
        (JobMode::Fail(message), _, _) => json!({"ok": false, "error": message}),
        (_, true, _) => json!({"ok": false, "error": format!("Multi-Attach error for volume of {claim}")}),
        (_, false, None) => json!({"ok": false, "error": format!("no volume for {claim}")}),
        (_, false, Some(_)) if migrated.is_err() => {
            json!({"ok": false, "error": format!("init container migrate-volume failed: {}", migrated.unwrap_err())})
        }
        (_, false, Some(volume)) if what == "restore" => {
            let zip = backup_dir.join(arg("--src").strip_prefix("/backups/").expect("src under /backups"));
            assert_eq!(data.get("readOnly"), None, "a restore writes to the volume");
            let target = in_volume(&volume, "/data", &dest);
            let home = in_volume(&volume, "/data", &arg("--home-dest"));
            let env: HashMap<String, u64> =
                serde_json::from_value::<Vec<Value>>(template["spec"]["containers"][0]["env"].clone())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.parse().ok()?)))
                    .collect();
            let limits = crate::restore::Limits {
                max_bytes: env["WAKEWAY_RESTORE_MAX_BYTES"],
                max_entries: env["WAKEWAY_RESTORE_MAX_ENTRIES"],
                max_ratio: env["WAKEWAY_RESTORE_MAX_RATIO"],
            };
            let command = crate::restore::Command {
                replace: flag("--replace"),
                skip_escaping_symlinks: flag("--skip-escaping-symlinks"),
                in_place: flag("--in-place"),
            };
            tokio::task::spawn_blocking(move || command.run_roots(&zip, &target, Some(&home), &limits)).await.unwrap()
        }
        (_, false, Some(volume)) => {
            assert_eq!(data["readOnly"], true, "a backup only reads the volume");
            let src = in_volume(&volume, "/data", &arg("--src"));
            let home = in_volume(&volume, "/data", &arg("--home"));
            let file = dest.strip_prefix("/backups/").expect("dest under /backups").to_string();
            let target = backup_dir.join(&file);
            // As `wakeway backup` records them in the catalog.
            let origin = crate::catalog::Origin {
                session: crate::catalog::session_of(file.trim_end_matches(".zip")).map(String::from),
                user_id: Some(arg("--user-id")),
                reason: arg("--reason").into(),
                writer: None,
            };
            let written = tokio::task::spawn_blocking(move || {
                let sources = crate::backup::Sources { workspace: &src, home: Some(&home) };
                crate::backup::write_verified_backup(&sources, &target, chrono::Utc::now(), &origin)
            })
            .await
            .unwrap();
            match (written, &mode) {
                (Ok(mut info), JobMode::Tamper(how)) => {
                    tamper(&backup_dir.join(&file), &mut info, *how);
                    json!({"ok": true, "path": dest, "backup": info})
                }
                (Ok(info), _) => json!({"ok": true, "path": dest, "backup": info}),
                (Err(e), _) => json!({"ok": false, "error": e.to_string()}),
            }
        }
    };
    let ok = line["ok"] == true;
    {
        let events = shared.events.clone();
        let mut state = shared.state.lock().unwrap();
        let pod_name = format!("{name}-x7k2p");
        let mut labels = labels_of(template);
        labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
        let pod = json!({
            "metadata": {"name": pod_name, "labels": labels},
            "spec": template["spec"].clone(),
            "status": {"phase": if ok { "Succeeded" } else { "Failed" }},
        });
        state.put(&events, "pods", pod);
        state.logs.insert(pod_name, format!("starting {what}\n{line}\n"));
    }
    if ok {
        finish(true, "", "");
    } else {
        finish(false, "BackoffLimitExceeded", "Job has reached the specified backoff limit");
    }
}

/// Damage the zip at `path` (or the report `info` of it) as `how` says.
fn tamper(path: &std::path::Path, info: &mut crate::session::BackupInfo, how: Tamper) {
    match how {
        Tamper::Missing => std::fs::remove_file(path).unwrap(),
        Tamper::Truncated => {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(info.size / 2).unwrap();
        }
        Tamper::WrongSha256 => info.sha256 = "0123456789abcdef".repeat(4),
        Tamper::FlippedByte => {
            let (start, len) = {
                let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
                let largest = (0..zip.len()).max_by_key(|&i| zip.by_index(i).unwrap().compressed_size()).unwrap();
                let entry = zip.by_index(largest).unwrap();
                (entry.data_start().expect("the entry's data offset"), entry.compressed_size())
            };
            let mut bytes = std::fs::read(path).unwrap();
            bytes[(start + len / 2) as usize] ^= 0x5a;
            std::fs::write(path, &bytes).unwrap();
            let (sha256, size) = crate::backup::sha256_file(path).unwrap();
            assert_eq!(size, info.size);
            info.sha256 = sha256;
        }
    }
}

/// A workspace stand-in: accepts connections, answers HTTP only once `ready` is set.
pub struct TestWorkspace {
    pub port: u16,
    ready: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestWorkspace {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestWorkspace {
    pub async fn start(ready: bool) -> TestWorkspace {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(ready));
        let answering = flag.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let answering = answering.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    if !answering {
                        return; // accepted and closed: a process that is up but not serving
                    }
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ =
                        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                });
            }
        });
        TestWorkspace { port, ready: flag, task }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
    }
}

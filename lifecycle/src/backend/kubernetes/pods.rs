//! The pod watcher: one kube-runtime reflector over the namespace's workspace pods
//! (`managed-by=wakeway,name=workspace`), shared by every session. Starts and stops wait on its
//! change signal instead of polling the API per session; `is_alive` is a cache lookup. The cache
//! lags behind the API server, so a start confirms the pod it found there with one fresh read.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::objects::{TIER, UUID, WORKSPACE_SELECTOR};

/// The reflector's cache plus a counter bumped after every change it applied.
pub(crate) struct PodWatch {
    namespace: String,
    store: Store<Pod>,
    synced: Arc<AtomicBool>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodWatch {
    /// Start watching (needs a Tokio runtime). `on_change` runs after each change was applied to
    /// the cache (not during an initial or re-list, only once it is complete).
    pub fn spawn(api: Api<Pod>, namespace: String, on_change: impl Fn(&Store<Pod>) + Send + 'static) -> PodWatch {
        let (store, writer) = reflector::store();
        let (tx, changes) = watch::channel(0u64);
        let synced = Arc::new(AtomicBool::new(false));
        let reader = store.clone();
        let flag = synced.clone();
        let config = watcher::Config::default().labels(WORKSPACE_SELECTOR);
        let task = tokio::spawn(async move {
            let mut events = pin!(reflector::reflector(writer, watcher(api, config).default_backoff()));
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => flag.store(true, Ordering::Release),
                    // The cache is replaced atomically at InitDone; nothing to look at before.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "watching workspace pods failed; retrying with backoff");
                        continue;
                    }
                }
                on_change(&reader);
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        PodWatch { namespace, store, synced, changes, task }
    }

    /// Whether the first full list has arrived (before that, absence means nothing).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// A receiver that changes after every applied event.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Wait until the first list arrived, at most until `deadline`.
    pub async fn wait_synced(&self, deadline: tokio::time::Instant) -> bool {
        let mut changes = self.subscribe();
        while !self.synced() {
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The pod named `name`, if cached.
    pub fn get(&self, name: &str) -> Option<Arc<Pod>> {
        self.store.get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Every cached pod of session `id`.
    pub fn of_session(&self, id: &str) -> Vec<Arc<Pod>> {
        self.store.state_filter(|p| label(p, UUID) == Some(id))
    }
}

pub(crate) fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

pub(crate) fn tier_of(pod: &Pod) -> Option<&str> {
    pod.metadata.annotations.as_ref()?.get(TIER).map(String::as_str)
}

pub(crate) fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Ready (the kubelet's readiness probe passed), not being deleted, with an IP.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    !is_terminating(pod)
        && status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && status.conditions.as_ref().is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a pod will not become ready without someone changing something (fail the start now
/// instead of at the timeout).
pub(crate) fn fatal_reason(pod: &Pod) -> Option<String> {
    const FATAL: [&str; 5] = [
        "CrashLoopBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImageNeverPull",
    ];
    let status = pod.status.as_ref()?;
    // The migration init container first: while it fails, the workspace container never starts.
    let mut statuses =
        status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    statuses.find_map(|s| {
        let waiting = s.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        let pod = pod.metadata.name.as_deref().unwrap_or("?");
        FATAL.contains(&reason).then(|| match &waiting.message {
            Some(message) => format!("pod {pod}: container {}: {reason}: {message}", s.name),
            None => format!("pod {pod}: container {}: {reason}", s.name),
        })
    })
}

/// The scheduler's word when it found no node for `pod` (`PodScheduled=False`, reason
/// `Unschedulable`): not enough CPU or memory for the tier, taints, affinity.
pub(crate) fn unschedulable(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled")?;
    let stuck = scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable");
    // Waiting for its volume to be provisioned is not "no node fits": a slow provisioner would
    // otherwise fail a first wake. `start_timeout` still bounds the wait.
    let message = scheduled.message.as_deref().unwrap_or_default();
    if message.contains("unbound immediate PersistentVolumeClaims") {
        return None;
    }
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    stuck.then(|| {
        format!("pod {name} cannot be scheduled: {}", scheduled.message.as_deref().unwrap_or("no node fits it"))
    })
}

/// One line about where a pod is, for a start that timed out.
pub(crate) fn describe(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let Some(status) = &pod.status else { return format!("pod {name}: no status yet") };
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    let mut why: Vec<String> = Vec::new();
    for c in status.conditions.iter().flatten() {
        if c.status != "True"
            && let Some(reason) = &c.reason
        {
            why.push(format!("{} {reason}: {}", c.type_, c.message.as_deref().unwrap_or("")));
        }
    }
    for s in status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten()) {
        if let Some(waiting) = s.state.as_ref().and_then(|st| st.waiting.as_ref()) {
            why.push(format!(
                "{} {}: {}",
                s.name,
                waiting.reason.as_deref().unwrap_or("waiting"),
                waiting.message.as_deref().unwrap_or("")
            ));
        }
    }
    if why.is_empty() { format!("pod {name}: {phase}") } else { format!("pod {name}: {phase} ({})", why.join("; ")) }
}

//! Backup and restore Jobs: run one to its verdict, read its pod's log, and parse the result line
//! `wakeway backup`/`restore` print (the Job's word, which wakeway then checks itself).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{ListParams, LogParams};

use super::objects::{self, JOB};
use super::{BackendError, KubernetesBackend};
use crate::session::BackupInfo;

/// How a Job ended: whether it succeeded, the API server's reason if not, and its pod's log
/// (or why it could not be read).
pub(super) struct JobRun {
    pub succeeded: bool,
    pub reason: String,
    pub log: Result<String, String>,
}

impl KubernetesBackend {
    /// The last JSON line a Job's pod printed.
    async fn job_log(&self, job: &str, container: &str) -> Result<String, String> {
        let params = ListParams::default().labels(&format!("{JOB}={job}"));
        let found = self.pod_api.list(&params).await.map_err(|e| format!("cannot list the Job's pods: {e}"))?;
        let Some(pod) = found.items.iter().max_by_key(|p| p.metadata.creation_timestamp.clone()) else {
            return Err("the Job has no pod to read the result from".into());
        };
        let params = LogParams { container: Some(container.into()), ..LogParams::default() };
        self.pod_api.logs(&pod.name_any(), &params).await.map_err(|e| format!("cannot read the log of its pod: {e}"))
    }

    /// Start `job` and wait for the API server's verdict on it ([`Self::finished_job`]), then
    /// read its pod's log (`container`).
    pub(super) async fn run_job(&self, job: Job, container: &str) -> Result<JobRun, BackendError> {
        let name = job.name_any();
        self.apply(&self.jobs, job).await?;
        let job = self.finished_job(&name).await?;
        let (succeeded, reason) = job_outcome(&job).unwrap_or((false, "unknown".into()));
        Ok(JobRun { succeeded, reason, log: self.job_log(&name, container).await })
    }

    /// Job `name` once the API server has given its verdict. Its own `activeDeadlineSeconds` is
    /// `job_timeout`; we wait a little longer to see that verdict, then give up on our own.
    pub(super) async fn finished_job(&self, name: &str) -> Result<Job, BackendError> {
        let failed = |why: String| BackendError::Job { job: name.to_string(), why };
        let timeout = self.config.kubernetes.job_timeout;
        let finished = kube::runtime::wait::await_condition(self.jobs.clone(), name, |job: Option<&Job>| {
            job.is_none_or(|j| job_outcome(j).is_some())
        });
        match tokio::time::timeout(timeout + timeout.min(Duration::from_secs(60)), finished).await {
            Err(_) => Err(failed(format!("it did not finish within {}", wakeway_config::format_duration(timeout)))),
            Ok(Err(e)) => Err(BackendError::Api(format!("watch Job {name}: {e}"))),
            Ok(Ok(None)) => Err(failed("it was deleted before it finished".into())),
            Ok(Ok(Some(job))) => Ok(job),
        }
    }
}

/// The result a `wakeway backup` Job printed: the last JSON line of its log,
/// `{"ok":true,"path":…,"backup":{file,size,sha256,entries,content_bytes,verified_at,skipped}}`.
pub fn parse_backup_result(log: &str, expected_file: &str) -> Result<BackupInfo, String> {
    let line = result_line(log)?;
    if line["ok"] != serde_json::Value::Bool(true) {
        return Err(line["error"].as_str().unwrap_or("it reported a failure without a reason").to_string());
    }
    let info: BackupInfo = serde_json::from_value(line["backup"].clone())
        .map_err(|e| format!("its result line is not a backup description: {e}"))?;
    if info.file != expected_file {
        return Err(format!("it reported {} instead of {expected_file}", info.file));
    }
    if info.size == 0 || info.sha256.len() != 64 {
        return Err(format!("it reported an implausible backup ({} bytes, sha256 {:?})", info.size, info.sha256));
    }
    Ok(info)
}

/// The result line `wakeway restore` prints (the last JSON line with `ok`): the report, or the
/// command's own refusal as a [`RestoreError`]. `Err` when the log holds no such line.
pub fn parse_restore_result(log: &str) -> Result<Result<crate::restore::Report, crate::restore::RestoreError>, String> {
    use crate::restore::RestoreError;
    let line = result_line(log)?;
    if line["ok"] == serde_json::Value::Bool(true) {
        return serde_json::from_value(line["restore"].clone())
            .map(Ok)
            .map_err(|e| format!("its result line is not a restore report: {e}"));
    }
    let why = line["error"].as_str().unwrap_or("it reported a failure without a reason").to_string();
    Ok(Err(match line["kind"].as_str() {
        Some("rejected") => RestoreError::Rejected(why),
        Some("corrupt") => RestoreError::Corrupt(why),
        _ => RestoreError::Io { path: objects::DATA_MOUNT.into(), source: std::io::Error::other(why) },
    }))
}

/// The result a `wakeway backup`/`restore` Job printed: the last JSON line of its log with `ok`
/// (whatever else the pod logged before it).
fn result_line(log: &str) -> Result<serde_json::Value, String> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| v.get("ok").is_some())
        .ok_or_else(|| format!("no result line in its log (last lines: {})", tail(log)))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().rev().take(3).collect();
    if lines.is_empty() { "empty".into() } else { lines.into_iter().rev().collect::<Vec<_>>().join(" | ") }
}

/// `Some((succeeded, reason))` once a Job finished.
pub(super) fn job_outcome(job: &Job) -> Option<(bool, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().filter(|c| c.status == "True").find_map(|c| match c.type_.as_str() {
        "Complete" => Some((true, String::new())),
        "Failed" => Some((
            false,
            format!("{}: {}", c.reason.as_deref().unwrap_or("Failed"), c.message.as_deref().unwrap_or("")),
        )),
        _ => None,
    })
}

//! The `[kubernetes]` table: how the kubernetes backend names, sizes and runs each session's
//! Deployment, Service, PVC and backup Job. Every key is overridable as
//! `WAKEWAY_KUBERNETES_<KEY>` (e.g. `WAKEWAY_KUBERNETES_NAMESPACE`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// Settings of the kubernetes backend (read only when `backend = "kubernetes"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Namespace of every workspace object and backup Job.
    pub namespace: String,
    /// The workspace image (code-server).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Arguments of the workspace container; `{port}` is replaced by `port`.
    pub args: Vec<String>,
    /// Variables added to the workspace container's environment (`NAME = "value"`). A workspace
    /// gets these, `WAKEWAY_SESSION`, `WAKEWAY_CPU`, `WAKEWAY_MEMORY_MIB` and what its image sets:
    /// nothing of wakeway's own. Names are C identifiers and never start with `WAKEWAY_`.
    pub env: BTreeMap<String, String>,
    /// The port the workspace listens on in its pod (wakeway routes to pod IP:port).
    pub port: u16,
    /// The workspace container's HOME (code-server's image: `/home/coder`). It is mounted from the
    /// session's PVC (its `home/` folder) and set as `HOME`, so settings, extensions and dotfiles
    /// persist across sleeps and are in every backup.
    pub home_path: String,
    /// Storage class of each session's PVC. Empty: the cluster's default class.
    pub storage_class: String,
    /// Size of each session's PVC (a Kubernetes quantity).
    pub pvc_size: String,
    /// The shared PVC backup Jobs write zips to (mounted at /backups).
    pub backup_pvc: String,
    /// The wakeway image itself: backup and restore Jobs run `wakeway backup` / `wakeway restore`.
    pub wakeway_image: String,
    /// Service account of workspace pods and Jobs (no API token is mounted in them).
    pub service_account: String,
    /// User, group and fsGroup of workspace pods and Jobs (non-root; code-server's image uses 1000).
    pub run_as_user: i64,
    pub run_as_group: i64,
    pub fs_group: i64,
    /// A backup Job that has not finished after this long fails (`activeDeadlineSeconds`).
    #[serde(with = "duration::serde_fmt")]
    pub job_timeout: Duration,
    /// Finished Jobs are removed by Kubernetes after this long (`ttlSecondsAfterFinished`).
    #[serde(with = "duration::serde_fmt")]
    pub job_ttl: Duration,
    /// After scaling to 0, how long the session's pods may take to be gone.
    #[serde(with = "duration::serde_fmt")]
    pub stop_timeout: Duration,
    /// A waking pod the scheduler reports `Unschedulable` (no node has the tier's CPU/memory, a
    /// taint, an affinity) fails the wake after this long: time for a cluster autoscaler to add a
    /// node, not `start_timeout` of a user looking at the waiting page.
    #[serde(with = "duration::serde_fmt")]
    pub unschedulable_grace: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: "wakeway".into(),
            image: "docker.io/codercom/code-server:4.139.1".into(),
            image_pull_policy: "IfNotPresent".into(),
            args: [
                "--bind-addr",
                "0.0.0.0:{port}",
                "--auth",
                "none",
                "--disable-telemetry",
                "--disable-update-check",
                "--disable-workspace-trust",
                "/workspace",
            ]
            .map(String::from)
            .to_vec(),
            env: BTreeMap::new(),
            port: 8080,
            home_path: "/home/coder".into(),
            storage_class: String::new(),
            pvc_size: "5Gi".into(),
            backup_pvc: "backup-pvc".into(),
            wakeway_image: "wakeway:0.1.0".into(),
            service_account: "wakeway-workspace".into(),
            run_as_user: 1000,
            run_as_group: 1000,
            fs_group: 1000,
            job_timeout: Duration::from_secs(30 * 60),
            job_ttl: Duration::from_secs(24 * 3600),
            stop_timeout: Duration::from_secs(120),
            unschedulable_grace: Duration::from_secs(30),
        }
    }
}

impl KubernetesConfig {
    /// Check the values the API server would reject, so the mistake is named at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if !is_dns_label(&self.namespace) {
            return Err(format!("kubernetes.namespace {:?} is not a DNS label", self.namespace));
        }
        if !is_dns_subdomain(&self.backup_pvc) {
            return Err(format!("kubernetes.backup_pvc {:?} is not a valid object name", self.backup_pvc));
        }
        if !self.service_account.is_empty() && !is_dns_subdomain(&self.service_account) {
            return Err(format!("kubernetes.service_account {:?} is not a valid name", self.service_account));
        }
        if !self.storage_class.is_empty() && !is_dns_subdomain(&self.storage_class) {
            return Err(format!("kubernetes.storage_class {:?} is not a valid name", self.storage_class));
        }
        if self.image.trim().is_empty() || self.wakeway_image.trim().is_empty() {
            return Err("kubernetes.image and kubernetes.wakeway_image must be set".into());
        }
        if !matches!(self.image_pull_policy.as_str(), "Always" | "IfNotPresent" | "Never") {
            return Err(format!(
                "kubernetes.image_pull_policy {:?} must be Always, IfNotPresent or Never",
                self.image_pull_policy
            ));
        }
        if self.port == 0 {
            return Err("kubernetes.port must not be 0".into());
        }
        if !is_quantity(&self.pvc_size) {
            return Err(format!("kubernetes.pvc_size {:?} is not a quantity such as \"5Gi\"", self.pvc_size));
        }
        if self.run_as_user <= 0 || self.run_as_group < 0 || self.fs_group < 0 {
            return Err("kubernetes.run_as_user must be a non-root uid (> 0)".into());
        }
        validate_home_path(&self.home_path)?;
        crate::workspace_env::validate("kubernetes.env", &self.env)?;
        if self.env.keys().any(|name| name == "HOME") {
            return Err(
                "kubernetes.env: HOME is set from kubernetes.home_path (where HOME is mounted from the PVC)".into()
            );
        }
        for (key, value) in [
            ("kubernetes.job_timeout", self.job_timeout),
            ("kubernetes.job_ttl", self.job_ttl),
            ("kubernetes.stop_timeout", self.stop_timeout),
            ("kubernetes.unschedulable_grace", self.unschedulable_grace),
        ] {
            if value < Duration::from_secs(1) {
                return Err(format!("{key} must be at least 1s"));
            }
        }
        Ok(())
    }
}

/// `home_path`: an absolute, clean path (no `.`, `..`, `//` or trailing `/`), neither `/` nor
/// `/workspace` or inside it (the two mounts of the session's PVC must not nest).
fn validate_home_path(path: &str) -> Result<(), String> {
    let key = "kubernetes.home_path";
    let parts: Vec<&str> = path.strip_prefix('/').map(|p| p.split('/').collect()).unwrap_or_default();
    if !path.starts_with('/') || path == "/" || parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(format!("{key} {path:?} must be an absolute path such as \"/home/coder\" (not /, no . or ..)"));
    }
    if path.contains('\0') || path.contains(':') {
        return Err(format!("{key} {path:?} must not contain ':' or a NUL byte"));
    }
    if path == "/workspace" || path.starts_with("/workspace/") {
        return Err(format!("{key} {path:?} must not be /workspace or inside it"));
    }
    Ok(())
}

/// RFC 1123 label: what a namespace (or a Service name) must be.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// RFC 1123 subdomain: what most object names must be.
fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// `5Gi`, `500M`, `1.5Ti`, `1073741824`: a number and an optional suffix the API server accepts.
fn is_quantity(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|n| n > 0.0)
        && ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"].contains(&suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        KubernetesConfig::default().validate().unwrap();
        let bad = |f: fn(&mut KubernetesConfig)| {
            let mut c = KubernetesConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.namespace = "Wake_Way".into()).contains("namespace"));
        assert!(bad(|c| c.pvc_size = "5 gigs".into()).contains("pvc_size"));
        assert!(bad(|c| c.image_pull_policy = "sometimes".into()).contains("image_pull_policy"));
        assert!(bad(|c| c.run_as_user = 0).contains("non-root"));
        assert!(bad(|c| c.backup_pvc = String::new()).contains("backup_pvc"));
        for home in
            ["", "home/coder", "/", "/home/../etc", "/home//coder", "/home/coder/", "/workspace", "/workspace/home"]
        {
            let c = KubernetesConfig { home_path: home.into(), ..KubernetesConfig::default() };
            assert!(c.validate().unwrap_err().contains("kubernetes.home_path"), "{home:?}");
        }
        let mut ok = KubernetesConfig { home_path: "/var/home/dev".into(), ..KubernetesConfig::default() };
        ok.validate().unwrap();
        ok.env = BTreeMap::from([("HOME".into(), "/tmp".into())]);
        assert!(ok.validate().unwrap_err().contains("home_path"));
        let reserved = bad(|c| c.env = BTreeMap::from([("WAKEWAY_API_KEYS".into(), "x".into())]));
        assert!(reserved.contains("kubernetes.env") && reserved.contains("reserved"), "{reserved}");
    }

    #[test]
    fn quantities_the_api_server_takes() {
        for ok in ["5Gi", "500Mi", "1.5Ti", "1073741824", "10G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "5gb", "-1Gi", "5 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}

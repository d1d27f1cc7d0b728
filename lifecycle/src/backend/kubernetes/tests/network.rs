//! `deploy/network-policy.yaml` evaluated: a small model of NetworkPolicy semantics answers "may a
//! connection from this pod reach that address and port", and the answers are what the trust model
//! asks (a workspace reaches DNS and the internet, not the metadata service, the cluster's ranges,
//! wakeway, Redis or another workspace; a Job reaches DNS only). Pods carry the labels the backend
//! puts on them (`objects.rs`) and that `deploy/` puts on wakeway's and Redis's pods.
//!
//! The model is conservative where implementations differ: an `ipBlock` is taken to match pod
//! addresses too, so a pod that is denied here is denied whichever way a network plugin reads it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use wakeway_config::{BackendKind, Config};

use super::deploy::{deploy_dir, docs, find, read};
use crate::backend::kubernetes::objects;
use crate::session::{Session, SessionId};

type Labels = BTreeMap<String, String>;

/// A pod: its namespace (name and labels) and its own labels.
#[derive(Clone)]
struct Pod {
    namespace: String,
    namespace_labels: Labels,
    labels: Labels,
}

impl Pod {
    fn new(namespace: &str, labels: Labels) -> Pod {
        let namespace_labels = Labels::from([("kubernetes.io/metadata.name".into(), namespace.into())]);
        Pod { namespace: namespace.into(), namespace_labels, labels }
    }
}

/// One end of a connection: an address, and the pod it belongs to when it is one.
#[derive(Clone)]
struct Endpoint {
    ip: IpAddr,
    pod: Option<Pod>,
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// An address outside the cluster. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4
/// address it maps: the kernel sends IPv4 packets to it, and those meet the IPv4 rules.
fn outside(address: &str) -> Endpoint {
    Endpoint { ip: ip(address).to_canonical(), pod: None }
}

fn pod(address: &str, pod: Pod) -> Endpoint {
    Endpoint { ip: ip(address), pod: Some(pod) }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn policy_type(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
    /// The rules' field and their peers' field.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Direction::Ingress => ("ingress", "from"),
            Direction::Egress => ("egress", "to"),
        }
    }
}

/// NetworkPolicies of one namespace (as kustomize applies them: all in the kustomization's).
struct Policies {
    namespace: String,
    all: Vec<Value>,
}

impl Policies {
    fn from_deploy() -> Policies {
        let kustomization: Value = serde_yaml::from_str(&read("kustomization.yaml")).unwrap();
        let namespace = kustomization["namespace"].as_str().unwrap().to_string();
        Policies { namespace, all: docs("network-policy.yaml") }
    }

    /// The policies that select `pod` for `direction` (the pod is isolated in that direction
    /// when there is at least one).
    fn selecting(&self, pod: &Pod, direction: Direction) -> Vec<&Value> {
        self.all
            .iter()
            .filter(|p| pod.namespace == self.namespace && selects(&p["spec"]["podSelector"], &pod.labels))
            .filter(|p| policy_types(p).contains(&direction.policy_type()))
            .collect()
    }

    /// Whether `endpoint`'s side lets the connection through (`peer` the other end).
    fn allows(&self, direction: Direction, endpoint: &Endpoint, peer: &Endpoint, port: u16, protocol: &str) -> bool {
        let Some(pod) = &endpoint.pod else { return true }; // not a pod: no policy applies
        let selecting = self.selecting(pod, direction);
        let (rules_field, peers_field) = direction.fields();
        selecting.is_empty()
            || selecting.iter().any(|p| {
                p["spec"][rules_field].as_array().is_some_and(|rules| {
                    rules
                        .iter()
                        .any(|r| ports_match(&r["ports"], port, protocol) && self.peers_match(&r[peers_field], peer))
                })
            })
    }

    /// May `from` open a connection to `to`:`port` over `protocol`? Both ends' policies must agree.
    fn connects(&self, from: &Endpoint, to: &Endpoint, port: u16, protocol: &str) -> bool {
        self.allows(Direction::Egress, from, to, port, protocol)
            && self.allows(Direction::Ingress, to, from, port, protocol)
    }

    fn peers_match(&self, peers: &Value, peer: &Endpoint) -> bool {
        let Some(peers) = peers.as_array().filter(|p| !p.is_empty()) else { return true };
        peers.iter().any(|p| {
            if let Some(block) = p.get("ipBlock") {
                let excepted = block["except"].as_array().into_iter().flatten();
                return cidr_contains(block["cidr"].as_str().unwrap(), peer.ip)
                    && !excepted.map(|e| e.as_str().unwrap()).any(|e| cidr_contains(e, peer.ip));
            }
            let Some(other) = &peer.pod else { return false };
            let namespace_ok = match p.get("namespaceSelector") {
                Some(selector) => selects(selector, &other.namespace_labels),
                None => other.namespace == self.namespace,
            };
            namespace_ok && p.get("podSelector").is_none_or(|s| selects(s, &other.labels))
        })
    }
}

/// `policyTypes`, or its default: Ingress, and Egress when there are egress rules.
fn policy_types(policy: &Value) -> Vec<&str> {
    match policy["spec"]["policyTypes"].as_array() {
        Some(types) => types.iter().map(|t| t.as_str().unwrap()).collect(),
        None if policy["spec"].get("egress").is_some() => vec!["Ingress", "Egress"],
        None => vec!["Ingress"],
    }
}

/// A label selector (`matchLabels` and `matchExpressions`; empty selects everything).
fn selects(selector: &Value, labels: &Labels) -> bool {
    let label = |k: &str| labels.get(k).map(String::as_str);
    let match_labels = selector["matchLabels"].as_object().into_iter().flatten();
    let expressions = selector["matchExpressions"].as_array().into_iter().flatten();
    match_labels.into_iter().all(|(k, v)| label(k) == v.as_str())
        && expressions.into_iter().all(|e| {
            let key = label(e["key"].as_str().unwrap());
            let values: Vec<&str> = e["values"].as_array().into_iter().flatten().map(|v| v.as_str().unwrap()).collect();
            match e["operator"].as_str().unwrap() {
                "In" => key.is_some_and(|k| values.contains(&k)),
                "NotIn" => key.is_none_or(|k| !values.contains(&k)),
                "Exists" => key.is_some(),
                "DoesNotExist" => key.is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        })
}

fn ports_match(ports: &Value, port: u16, protocol: &str) -> bool {
    let Some(ports) = ports.as_array().filter(|p| !p.is_empty()) else { return true };
    ports.iter().any(|p| {
        let proto_ok = p["protocol"].as_str().unwrap_or("TCP") == protocol;
        let first = match &p["port"] {
            Value::Null => return proto_ok,
            Value::Number(n) => n.as_u64().unwrap(),
            other => panic!("named port {other} is not modelled (deploy/ uses numbers)"),
        };
        let last = p["endPort"].as_u64().unwrap_or(first);
        proto_ok && (first..=last).contains(&u64::from(port))
    })
}

/// `10.0.0.0/8` contains `ip` (same family only).
fn cidr_contains(cidr: &str, address: IpAddr) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap_or_else(|| panic!("{cidr} is not a CIDR"));
    let bits: u32 = bits.parse().unwrap();
    match (ip(net), address) {
        (IpAddr::V4(net), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            assert_eq!(u32::from(net) & !mask, 0, "{cidr} has host bits set (the API server refuses it)");
            u32::from(a) & mask == u32::from(net)
        }
        (IpAddr::V6(net), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            assert_eq!(u128::from(net) & !mask, 0, "{cidr} has host bits set (the API server refuses it)");
            u128::from(a) & mask == u128::from(net)
        }
        _ => false,
    }
}

/// The pod template labels of a generated object (what the backend puts on its pods).
fn template_labels(object: &Value) -> Labels {
    serde_json::from_value(object["spec"]["template"]["metadata"]["labels"].clone()).unwrap()
}

fn json(object: impl serde::Serialize) -> Value {
    serde_json::to_value(object).unwrap()
}

/// Every pod the tests connect from or to, labelled as in the cluster.
struct Cluster {
    workspace: Endpoint,
    other_workspace: Endpoint,
    backup: Endpoint,
    restore: Endpoint,
    wakeway: Endpoint,
    redis: Endpoint,
    kube_dns: Endpoint,
}

fn cluster(namespace: &str) -> Cluster {
    let mut config = Config::default();
    config.workspaces.backend = BackendKind::Kubernetes;
    let at: DateTime<Utc> = "2026-03-04T05:06:07Z".parse().unwrap();
    let session = |id: &str| Session::new(&SessionId::parse(id).unwrap(), "ada@example.com", "small", at);
    let (a, b) = (session("abc12345"), session("def67890"));
    let tier = objects::session_tier(&config, &a);
    let generated = |object: Value| Pod::new(namespace, template_labels(&object));
    let workspace = |s: &Session| generated(json(objects::deployment(&config, s, &tier)));
    let file = crate::backup::backup_file_name(&a.uuid, at);
    let limits = crate::restore::Limits::from_config(&config);
    let manifests: Vec<Value> = ["wakeway.yaml", "redis.yaml"].iter().flat_map(|f| docs(f)).collect();
    Cluster {
        workspace: pod("10.8.3.4", workspace(&a)),
        other_workspace: pod("10.8.3.5", workspace(&b)),
        backup: pod("10.8.4.1", generated(json(objects::backup_job(&config, &a, &file, at, "policy")))),
        restore: pod("10.8.4.2", generated(json(objects::restore_job(&config, &a, &file, at, &limits, false)))),
        wakeway: pod("10.8.1.7", Pod::new(namespace, template_labels(find(&manifests, "Deployment", "wakeway")))),
        redis: pod("10.8.2.3", Pod::new(namespace, template_labels(find(&manifests, "Deployment", "redis")))),
        kube_dns: pod("10.8.0.10", Pod::new("kube-system", Labels::from([("k8s-app".into(), "kube-dns".into())]))),
    }
}

/// Destinations no workspace or Job may reach, with the port an attacker would use.
fn forbidden(c: &Cluster) -> Vec<(&'static str, Endpoint, u16)> {
    vec![
        ("the metadata service", outside("169.254.169.254"), 80),
        ("the metadata service over IPv6", outside("fd00:ec2::254"), 80),
        ("the metadata service, IPv4-mapped", outside("::ffff:169.254.169.254"), 80),
        ("the metadata service through NAT64", outside("64:ff9b::a9fe:a9fe"), 80),
        ("Alibaba's metadata service", outside("100.100.100.200"), 80),
        ("Azure's WireServer", outside("168.63.129.16"), 80),
        ("a private address (Redis's port)", outside("10.0.0.5"), 6379),
        ("the kubernetes Service", outside("10.96.0.1"), 443),
        ("a node's kubelet", outside("10.128.0.2"), 10250),
        ("a 172.16/12 address", outside("172.16.5.4"), 443),
        ("a 192.168/16 address", outside("192.168.1.1"), 22),
        ("an IPv6 pod (unique local)", outside("fd12:3456::7"), 8080),
        ("a link-local IPv6 address", outside("fe80::1"), 80),
        ("wakeway's pod", c.wakeway.clone(), 8080),
        ("wakeway's pod (HTTPS)", c.wakeway.clone(), 8443),
        ("Redis's pod", c.redis.clone(), 6379),
        ("another workspace", c.other_workspace.clone(), 8080),
        ("kube-dns on another port", c.kube_dns.clone(), 9153),
    ]
}

#[test]
fn workspaces_reach_dns_and_the_internet_and_nothing_of_the_cluster() {
    let policies = Policies::from_deploy();
    let c = cluster(&policies.namespace);
    let w = &c.workspace;
    assert!(
        !policies.selecting(w.pod.as_ref().unwrap(), Direction::Egress).is_empty(),
        "workspaces are egress-isolated"
    );
    for (what, to, port, protocol) in [
        ("a public address over HTTPS", outside("8.8.8.8"), 443, "TCP"),
        ("a public address on any port", outside("140.82.112.3"), 22, "TCP"),
        ("a public IPv6 address", outside("2001:4860:4860::8888"), 443, "TCP"),
        ("kube-dns over UDP", c.kube_dns.clone(), 53, "UDP"),
        ("kube-dns over TCP", c.kube_dns.clone(), 53, "TCP"),
    ] {
        assert!(policies.connects(w, &to, port, protocol), "a workspace must reach {what} ({}:{port})", to.ip);
    }
    for (what, to, port) in forbidden(&c) {
        for protocol in ["TCP", "UDP"] {
            assert!(!policies.connects(w, &to, port, protocol), "a workspace reaches {what} ({}:{port})", to.ip);
        }
    }
    // Its own ingress rule still holds: wakeway only.
    assert!(policies.connects(&c.wakeway, w, 8080, "TCP"), "wakeway reaches the workspace");
    assert!(!policies.connects(&c.other_workspace, w, 8080, "TCP"), "no workspace reaches another");
    assert!(!policies.connects(&outside("8.8.8.8"), w, 8080, "TCP"), "nothing outside reaches a workspace");
}

#[test]
fn jobs_reach_dns_only_and_nothing_reaches_them() {
    let policies = Policies::from_deploy();
    let c = cluster(&policies.namespace);
    for job in [&c.backup, &c.restore] {
        let labels = &job.pod.as_ref().unwrap().labels;
        for direction in [Direction::Ingress, Direction::Egress] {
            assert!(!policies.selecting(job.pod.as_ref().unwrap(), direction).is_empty(), "{labels:?} isolated");
        }
        assert!(policies.connects(job, &c.kube_dns, 53, "UDP"), "{labels:?} resolves names");
        assert!(policies.connects(job, &c.kube_dns, 53, "TCP"), "{labels:?} resolves names");
        assert!(!policies.connects(job, &outside("8.8.8.8"), 443, "TCP"), "{labels:?} reaches the internet");
        assert!(!policies.connects(job, &outside("10.96.0.1"), 443, "TCP"), "{labels:?} reaches the API server");
        for (what, to, port) in forbidden(&c) {
            assert!(!policies.connects(job, &to, port, "TCP"), "{labels:?} reaches {what} ({}:{port})", to.ip);
        }
        for from in [&c.wakeway, &c.workspace] {
            assert!(!policies.connects(from, job, 8080, "TCP"), "{labels:?} accepts a connection");
        }
    }
    // wakeway and Redis keep working: wakeway (not isolated) reaches Redis, and nothing else does.
    assert!(policies.connects(&c.wakeway, &c.redis, 6379, "TCP"));
    assert!(!policies.connects(&outside("8.8.8.8"), &c.redis, 6379, "TCP"));
}

/// `JSON 6902` `add` (the only operation the overlay uses): `/a/0/b/-` appends.
fn json_patch_add(doc: &mut Value, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('/').skip(1).collect();
    let last = parts.pop().expect("a path");
    let mut at = doc;
    for part in parts {
        at = match at {
            Value::Array(items) => &mut items[part.parse::<usize>().unwrap()],
            other => other.get_mut(part).unwrap_or_else(|| panic!("{path}: no {part}")),
        };
    }
    match at {
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => items.insert(last.parse().unwrap(), value),
        Value::Object(map) => drop(map.insert(last.into(), value)),
        other => panic!("{path}: cannot add to {other}"),
    }
}

/// The documented knob: `overlays/custom-ranges/` (next to `deploy/`) adds a cluster's own ranges to what a
/// workspace may not reach. Applied here as kustomize would, its ranges go from reachable to denied.
#[test]
fn the_custom_ranges_overlay_denies_the_ranges_it_adds() {
    let folder = deploy_dir().join("../overlays/custom-ranges");
    let kustomization: Value =
        serde_yaml::from_str(&std::fs::read_to_string(folder.join("kustomization.yaml")).unwrap()).unwrap();
    let base = folder.join(kustomization["resources"][0].as_str().unwrap());
    assert_eq!(base.canonicalize().unwrap(), deploy_dir().canonicalize().unwrap(), "the overlay builds on deploy/");
    let patch = &kustomization["patches"][0];
    let target = &patch["target"];
    assert_eq!(target["kind"], "NetworkPolicy");
    let ops: Vec<Value> =
        serde_yaml::from_str(&std::fs::read_to_string(folder.join(patch["path"].as_str().unwrap())).unwrap()).unwrap();

    let before = Policies::from_deploy();
    let mut after = Policies::from_deploy();
    let name = target["name"].as_str().unwrap();
    let policy = after.all.iter_mut().find(|p| p["metadata"]["name"] == name).expect("the target exists");
    for op in &ops {
        assert_eq!(op["op"], "add");
        json_patch_add(policy, op["path"].as_str().unwrap(), op["value"].clone());
    }
    let c = cluster(&before.namespace);
    assert!(!ops.is_empty());
    for op in &ops {
        let cidr = op["value"].as_str().unwrap();
        // An address inside the added range (its network address + 1).
        let inside = match ip(cidr.split('/').next().unwrap()) {
            IpAddr::V4(a) => IpAddr::from((u32::from(a) + 1).to_be_bytes()),
            IpAddr::V6(a) => IpAddr::from((u128::from(a) + 1).to_be_bytes()),
        };
        let to = Endpoint { ip: inside, pod: None };
        assert!(before.connects(&c.workspace, &to, 443, "TCP"), "{cidr} is reachable without the overlay");
        assert!(!after.connects(&c.workspace, &to, 443, "TCP"), "{cidr} is denied with the overlay");
    }
    // The overlay adds; the rest of the policy is unchanged.
    assert!(after.connects(&c.workspace, &outside("8.8.8.8"), 443, "TCP"));
    assert!(!after.connects(&c.workspace, &outside("169.254.169.254"), 80, "TCP"));
}

/// What the API server checks of an `ipBlock` (a real v1.36 server refused `::ffff:0:0/96`
/// here): every `except` is of the same family as `cidr`, strictly inside it, and not IPv4-mapped.
#[test]
fn every_ip_block_is_one_the_api_server_accepts() {
    let policies = Policies::from_deploy();
    let blocks: Vec<&Value> = policies
        .all
        .iter()
        .flat_map(|p| p["spec"]["egress"].as_array().into_iter().flatten())
        .flat_map(|rule| rule["to"].as_array().into_iter().flatten())
        .filter_map(|peer| peer.get("ipBlock"))
        .collect();
    assert_eq!(blocks.len(), 2, "an IPv4 and an IPv6 block");
    for block in blocks {
        let cidr = block["cidr"].as_str().unwrap();
        let (_, outer) = cidr.split_once('/').unwrap();
        for except in block["except"].as_array().unwrap() {
            let except = except.as_str().unwrap();
            let (net, inner) = except.split_once('/').unwrap();
            let net = ip(net);
            assert!(cidr_contains(cidr, net), "{except} is not inside {cidr}");
            assert!(inner.parse::<u32>().unwrap() > outer.parse().unwrap(), "{except} is not a strict subset");
            let mapped = matches!(net, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
            assert!(!mapped, "{except}: the API server refuses IPv4-mapped addresses");
        }
    }
}

#[test]
fn the_model_reads_cidrs_and_selectors_as_kubernetes_does() {
    assert!(cidr_contains("10.0.0.0/8", ip("10.255.0.1")));
    assert!(!cidr_contains("10.0.0.0/8", ip("11.0.0.1")));
    assert!(cidr_contains("0.0.0.0/0", ip("8.8.8.8")));
    assert!(!cidr_contains("0.0.0.0/0", ip("::1")), "families do not mix");
    assert!(cidr_contains("fc00::/7", ip("fd00:ec2::254")));
    assert!(cidr_contains("169.254.169.254/32", ip("169.254.169.254")));
    let labels = Labels::from([("a".into(), "1".into())]);
    assert!(selects(&serde_json::json!({}), &labels), "an empty selector selects everything");
    assert!(selects(
        &serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}),
        &labels
    ));
    assert!(!selects(
        &serde_json::json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
        &labels
    ));
    assert!(!selects(&serde_json::json!({"matchLabels": {"a": "1", "b": "2"}}), &labels));
    assert!(ports_match(&Value::Null, 1, "UDP"), "no ports: every port");
    assert!(!ports_match(&serde_json::json!([{"port": 53, "protocol": "UDP"}]), 53, "TCP"));
    assert!(ports_match(&serde_json::json!([{"port": 53}]), 53, "TCP"), "TCP by default");
}

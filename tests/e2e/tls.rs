//! HTTPS for every workspace host, proven against Pebble (a real ACME server, validation on):
//! HTTP-01 per host, DNS-01 wildcard through the hook and pebble-challtestsrv, renewal, restarts
//! that issue nothing new, hot-swapped files, clean failures.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::harness::{Wakeway, free_port};

const DOMAIN: &str = "example.test";
const LONG: Duration = Duration::from_secs(90);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn client_config(roots_pem: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// A CA and a leaf for 127.0.0.1/localhost (Pebble's own HTTPS), written as PEM files.
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "wakeway test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("pebble-cert.pem"), dir.join("pebble-key.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

/// Pebble plus pebble-challtestsrv (its DNS: every name → 127.0.0.1, TXT records on demand).
struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: u16,
    challtest: u16,
    ca: PathBuf,
}

impl Pebble {
    async fn start(dir: &Path, http_port: u16) -> Pebble {
        crate::harness::install_crypto_provider();
        for bin in ["/usr/bin/pebble", "/usr/bin/pebble-challtestsrv"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/install-test-deps.sh (Debian package pebble)"
            );
        }
        let (ca, cert, key) = test_ca(dir);
        let (listen, management, dns, challtest) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let challtestsrv = Command::new("/usr/bin/pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}"), "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtest}")])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let pebble = Command::new("/usr/bin/pebble")
            .args(["-config", dir.join("pebble.json").to_str().unwrap(), "-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        let p = Pebble {
            children: vec![challtestsrv, pebble],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            challtest,
            ca,
        };
        let client = p.client();
        for _ in 0..200 {
            if client.get(&p.directory).send().await.is_ok_and(|r| r.status() == 200) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pebble did not start: {}", std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default());
    }

    fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder().use_preconfigured_tls(client_config(&pem)).build().unwrap()
    }

    /// The root that signs the certificates Pebble issues (new on every start).
    async fn issuing_root(&self) -> Vec<u8> {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        self.client().get(url).send().await.unwrap().bytes().await.unwrap().to_vec()
    }

    /// An executable `acme_dns_hook` that sets TXT records in challtestsrv.
    fn dns_hook(&self, dir: &Path) -> PathBuf {
        let path = dir.join("dns-hook.sh");
        let script = format!(
            "#!/bin/sh\n# wakeway acme_dns_hook for tests: $1 = set|clear, $2 = record, $3 = value\n\
             case \"$1\" in set) ep=set-txt ;; clear) ep=clear-txt ;; *) exit 2 ;; esac\n\
             echo \"$1 $2 $3\" >> {log}\n\
             exec curl -fsS -X POST -d \"{{\\\"host\\\":\\\"$2.\\\",\\\"value\\\":\\\"$3\\\"}}\" http://127.0.0.1:{port}/$ep\n",
            log = dir.join("dns-hook.log").display(),
            port = self.challtest
        );
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The certificate the TLS listener presents for `sni`: (DNS names, serial), or the handshake error.
async fn served_cert(tls_port: u16, sni: &str, roots_pem: &[u8]) -> Result<(Vec<String>, String), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(roots_pem)));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?.clone();
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| if let GeneralName::DNSName(d) = n { Some(d.to_string()) } else { None })
                .collect()
        })
        .unwrap_or_default();
    Ok((names, cert.raw_serial_as_string()))
}

/// Poll until the listener presents a certificate for `sni` that the roots trust.
async fn wait_for_cert(tls_port: u16, sni: &str, roots: &[u8], w: &Wakeway) -> (Vec<String>, String) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        match served_cert(tls_port, sni, roots).await {
            Ok(found) => return found,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("no trusted certificate for {sni}: {e}\nlog:\n{}", w.log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn https_client(tls_port: u16, host: &str, roots: &[u8]) -> reqwest::Client {
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    reqwest::Client::builder().use_preconfigured_tls(client_config(roots)).resolve(host, addr).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_certificate_per_workspace_host_and_a_restart_reuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_port(), free_port());
    let pebble = Pebble::start(tmp.path(), plain).await;
    let env = |renew: &'static str| {
        vec![
            ("WAKEWAY_LISTEN".to_string(), format!("127.0.0.1:{plain}")),
            ("WAKEWAY_TLS_LISTEN".to_string(), format!("127.0.0.1:{tls}")),
            ("WAKEWAY_DOMAIN".to_string(), DOMAIN.to_string()),
            ("WAKEWAY_ACME".to_string(), "http01".to_string()),
            ("WAKEWAY_ACME_DIRECTORY".to_string(), pebble.directory.clone()),
            ("WAKEWAY_ACME_CA_FILE".to_string(), pebble.ca.display().to_string()),
            ("WAKEWAY_ACME_CHECK_INTERVAL".to_string(), "1s".to_string()),
            ("WAKEWAY_ACME_RENEW_BEFORE".to_string(), renew.to_string()),
        ]
    };
    let env_normal = env("30d");
    let mut w = Wakeway::start_in(tmp.path(), &as_refs(&env_normal)).await;
    let roots = pebble.issuing_root().await;
    let id = w.create().await;
    let host = format!("vs-code-{id}.{DOMAIN}");
    let (names, serial) = wait_for_cert(tls, &host, &roots, &w).await;
    assert_eq!(names, std::slice::from_ref(&host), "a certificate for exactly this workspace host");

    // The workspace over HTTPS and HTTP/2, trusting only Pebble's root.
    w.wait_state(&id, "running", LONG).await;
    let client = https_client(tls, &host, &roots);
    let r = client.get(format!("https://{host}:{tls}/headers")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");

    // No certificate for hosts without a session: an unknown SNI fails the handshake cleanly.
    let err = served_cert(tls, &format!("vs-code-0badc0de.{DOMAIN}"), &roots).await.unwrap_err();
    assert!(!err.is_empty());
    let health: Value = w.client.get(w.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["problems"], serde_json::json!({}), "{health}");
    assert!(w.metrics().await.contains("wakeway_acme_orders_total{result=\"ok\"} 1"));

    // A restart loads the certificate from the store: same serial, no new order.
    w.stop();
    let w = Wakeway::start_in(tmp.path(), &as_refs(&env_normal)).await;
    let (_, again) = wait_for_cert(tls, &host, &roots, &w).await;
    assert_eq!(again, serial, "the stored certificate is served after a restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!w.metrics().await.contains("wakeway_acme_orders_total{result=\"ok\"}"), "nothing issued again");
    drop(w);

    // Renewal: with renew_before longer than the certificate's life (36500d, the longest duration
    // allowed), every check renews it, and the new certificate replaces the old one without a restart.
    let env_renew = env("36500d");
    let w = Wakeway::start_in(tmp.path(), &as_refs(&env_renew)).await;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (_, current) = wait_for_cert(tls, &host, &roots, &w).await;
        if current != serial {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the certificate was not renewed:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_issues_the_wildcard_through_the_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_port(), free_port());
    let pebble = Pebble::start(tmp.path(), plain).await;
    let hook = pebble.dns_hook(tmp.path());
    let env = [
        ("WAKEWAY_LISTEN", format!("127.0.0.1:{plain}")),
        ("WAKEWAY_TLS_LISTEN", format!("127.0.0.1:{tls}")),
        ("WAKEWAY_DOMAIN", DOMAIN.to_string()),
        ("WAKEWAY_ACME", "dns01".to_string()),
        ("WAKEWAY_ACME_DIRECTORY", pebble.directory.clone()),
        ("WAKEWAY_ACME_CA_FILE", pebble.ca.display().to_string()),
        ("WAKEWAY_ACME_DNS_HOOK", hook.display().to_string()),
        ("WAKEWAY_ACME_CHECK_INTERVAL", "1s".to_string()),
    ];
    let w = Wakeway::start_in(tmp.path(), &env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let roots = pebble.issuing_root().await;
    let id = w.create().await;
    let host = format!("vs-code-{id}.{DOMAIN}");
    let (names, _) = wait_for_cert(tls, &host, &roots, &w).await;
    assert_eq!(names, [format!("*.{DOMAIN}")], "one wildcard covers every workspace");
    let calls = std::fs::read_to_string(tmp.path().join("dns-hook.log")).unwrap();
    assert!(calls.contains(&format!("set _acme-challenge.{DOMAIN} ")), "{calls}");
    assert!(calls.contains(&format!("clear _acme-challenge.{DOMAIN} ")), "the record is removed afterwards: {calls}");
    w.wait_state(&id, "running", LONG).await;
    let r = https_client(tls, &host, &roots).get(format!("https://{host}:{tls}/headers")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_hot_swapped_and_acme_failures_are_visible() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |names: &[&str]| -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // Write the key first, then the certificate: the reload is triggered by either change.
        std::fs::write(tmp.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(tmp.path().join("cert.pem"), cert.pem()).unwrap();
        cert.pem().into_bytes()
    };
    let first = write(&[&format!("*.{DOMAIN}")]);
    let tls = free_port();
    let env = [
        ("WAKEWAY_TLS_LISTEN", format!("127.0.0.1:{tls}")),
        ("WAKEWAY_DOMAIN", DOMAIN.to_string()),
        ("WAKEWAY_TLS_CERT_FILE", tmp.path().join("cert.pem").display().to_string()),
        ("WAKEWAY_TLS_KEY_FILE", tmp.path().join("key.pem").display().to_string()),
        ("WAKEWAY_REDIRECT_HTTP_TO_HTTPS", "true".to_string()),
    ];
    let w = Wakeway::start_in(tmp.path(), &env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let host = format!("vs-code-abc12345.{DOMAIN}");
    let (_, serial) = wait_for_cert(tls, &host, &first, &w).await;

    // Plain HTTP to a workspace host is redirected to HTTPS (the API host is not).
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = plain.get(w.url("/x?y=1")).header("host", format!("{host}:{}", w.port)).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], format!("https://{host}:{tls}/x?y=1"));
    assert_eq!(plain.get(w.url("/health")).send().await.unwrap().status(), 200);

    let second = write(&[&format!("*.{DOMAIN}")]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((_, now)) = served_cert(tls, &host, &second).await {
            assert_ne!(now, serial);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new files were not picked up:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken file is refused and the previous certificate stays in use.
    std::fs::write(tmp.path().join("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(served_cert(tls, &host, &second).await.is_ok(), "the valid certificate is kept");
    let health: Value = w.client.get(w.url("/health")).send().await.unwrap().json().await.unwrap();
    assert!(health["problems"]["tls_files"].as_str().unwrap().contains("cert.pem"), "{health}");
    drop(w);

    // An unreachable ACME directory: visible in /health and logs; plain HTTP keeps working.
    let tmp2 = tempfile::tempdir().unwrap();
    let env = [
        ("WAKEWAY_TLS_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("WAKEWAY_DOMAIN", DOMAIN.to_string()),
        ("WAKEWAY_ACME", "http01".to_string()),
        ("WAKEWAY_ACME_DIRECTORY", format!("https://127.0.0.1:{}/dir", free_port())),
        ("WAKEWAY_ACME_CHECK_INTERVAL", "1s".to_string()),
    ];
    let w = Wakeway::start_in(tmp2.path(), &env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let id = w.create().await;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let health: Value = w.client.get(w.url("/health")).send().await.unwrap().json().await.unwrap();
        if health["problems"]["acme"].is_string() {
            assert_eq!(health["status"], "healthy", "an ACME failure does not take wakeway down");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the ACME failure never showed in /health: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.wait_state(&id, "running", LONG).await;
    let r = w
        .client
        .get(w.url("/headers"))
        .header("host", format!("vs-code-{id}.{DOMAIN}:{}", w.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "plain HTTP keeps serving the workspace");
    assert!(w.log().contains("certificate issuance failed"));
}

/// Chromium (Debian's, driven by playwright-core) loads a workspace over HTTPS through wakeway with a
/// certificate Pebble issued, trusting only Pebble's root in its NSS database (no certificate-error
/// flags), and a WebSocket over wss:// echoes through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_trusts_the_issued_certificate_and_speaks_wss() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("tests/browser/https.mjs");
    let playwright = repo.join("tests/browser/node_modules/playwright-core/package.json");
    for (what, ok) in [
        ("Chromium (/usr/bin/chromium)", Path::new("/usr/bin/chromium").exists()),
        ("certutil (libnss3-tools)", Path::new("/usr/bin/certutil").exists()),
        ("playwright-core (npm ci in tests/browser)", playwright.exists()),
    ] {
        assert!(ok, "{what} is missing: run scripts/install-browser-test-deps.sh");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_port(), free_port());
    let pebble = Pebble::start(tmp.path(), plain).await;
    let env = [
        ("WAKEWAY_LISTEN", format!("127.0.0.1:{plain}")),
        ("WAKEWAY_TLS_LISTEN", format!("127.0.0.1:{tls}")),
        ("WAKEWAY_DOMAIN", DOMAIN.to_string()),
        ("WAKEWAY_ACME", "http01".to_string()),
        ("WAKEWAY_ACME_DIRECTORY", pebble.directory.clone()),
        ("WAKEWAY_ACME_CA_FILE", pebble.ca.display().to_string()),
        ("WAKEWAY_ACME_CHECK_INTERVAL", "1s".to_string()),
    ];
    let w = Wakeway::start_in(tmp.path(), &env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let roots = pebble.issuing_root().await;
    let id = w.create().await;
    let host = format!("vs-code-{id}.{DOMAIN}");
    wait_for_cert(tls, &host, &roots, &w).await;
    w.wait_state(&id, "running", LONG).await;

    // A fresh NSS database that trusts Pebble's root, in a HOME of its own.
    let home = tmp.path().join("home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    std::fs::write(tmp.path().join("pebble-root.pem"), &roots).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let certutil = |args: &[&str]| {
        let out = Command::new("/usr/bin/certutil").args(args).output().unwrap();
        assert!(out.status.success(), "certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    certutil(&["-N", "-d", &db, "--empty-password"]);
    let root_path = tmp.path().join("pebble-root.pem").display().to_string();
    certutil(&["-A", "-d", &db, "-n", "pebble", "-t", "C,,", "-i", &root_path]);

    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("https://{host}:{tls}/"))
        .arg(format!("MAP *.{DOMAIN} 127.0.0.1"))
        .env("HOME", &home)
        .output()
        .await
        .expect("run node (install it with scripts/install-browser-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["protocol"], "https:", "{result}");
    assert_eq!(result["title"], "testspace", "the workspace itself, over HTTPS: {result}");
    assert_eq!(result["echo"], "hello over wss", "a WebSocket over wss:// through wakeway: {result}");
}

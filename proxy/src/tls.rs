//! TLS certificates chosen per SNI at handshake time from an in-memory store that can be changed
//! while serving (files re-read, ACME issuance and renewal), plus the ACME HTTP-01 responses the
//! plain listener serves at `/.well-known/acme-challenge/<token>`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The path prefix ACME HTTP-01 validation requests use.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Why a certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in the PEM data")]
    NoCertificate,
    #[error("no usable private key in the PEM data: {0}")]
    Key(String),
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
}

/// What a certificate covers and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names (SANs), lowercase; wildcards as `*.example.com`.
    pub names: Vec<String>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// Parse a PEM chain and key into something rustls can serve (ring signing keys).
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<(Arc<CertifiedKey>, CertInfo), CertError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem).filter_map(Result::ok).collect();
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let info = cert_info(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| CertError::Key(e.to_string()))?;
    Ok((Arc::new(CertifiedKey::new(chain, signer)), info))
}

fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| CertError::Parse(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(CertInfo { names, not_after: cert.validity().not_after.timestamp() })
}

/// Certificates by name, swapped at run time; the resolver rustls asks on every handshake.
#[derive(Default)]
pub struct CertStore {
    /// Exact names and `*.suffix` wildcards → certificate.
    by_name: RwLock<HashMap<String, (Arc<CertifiedKey>, CertInfo)>>,
    /// Served when nothing matches the SNI (or there is none), e.g. the configured files.
    fallback: RwLock<Option<(Arc<CertifiedKey>, CertInfo)>>,
    /// ACME HTTP-01 token → key authorization.
    challenges: DashMap<String, String>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("names", &self.names()).finish()
    }
}

impl CertStore {
    pub fn new() -> Arc<Self> {
        Arc::new(CertStore::default())
    }

    /// Serve `chain`/`key` for every name it covers (replacing older ones).
    pub fn insert(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<CertInfo, CertError> {
        let (key, info) = certified_key(chain_pem, key_pem)?;
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        for name in &info.names {
            map.insert(name.clone(), (key.clone(), info.clone()));
        }
        Ok(info)
    }

    /// Serve `chain`/`key` when no name matches.
    pub fn set_fallback(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<CertInfo, CertError> {
        let (key, info) = certified_key(chain_pem, key_pem)?;
        *self.fallback.write().unwrap_or_else(|e| e.into_inner()) = Some((key, info.clone()));
        Ok(info)
    }

    /// Stop serving a name's certificate (its session was deleted).
    pub fn remove(&self, name: &str) {
        self.by_name.write().unwrap_or_else(|e| e.into_inner()).remove(&name.to_ascii_lowercase());
    }

    /// The certificate that covers `name` exactly or by wildcard (not the fallback).
    pub fn covering(&self, name: &str) -> Option<CertInfo> {
        let name = name.to_ascii_lowercase();
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        map.get(&name).or_else(|| wildcard.and_then(|w| map.get(&w))).map(|(_, info)| info.clone())
    }

    /// Every name with a certificate.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        names.sort();
        names
    }

    /// The certificate for a handshake with this SNI: exact name, then a wildcard one label up,
    /// then the fallback. `None` fails the handshake cleanly.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
            if let Some((key, _)) = map.get(&sni) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = sni.split_once('.')
                && let Some((key, _)) = map.get(&format!("*.{parent}"))
            {
                return Some(key.clone());
            }
        }
        self.fallback.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(key, _)| key.clone())
    }

    /// Publish an HTTP-01 response.
    pub fn add_challenge(&self, token: &str, key_authorization: &str) {
        self.challenges.insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove_challenge(&self, token: &str) {
        self.challenges.remove(token);
    }

    /// The key authorization for an HTTP-01 token, if one is pending.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.challenges.get(token).map(|v| v.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// The resolver as pingora wants it (a newtype, so the store itself stays shareable).
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.lookup(hello.server_name())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` (test helper).
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_fallback() {
        let store = CertStore::new();
        let (c1, k1) = self_signed(&["vs-code-abc12345.example.com"]);
        let (c2, k2) = self_signed(&["*.example.com"]);
        let (c3, k3) = self_signed(&["fallback.invalid"]);
        assert_eq!(store.lookup(Some("vs-code-abc12345.example.com")).map(|_| ()), None, "empty store");
        let exact = store.insert(c1.as_bytes(), k1.as_bytes()).unwrap();
        assert_eq!(exact.names, ["vs-code-abc12345.example.com"]);
        store.insert(c2.as_bytes(), k2.as_bytes()).unwrap();
        store.set_fallback(c3.as_bytes(), k3.as_bytes()).unwrap();
        let leaf = |sni: Option<&str>| store.lookup(sni).unwrap().cert[0].clone();
        let (e, w, f) = (leaf(Some("vs-code-abc12345.example.com")), leaf(Some("other.example.com")), leaf(None));
        assert!(e != w && w != f && e != f);
        assert_eq!(leaf(Some("VS-Code-ABC12345.Example.com.")), e, "case and trailing dot");
        assert_eq!(leaf(Some("a.b.example.com")), f, "a wildcard covers one label only");
        assert_eq!(store.covering("x.example.com").unwrap().names, ["*.example.com"]);
        store.remove("vs-code-abc12345.example.com");
        assert_eq!(leaf(Some("vs-code-abc12345.example.com")), w);
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        let store = CertStore::new();
        assert!(matches!(store.insert(b"", b""), Err(CertError::NoCertificate)));
        let (c, _) = self_signed(&["a.example"]);
        assert!(matches!(store.insert(c.as_bytes(), b"not a key"), Err(CertError::Key(_))));
    }

    #[test]
    fn expiry_is_read() {
        let (c, k) = self_signed(&["a.example"]);
        let info = CertStore::new().insert(c.as_bytes(), k.as_bytes()).unwrap();
        assert!(info.not_after > 1_700_000_000, "{info:?}");
    }
}

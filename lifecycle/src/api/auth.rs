//! API keys: constant-time check, several keys for rotation, generated once if none is configured.

use rand::Rng;
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

/// The accepted keys, kept as SHA-256 digests so comparison time does not depend on the key.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        ApiKeys { digests: keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect() }
    }

    /// The index of the matching key, comparing against every key in constant time.
    pub fn check(&self, presented: &str) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (i, d) in self.digests.iter().enumerate() {
            if bool::from(d.ct_eq(&digest)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

/// Read a generated secret (API key, cookie secret) from `path`, or create it: 48 hex digits, mode
/// 0600, fsynced. Returns the secret and whether it was just created (so a key is printed once).
pub fn load_or_generate_secret(path: &Path) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 16 => return Ok((text.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes: [u8; 24] = rand::rng().random();
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(key.as_bytes())?;
    file.sync_all()?;
    Ok((key, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let keys = ApiKeys::new(&["first-key-0123456789".into(), "second-key-0123456789".into()]);
        assert_eq!(keys.check("first-key-0123456789"), Some(0));
        assert_eq!(keys.check("second-key-0123456789"), Some(1));
        assert_eq!(keys.check("first-key-012345678"), None);
        assert_eq!(keys.check(""), None);
    }

    #[test]
    fn a_generated_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (key, new) = load_or_generate_secret(&dir.path().join("api-key")).unwrap();
        assert!(new && key.len() == 48);
        let (again, new) = load_or_generate_secret(&dir.path().join("api-key")).unwrap();
        assert!(!new && again == key);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("api-key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

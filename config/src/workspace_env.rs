//! Variables an operator adds to every workspace's environment (`[local] env`, `[kubernetes] env`): names that
//! a shell and the container runtime take, and never one of wakeway's own (`WAKEWAY_*`), so a
//! workspace cannot be handed something that looks like wakeway's configuration or secrets.

use std::collections::BTreeMap;

/// wakeway's own variables start with this; none may be given to a workspace.
const RESERVED_PREFIX: &str = "WAKEWAY_";

/// Check the table `key` (e.g. `kubernetes.env`): every name is a C identifier
/// (`[A-Za-z_][A-Za-z0-9_]*`, what `sh` can export) not starting with `WAKEWAY_` in any case,
/// and no value holds a NUL byte (no process environment can).
pub fn validate(key: &str, env: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in env {
        let mut bytes = name.bytes();
        let identifier = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !identifier {
            return Err(format!("{key}: {name:?} is not a variable name (letters, digits and _, not first a digit)"));
        }
        if name.to_ascii_uppercase().starts_with(RESERVED_PREFIX) {
            return Err(format!(
                "{key}: {name} is reserved: WAKEWAY_* variables are wakeway's own, never a workspace's"
            ));
        }
        if value.contains('\0') {
            return Err(format!("{key}: the value of {name} contains a NUL byte"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str) -> Result<(), String> {
        validate("kubernetes.env", &BTreeMap::from([(name.to_string(), "v".to_string())]))
    }

    #[test]
    fn names_a_shell_takes_and_never_wakeways_own() {
        for ok in ["TZ", "HTTPS_PROXY", "_private", "lower_case1", "GIT_AUTHOR_NAME"] {
            check(ok).unwrap();
        }
        for (bad, why) in [
            ("", "not a variable name"),
            ("1ABC", "not a variable name"),
            ("A-B", "not a variable name"),
            ("A=B", "not a variable name"),
            ("ÄRGER", "not a variable name"),
            ("WAKEWAY_API_KEYS", "reserved"),
            ("wakeway_cookie_secret", "reserved"),
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains(why) && err.contains("kubernetes.env"), "{bad}: {err}");
        }
        let nul = BTreeMap::from([("A".to_string(), "x\0y".to_string())]);
        assert!(validate("kubernetes.env", &nul).unwrap_err().contains("NUL"));
    }
}

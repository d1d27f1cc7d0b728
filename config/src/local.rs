//! The `[local]` table: how the local backend isolates the workspaces it runs as processes.
//! Every key is overridable as `WAKEWAY_LOCAL_<KEY>` (e.g. `WAKEWAY_LOCAL_ISOLATION=off`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::typed::UidRange;

/// Whether each local workspace runs under a uid of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// On when wakeway runs as root (a container, a system service); off otherwise, with a warning
    /// at start-up and in `/health`.
    #[default]
    Auto,
    /// Required: wakeway refuses to start unless it can give each workspace its own uid.
    On,
    /// Every workspace runs as wakeway's own user (one trusted user on one machine).
    Off,
}

/// Settings of the local backend (read only when `backend = "local"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// `auto`, `on` or `off`: see [`Isolation`].
    pub isolation: Isolation,
    /// The uids (each also the gid) given to isolated workspaces, one each, `first-last`.
    #[serde(with = "crate::typed::uid_range")]
    pub uids: UidRange,
    /// Extra environment variables of every workspace, on top of the allow-listed ones.
    pub env: BTreeMap<String, String>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            isolation: Isolation::Auto,
            uids: UidRange { first: 200_000, last: 299_999 },
            env: BTreeMap::new(),
        }
    }
}

impl LocalConfig {
    /// `uids` as an inclusive range.
    pub fn uid_range(&self) -> std::ops::RangeInclusive<u32> {
        self.uids.range()
    }

    pub fn validate(&self) -> Result<(), String> {
        let range = self.uid_range();
        // Below 1000 are system accounts; 65534 is `nobody`; 2^31 and above confuse tools that
        // read ids as signed numbers.
        if *range.start() < 1000 || range.contains(&65534) || *range.end() >= 1 << 31 {
            return Err(format!(
                "local.uids {:?} must lie within 1000–2147483647 and leave out 65534 (nobody)",
                self.uids.to_string()
            ));
        }
        crate::workspace_env::validate("local.env", &self.env)
    }
}

//! `WAKEWAY_<KEY>` environment overrides, one for every config key, converted by the type of
//! the key's current value so a new key is overridable without code here.

use std::collections::BTreeMap;

use crate::{Config, ConfigError};

/// Where environment variables come from (the process, or a map in tests).
pub trait Env {
    /// Every variable, name and value.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
    }
}

/// A fixed set of variables.
#[derive(Default)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    pub fn new<const N: usize>(pairs: [(&str, &str); N]) -> Self {
        MapEnv(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

impl Env for MapEnv {
    fn vars(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

const PREFIX: &str = "WAKEWAY_";

/// Variables that are not config keys but are still ours (read elsewhere).
const OTHER_VARS: &[&str] = &["WAKEWAY_CONFIG", "WAKEWAY_LOG", "WAKEWAY_TOOLS", "WAKEWAY_FAILPOINT"];

/// Apply every `WAKEWAY_<KEY>` to `config`. `WAKEWAY_API_KEY` sets a single key;
/// `WAKEWAY_API_KEYS` takes a comma-separated list. Unknown `WAKEWAY_*` names are an error, so a
/// typo never goes unnoticed.
pub(crate) fn apply(config: &mut Config, env: &dyn Env) -> Result<(), ConfigError> {
    let toml::Value::Table(mut table) =
        toml::Value::try_from(&*config).map_err(|e| ConfigError::Invalid(format!("cannot represent config: {e}")))?
    else {
        unreachable!("a struct serializes to a table")
    };
    let mut changed = false;
    for (var, value) in env.vars() {
        let Some(key) = var.strip_prefix(PREFIX) else { continue };
        if OTHER_VARS.contains(&var.as_str()) {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let env_err =
            |message: String| ConfigError::Env { var: var.clone(), value: mask_if_secret(&var, &value), message };
        if key == "api_key" {
            let parsed = convert(&toml::Value::Array(vec![]), &value, "api_keys").map_err(env_err)?;
            table.insert("api_keys".into(), parsed);
        } else if let Some(current) = table.get(&key) {
            let parsed = convert(current, &value, &key).map_err(env_err)?;
            table.insert(key, parsed);
        } else if let Some((outer, inner)) = nested_key(&table, &key) {
            // `WAKEWAY_<TABLE>_<KEY>` sets one key of a table (`WAKEWAY_KUBERNETES_NAMESPACE`).
            let Some(toml::Value::Table(sub)) = table.get_mut(&outer) else { unreachable!("nested_key found it") };
            let parsed = convert(&sub[&inner], &value, &format!("{outer}.{inner}")).map_err(env_err)?;
            sub.insert(inner, parsed);
        } else {
            return Err(env_err("unknown setting (see `wakeway check-config` for every key)".into()));
        }
        changed = true;
    }
    if changed {
        *config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(format!("environment overrides: {}", e.message())))?;
    }
    Ok(())
}

/// `kubernetes_namespace` → (`kubernetes`, `namespace`) when the table `kubernetes` has that key.
fn nested_key(table: &toml::Table, key: &str) -> Option<(String, String)> {
    table.iter().find_map(|(outer, value)| {
        let toml::Value::Table(sub) = value else { return None };
        let inner = key.strip_prefix(outer.as_str())?.strip_prefix('_')?;
        sub.contains_key(inner).then(|| (outer.clone(), inner.to_string()))
    })
}

fn mask_if_secret(var: &str, value: &str) -> String {
    if var.contains("KEY") || var.contains("SECRET") { crate::mask(value) } else { value.to_string() }
}

fn convert(current: &toml::Value, text: &str, key: &str) -> Result<toml::Value, String> {
    use toml::Value;
    Ok(match current {
        Value::String(_) => Value::String(text.to_string()),
        Value::Integer(_) => Value::Integer(text.trim().parse().map_err(|_| format!("{key} takes a whole number"))?),
        Value::Float(_) => Value::Float(text.trim().parse().map_err(|_| format!("{key} takes a number"))?),
        Value::Boolean(_) => Value::Boolean(match text.trim() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(format!("{key} takes true or false")),
        }),
        Value::Array(_) => Value::Array(
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_string())).collect(),
        ),
        Value::Table(_) => {
            let wrapped = format!("v = {{ {text} }}");
            let mut parsed: toml::Table =
                toml::from_str(&wrapped).map_err(|e| format!("{key} takes an inline TOML table: {}", e.message()))?;
            parsed.remove("v").unwrap_or(Value::Table(Default::default()))
        }
        Value::Datetime(_) => return Err(format!("{key} cannot be set from the environment")),
    })
}

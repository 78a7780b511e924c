//! Layered configuration: built-in defaults, then a TOML file, then `HERMES_*` environment
//! variables, then command-line flags. Every layer uses the same key names: the key
//! `mqtt.addr` is `[mqtt] addr` in the file, `HERMES_MQTT__ADDR` in the environment and
//! `--mqtt-addr` on the command line. Unknown keys are errors that name the key.
//!
//! Only `HERMES_<SECTION>__<KEY>` (or `HERMES_<KEY>` for a top-level key) names a setting:
//! other variables that merely start with `HERMES_` (a script's `HERMES_BIN`, the `--config`
//! flag's `HERMES_CONFIG`) are not settings and are left alone.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::Value;
use toml::map::Map;

/// Prefix of every environment variable Hermes reads.
pub const ENV_PREFIX: &str = "HERMES_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Builds the effective configuration. `overrides` are (dotted key, value) pairs from flags.
pub fn load<T: DeserializeOwned + Serialize + Default>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, Value)],
) -> Result<T, ConfigError> {
    let mut tree = Value::try_from(T::default()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let file_tree: Value = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source: Box::new(source) })?;
        merge(&mut tree, file_tree);
    }
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let dotted = rest.to_ascii_lowercase().replace("__", ".");
        if !dotted.contains('.') && !is_top_level_setting(&tree, &dotted) {
            continue;
        }
        set(&mut tree, &dotted, scalar(&raw))?;
    }
    for (key, value) in overrides {
        set(&mut tree, key, value.clone())?;
    }
    // Going through text makes serde's errors point at the offending `key = value` line.
    let text = toml::to_string(&tree).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    toml::from_str(&text).map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
}

/// Whether `key` is a setting of the configuration's top level (not a section).
fn is_top_level_setting(tree: &Value, key: &str) -> bool {
    matches!(tree, Value::Table(t) if t.get(key).is_some_and(|v| !v.is_table()))
}

/// Renders a configuration as TOML, for `print-config`.
pub fn render<T: Serialize>(cfg: &T) -> String {
    toml::to_string_pretty(cfg).unwrap_or_else(|e| format!("# cannot render config: {e}"))
}

/// Reads an environment value as a TOML scalar when it is one (`5`, `true`), else a string.
fn scalar(raw: &str) -> Value {
    match toml::from_str::<Map<String, Value>>(&format!("v = {raw}")) {
        Ok(mut m) => match m.remove("v") {
            Some(v @ (Value::Integer(_) | Value::Boolean(_) | Value::Float(_) | Value::Array(_))) => v,
            _ => Value::String(raw.to_owned()),
        },
        Err(_) => Value::String(raw.to_owned()),
    }
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn set(tree: &mut Value, dotted: &str, value: Value) -> Result<(), ConfigError> {
    let mut node = tree;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Value::Table(t) = node else {
            return Err(ConfigError::Invalid(format!("`{dotted}` is not a configuration key")));
        };
        if i == parts.len() - 1 {
            t.insert((*part).to_owned(), value);
            return Ok(());
        }
        node = t.entry((*part).to_owned()).or_insert_with(|| Value::Table(Map::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        name: String,
        mqtt: Mqtt,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Mqtt {
        addr: String,
        workers: u32,
        anonymous: bool,
    }
    impl Default for Cfg {
        fn default() -> Self {
            Cfg { name: "x".into(), mqtt: Mqtt::default() }
        }
    }
    impl Default for Mqtt {
        fn default() -> Self {
            Mqtt { addr: "127.0.0.1:1883".into(), workers: 1, anonymous: false }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("hermes-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("c.toml");
        std::fs::write(&file, "[mqtt]\nworkers = 3\naddr = \"file\"\n").expect("write");
        let cfg: Cfg = load(
            Some(&file),
            env(&[("HERMES_MQTT__ADDR", "env"), ("HERMES_MQTT__ANONYMOUS", "true"), ("OTHER", "x")]),
            &[("mqtt.workers", Value::Integer(4))],
        )
        .expect("valid");
        assert_eq!(cfg.mqtt, Mqtt { addr: "env".into(), workers: 4, anonymous: true });
        assert_eq!(cfg.name, "x");
    }

    #[test]
    fn variables_that_only_start_with_the_prefix_are_not_settings() {
        let cfg: Cfg = load(
            None,
            env(&[
                ("HERMES_CONFIG", "hermes.toml"),
                ("HERMES_BIN", "/usr/bin/hermes"),
                ("HERMES_HOME", "/home/x"),
                ("HERMES_MQTT", "a section, not a value"),
                ("HERMES_NAME", "top-level key"),
            ]),
            &[],
        )
        .expect("valid");
        assert_eq!(cfg.name, "top-level key");
        assert_eq!(cfg.mqtt, Mqtt::default());
    }

    #[test]
    fn unknown_keys_and_bad_types_are_named() {
        let err = load::<Cfg>(None, env(&[("HERMES_MQTT__ADRR", "x")]), &[]).expect_err("unknown key");
        assert!(err.to_string().contains("adrr"), "{err}");
        let err = load::<Cfg>(None, env(&[("HERMES_MQTT__WORKERS", "many")]), &[]).expect_err("bad type");
        assert!(err.to_string().contains("workers") || err.to_string().contains("integer"), "{err}");
    }
}

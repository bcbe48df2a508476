//! Discovery configuration from a YAML file and `SEAM_*` environment variables, with typed errors.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::selector::{parse_ports, PortRange, Selector};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML for seam: {source}")]
    Yaml {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{key}: bad port list {value:?} (want e.g. 80,8000-8999)")]
    Ports { key: String, value: String },
    #[error("{key}: bad glob {value:?}: {reason}")]
    Glob {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{key}: {source}")]
    Propagation {
        key: String,
        source: seam_proto::msg::BadPropagation,
    },
    #[error("{key}: bad pid {value:?}")]
    Pid { key: String, value: String },
    #[error("no selector: set SEAM_OPEN_PORT, SEAM_AUTO_TARGET_EXE, SEAM_TARGET_PID or discovery.instrument in the config file")]
    NoSelector,
}

/// Where settings come from; tests inject a map instead of the process environment.
pub trait SettingSource {
    fn get(&self, key: &str) -> Option<String>;
}

#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl SettingSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.trim().is_empty())
    }
}

impl SettingSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSelector {
    name: Option<String>,
    open_ports: Option<String>,
    exe_path: Option<String>,
    pid: Option<u32>,
    context_propagation: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct FileDiscovery {
    #[serde(default)]
    instrument: Vec<FileSelector>,
    poll_interval_ms: Option<u64>,
}

/// The whole seam config file; each daemon reads only its own section.
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    discovery: FileDiscovery,
}

#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub selectors: Vec<Selector>,
    pub poll_interval_ms: u64,
}

fn glob(key: &str, value: &str) -> Result<glob::Pattern, ConfigError> {
    glob::Pattern::new(value).map_err(|e| ConfigError::Glob {
        key: key.to_string(),
        value: value.to_string(),
        reason: e.to_string(),
    })
}

fn ports(key: &str, value: &str) -> Result<Vec<PortRange>, ConfigError> {
    parse_ports(value).ok_or_else(|| ConfigError::Ports {
        key: key.to_string(),
        value: value.to_string(),
    })
}

pub fn load(file: Option<&Path>, env: &dyn SettingSource) -> Result<DiscoveryConfig, ConfigError> {
    let parsed: File = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
                path: path.display().to_string(),
                source,
            })?
        }
        None => File::default(),
    };
    let mut selectors = Vec::new();
    for (i, s) in parsed.discovery.instrument.iter().enumerate() {
        let key = format!("discovery.instrument[{i}]");
        selectors.push(Selector {
            service_name: s.name.clone(),
            exe: s.exe_path.as_deref().map(|g| glob(&key, g)).transpose()?,
            ports: s
                .open_ports
                .as_deref()
                .map(|p| ports(&key, p))
                .transpose()?
                .unwrap_or_default(),
            pids: s.pid.into_iter().collect(),
            propagation: s
                .context_propagation
                .as_deref()
                .map(|v| {
                    v.parse().map_err(|source| ConfigError::Propagation {
                        key: key.clone(),
                        source,
                    })
                })
                .transpose()?,
        });
    }
    // Environment selectors act like one more entry, as in OBI's quick settings.
    let env_ports = env
        .get("SEAM_OPEN_PORT")
        .map(|v| ports("SEAM_OPEN_PORT", &v))
        .transpose()?;
    let env_exe = env
        .get("SEAM_AUTO_TARGET_EXE")
        .map(|v| glob("SEAM_AUTO_TARGET_EXE", &v))
        .transpose()?;
    let env_pids = env
        .get("SEAM_TARGET_PID")
        .map(|v| {
            v.split(',')
                .map(|p| {
                    p.trim().parse::<u32>().map_err(|_| ConfigError::Pid {
                        key: "SEAM_TARGET_PID".into(),
                        value: v.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    if let Some(ports) = env_ports {
        selectors.push(Selector {
            ports,
            ..Selector::default()
        });
    }
    if let Some(exe) = env_exe {
        selectors.push(Selector {
            exe: Some(exe),
            ..Selector::default()
        });
    }
    if let Some(pids) = env_pids {
        selectors.push(Selector {
            pids,
            ..Selector::default()
        });
    }
    if selectors.is_empty() {
        return Err(ConfigError::NoSelector);
    }
    Ok(DiscoveryConfig {
        selectors,
        poll_interval_ms: parsed
            .discovery
            .poll_interval_ms
            .unwrap_or(250)
            .clamp(50, 1000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_selectors() {
        let c = load(
            None,
            &env(&[
                ("SEAM_OPEN_PORT", "80,8000-8999"),
                ("SEAM_TARGET_PID", "1, 2"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.selectors.len(), 2);
        assert_eq!(c.selectors[0].ports, vec![(80, 80), (8000, 8999)]);
        assert_eq!(c.selectors[1].pids, vec![1, 2]);
    }

    #[test]
    fn typed_errors() {
        assert!(matches!(
            load(None, &env(&[])),
            Err(ConfigError::NoSelector)
        ));
        assert!(matches!(
            load(None, &env(&[("SEAM_OPEN_PORT", "9-1")])),
            Err(ConfigError::Ports { .. })
        ));
        assert!(matches!(
            load(None, &env(&[("SEAM_AUTO_TARGET_EXE", "[")])),
            Err(ConfigError::Glob { .. })
        ));
        assert!(matches!(
            load(None, &env(&[("SEAM_TARGET_PID", "x")])),
            Err(ConfigError::Pid { .. })
        ));
        assert!(matches!(
            load(Some(Path::new("/nonexistent/seam.yaml")), &env(&[])),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn yaml_file_selectors() {
        let dir = std::env::temp_dir().join(format!("seam-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("seam.yaml");
        std::fs::write(
            &path,
            "discovery:\n  instrument:\n    - name: shop\n      open_ports: \"8080\"\n    - exe_path: \"*/python3*\"\nexporter:\n  trace_printer: text\n",
        )
        .expect("write");
        let c = load(Some(&path), &env(&[])).expect("valid");
        assert_eq!(c.selectors.len(), 2);
        assert_eq!(c.selectors[0].service_name.as_deref(), Some("shop"));
        std::fs::write(&path, "discovery:\n  instrument:\n    - bogus: 1\n").expect("write");
        assert!(matches!(
            load(Some(&path), &env(&[])),
            Err(ConfigError::Yaml { .. })
        ));
        std::fs::write(
            &path,
            "discovery:\n  instrument:\n    - pid: 7\n      context_propagation: tcp\n    - pid: 8\n",
        )
        .expect("write");
        let c = load(Some(&path), &env(&[])).expect("valid");
        assert_eq!(
            c.selectors[0].propagation,
            Some(seam_proto::msg::Propagation::Tcp)
        );
        assert_eq!(
            c.selectors[1].propagation, None,
            "no override: ctxprop's own"
        );
        std::fs::write(
            &path,
            "discovery:\n  instrument:\n    - pid: 7\n      context_propagation: sometimes\n",
        )
        .expect("write");
        assert!(matches!(
            load(Some(&path), &env(&[])),
            Err(ConfigError::Propagation { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

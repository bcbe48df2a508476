//! The correlator's section of seam's YAML configuration.

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelatorSection {
    /// Link a server span to the same-host client span that called it (default true).
    pub black_box: Option<bool>,
    /// Seconds after which a parent or caller is too old to link (default 10).
    pub max_transaction_time: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    correlator: CorrelatorSection,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot use {path}: {reason}")]
pub struct ConfigError {
    path: String,
    reason: String,
}

pub fn load(path: &Path) -> Result<CorrelatorSection, ConfigError> {
    let err = |reason: String| ConfigError {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: File = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    Ok(file.correlator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_section_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("seam-corr-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("seam.yaml");
        std::fs::write(&p, "discovery: {}\ncorrelator:\n  black_box: false\n").expect("write");
        assert_eq!(load(&p).expect("valid").black_box, Some(false));
        std::fs::write(&p, "correlator:\n  blackbox: false\n").expect("write");
        assert!(load(&p).is_err());
        assert!(load(&dir.join("missing.yaml")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

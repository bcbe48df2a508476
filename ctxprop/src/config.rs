//! How ctxprop propagates context: the `context_propagation` mode from flags, environment or seam's YAML file.

use std::path::Path;

use serde::Deserialize;

/// `context_propagation`, shared with discover (a selector may override it).
pub use seam_proto::msg::Propagation as Mode;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    BadMode(#[from] seam_proto::msg::BadPropagation),
    #[error("cannot use {path}: {reason}")]
    File { path: String, reason: String },
}

#[derive(Debug, Default, Deserialize)]
struct File {
    context_propagation: Option<Mode>,
}

/// The mode in seam's YAML file, if it sets one; other sections belong to other daemons.
pub fn mode_in_file(path: &Path) -> Result<Option<Mode>, ConfigError> {
    let err = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: File = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    Ok(file.context_propagation)
}

/// Flag or environment over the file over the default.
pub fn resolve(given: Option<&str>, file: Option<&Path>) -> Result<Mode, ConfigError> {
    if let Some(v) = given {
        return Ok(v.parse()?);
    }
    Ok(match file {
        Some(p) => mode_in_file(p)?.unwrap_or_default(),
        None => Mode::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_anything_else_is_refused() {
        assert_eq!("headers".parse::<Mode>().ok(), Some(Mode::Headers));
        assert_eq!("all".parse::<Mode>().ok(), Some(Mode::All));
        assert_eq!(" disabled ".parse::<Mode>().ok(), Some(Mode::Disabled));
        assert!("Headers".parse::<Mode>().is_err());
        assert!("on".parse::<Mode>().is_err());
        use seam_proto::msg::{CARRIER_HEADER, CARRIER_TCP_OPTION};
        assert_eq!(Mode::All.carriers(), CARRIER_HEADER | CARRIER_TCP_OPTION);
        assert_eq!(Mode::Headers.carriers(), CARRIER_HEADER);
        assert_eq!(Mode::Tcp.carriers(), CARRIER_TCP_OPTION);
        assert_eq!(Mode::Disabled.carriers(), 0);
    }

    #[test]
    fn flag_wins_over_file_and_default_is_disabled() {
        let dir = std::env::temp_dir().join(format!("seam-ctxprop-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("seam.yaml");
        std::fs::write(&p, "context_propagation: headers\ncorrelator: {}\n").expect("write");
        assert_eq!(resolve(None, Some(&p)).ok(), Some(Mode::Headers));
        assert_eq!(
            resolve(Some("disabled"), Some(&p)).ok(),
            Some(Mode::Disabled)
        );
        assert_eq!(resolve(None, None).ok(), Some(Mode::Disabled));
        std::fs::write(&p, "context_propagation: sometimes\n").expect("write");
        assert!(resolve(None, Some(&p)).is_err());
        std::fs::write(&p, "discovery: {}\n").expect("write");
        assert_eq!(resolve(None, Some(&p)).ok(), Some(Mode::Disabled));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

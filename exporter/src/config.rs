//! Exporter settings: the trace printer and whether OTLP export is on, from env and YAML.

use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrinterMode {
    Text,
    Json,
    Disabled,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("SEAM_TRACE_PRINTER must be text, json or disabled, not {0:?}")]
    Printer(String),
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct ExporterConfig {
    pub printer: PrinterMode,
    /// OTLP export is on when an endpoint is configured the standard way.
    pub otlp: bool,
    /// Span batches held while the collector is slow or down; beyond this they are dropped and counted.
    pub queue_batches: usize,
}

#[derive(Debug, Default, Deserialize)]
struct FileExporter {
    trace_printer: Option<PrinterMode>,
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    exporter: FileExporter,
}

fn parse_printer(v: &str) -> Result<PrinterMode, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(PrinterMode::Text),
        "json" => Ok(PrinterMode::Json),
        "disabled" | "none" | "off" => Ok(PrinterMode::Disabled),
        _ => Err(ConfigError::Printer(v.to_string())),
    }
}

/// `get` reads a setting (the environment in the daemon, a map in tests).
pub fn load(
    file: Option<&Path>,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<ExporterConfig, ConfigError> {
    let from_file: File = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
            serde_yaml::from_str(&text).map_err(|e| ConfigError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?
        }
        None => File::default(),
    };
    let otlp = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| get(k).is_some_and(|v| !v.trim().is_empty()));
    let printer = match get("SEAM_TRACE_PRINTER") {
        Some(v) => parse_printer(&v)?,
        None => from_file.exporter.trace_printer.unwrap_or(if otlp {
            PrinterMode::Disabled
        } else {
            PrinterMode::Text
        }),
    };
    let queue_batches = get("SEAM_EXPORT_QUEUE")
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096usize)
        .max(1);
    Ok(ExporterConfig {
        printer,
        otlp,
        queue_batches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(pairs: &[(&str, &str)]) -> Result<ExporterConfig, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(None, &|k| m.get(k).cloned())
    }

    #[test]
    fn printer_defaults_to_text_without_an_endpoint() {
        let c = with(&[]).expect("valid");
        assert_eq!(c.printer, PrinterMode::Text);
        assert!(!c.otlp);
        let c = with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).expect("valid");
        assert_eq!(c.printer, PrinterMode::Disabled);
        assert!(c.otlp);
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
            ("SEAM_TRACE_PRINTER", "json"),
        ])
        .expect("valid");
        assert_eq!(c.printer, PrinterMode::Json);
        assert!(matches!(
            with(&[("SEAM_TRACE_PRINTER", "fancy")]),
            Err(ConfigError::Printer(_))
        ));
    }
}

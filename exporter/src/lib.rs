//! seam's exporter: OTLP export of spans and RED metrics, and the terminal trace printer.

pub mod config;
pub mod metrics;
pub mod otlp;
pub mod printer;
pub mod resource;

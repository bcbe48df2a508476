//! seam's exporter: OTLP export of spans, RED metrics and seam's own counters, and the trace printer.

pub mod config;
pub mod metrics;
pub mod otlp;
pub mod printer;
pub mod resource;
pub mod selfmetrics;

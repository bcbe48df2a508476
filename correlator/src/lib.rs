//! seam's correlator: HTTP/1.x parsing, request/response pairing and span building.

pub mod batches;
pub mod config;
pub mod conn;
pub mod context;
pub mod engine;
pub mod handoff;
pub mod http;
pub mod idhash;
pub mod node;
pub mod span;
pub mod traceparent;

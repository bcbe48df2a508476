//! Daemon logging setup: structured `tracing` to stderr, level from `SEAM_LOG` (default info).

use tracing_subscriber::EnvFilter;

pub fn init_logging(role: crate::Role) {
    let filter = EnvFilter::try_from_env("SEAM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    tracing::debug!(role = %role, "logging ready");
}

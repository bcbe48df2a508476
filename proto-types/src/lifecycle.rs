//! Daemon lifecycle: signal handlers installed before a daemon says it is ready, then a wait for them.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT handlers, registered at construction so a signal that arrives early is
/// not fatal.
#[derive(Debug)]
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Registers the handlers; must run inside a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on SIGTERM or SIGINT and names which one arrived.
    pub async fn wait(mut self) -> &'static str {
        let sig = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(signal = sig, "stopping");
        sig
    }
}

/// Logs the line supervisors and tests wait for.
pub fn ready(role: crate::Role) {
    tracing::info!(role = %role, "ready");
}

/// Exit status for a daemon whose configuration was rejected (EX_USAGE).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Logs a bad configuration and returns exit status 64.
pub fn bad_config(error: &dyn std::fmt::Display) -> std::process::ExitCode {
    tracing::error!(error = %error, "bad configuration");
    std::process::ExitCode::from(EXIT_BAD_CONFIG)
}

/// Turns a daemon's outcome into its exit status, logging the full error chain on failure.
pub fn exit_code<E: std::fmt::Display>(
    role: crate::Role,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(role = %role, error = format!("{e:#}"), "daemon stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses the command line and environment; a rejected value exits 64 like any bad
/// configuration (clap alone would exit 2), while `--help` and `--version` exit 0.
pub fn parse_args<T: clap::Parser>() -> Result<T, std::process::ExitCode> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            std::process::ExitCode::from(EXIT_BAD_CONFIG)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}

/// Waits until every path exists (another daemon's pins), up to `patience`; false on timeout.
/// A daemon may start before the one that creates what it opens, or outlive its restart.
pub fn wait_for_paths(paths: &[std::path::PathBuf], patience: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        if paths.iter().all(|p| p.exists()) {
            return true;
        }
        if start.elapsed() >= patience {
            return false;
        }
        if !said {
            let missing: Vec<String> = paths
                .iter()
                .filter(|p| !p.exists())
                .map(|p| p.display().to_string())
                .collect();
            tracing::info!(missing = %missing.join(","), "waiting for the loader's pins");
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

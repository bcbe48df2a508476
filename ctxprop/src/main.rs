//! seam-ctxprop: the only daemon that modifies traffic — it adds trace context (a `traceparent` header, a TCP option) to instrumented processes' outgoing HTTP/1.x requests when configured to.

mod config;
mod inject;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use config::Mode;
use seam_proto::{ipc, msg::CtxpropRequest, privilege, role, Role};

#[derive(Debug, Parser)]
#[command(
    name = "seam-ctxprop",
    version,
    about = "Context propagation for seam: adds traceparent (header or TCP option) to instrumented processes' outgoing HTTP/1.x requests"
)]
struct Args {
    /// all | headers | tcp | disabled (default disabled: no traffic is ever modified).
    #[arg(long, env = "SEAM_CONTEXT_PROPAGATION")]
    context_propagation: Option<String>,
    /// seam's YAML configuration file (its top-level `context_propagation` is read here).
    #[arg(long, env = "SEAM_CONFIG")]
    config: Option<PathBuf>,
    /// The loader's pin directory, where the maps shared with the capture are.
    #[arg(long, env = "SEAM_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// Seconds to wait for the loader's pins.
    #[arg(long, env = "SEAM_PIN_WAIT", default_value_t = 60)]
    pin_wait: u64,
    /// The cgroup v2 directory whose processes' connections may be injected (default: the root).
    #[arg(long, env = "SEAM_CGROUP")]
    cgroup: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    seam_proto::telemetry::init_logging(Role::Ctxprop);
    let args = match seam_proto::lifecycle::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mode = match config::resolve(args.context_propagation.as_deref(), args.config.as_deref()) {
        Ok(m) => m,
        Err(e) => return seam_proto::lifecycle::bad_config(&e),
    };
    seam_proto::lifecycle::exit_code(Role::Ctxprop, run(&args, mode))
}

/// The target set, and the injector that acts on it when injection is on.
#[derive(Debug, Default)]
struct State {
    targets: std::collections::BTreeSet<u32>,
    injector: Option<inject::Injector>,
}

fn run(args: &Args, mode: Mode) -> Result<()> {
    privilege::enter_and_log(Role::Ctxprop)?;
    let state: Arc<Mutex<State>> = Arc::default();
    if mode.carriers() != 0 {
        let pin_dir = args.pin_dir.clone().unwrap_or_else(role::pin_dir);
        let cgroup = match &args.cgroup {
            Some(c) => c.clone(),
            None => inject::cgroup2_mount()?,
        };
        let injector = inject::Injector::start(
            &pin_dir,
            &cgroup,
            Duration::from_secs(args.pin_wait),
            mode.carriers(),
        )?;
        tracing::info!(mode = ?mode, cgroup = %cgroup.display(), "propagating context in instrumented processes' outgoing HTTP/1.x requests");
        lock(&state).injector = Some(injector);
    } else {
        tracing::info!("context propagation disabled: no traffic is modified");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = seam_proto::lifecycle::Shutdown::install()?;
        let listener = ipc::bind(Role::Ctxprop)?;
        let policy = ipc::PeerPolicy::for_role(Role::Ctxprop);
        let shared = state.clone();
        let server = ipc::serve::<CtxpropRequest, _>(listener, policy, move |_, req| {
            let mut st = lock(&shared);
            let State { targets, injector } = &mut *st;
            match req {
                CtxpropRequest::AddTarget { pid } => targets.insert(pid),
                CtxpropRequest::RemoveTarget { pid } => targets.remove(&pid),
            };
            // The kernel side follows the loader's target set (forks included) through the
            // socket marks; this set is what discover asked for, kept for the log.
            tracing::debug!(
                targets = targets.len(),
                injecting = injector.is_some(),
                "target set changed"
            );
        });
        seam_proto::lifecycle::ready(Role::Ctxprop);
        tokio::select! {
            _ = server => {}
            _ = shutdown.wait() => {}
        }
        Ok::<(), anyhow::Error>(())
    })?;
    if let Some(inj) = lock(&state).injector.take() {
        let counters: Vec<String> = inj
            .counters()
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        tracing::info!(counters = %counters.join(" "), "detaching; propagation counters");
        inj.stop();
    }
    let _ = std::fs::remove_file(Role::Ctxprop.socket_path());
    Ok(())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

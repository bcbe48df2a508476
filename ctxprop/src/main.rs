//! seam-ctxprop: the only daemon that modifies traffic — it adds trace context (a `traceparent` header, a TCP option) to instrumented processes' outgoing HTTP/1.x requests when configured to.

mod config;
mod inject;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use config::Mode;
use seam_proto::sampling::{KernelRule, Sampler};
use seam_proto::{ipc, msg::CtxpropRequest, privilege, role, selfstats, Role};

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
    // The same variables as the correlator: a trace started here is sent with the flag the
    // correlator's sampler gives it.
    let sampler = match Sampler::from_env(
        std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
        std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => return seam_proto::lifecycle::bad_config(&e),
    };
    seam_proto::lifecycle::exit_code(Role::Ctxprop, run(&args, mode, sampler.kernel_rule()))
}

/// Where the injector's programs go and what they default to.
#[derive(Debug, Clone)]
struct Plan {
    pin_dir: PathBuf,
    cgroup: Option<PathBuf>,
    pin_wait: Duration,
    default_carriers: u32,
    sampling: KernelRule,
}

impl Plan {
    fn start(&self) -> Result<inject::Injector> {
        let cgroup = match &self.cgroup {
            Some(c) => c.clone(),
            None => inject::cgroup2_mount()?,
        };
        let injector = inject::Injector::start(
            &self.pin_dir,
            &cgroup,
            self.pin_wait,
            self.default_carriers,
            self.sampling,
        )?;
        tracing::info!(carriers = self.default_carriers, cgroup = %cgroup.display(), "propagating context in instrumented processes' outgoing HTTP/1.x requests");
        Ok(injector)
    }
}

/// The target set (for the log) and the injector — started at once when the default propagates,
/// else at the first target whose selector turns propagation on (nothing is loaded while nothing
/// may be modified). The kernel reads each target's override from the loader's target set, so
/// forked children keep it; a target whose connections predate the programs is left alone.
#[derive(Debug)]
struct State {
    plan: Plan,
    targets: BTreeSet<u32>,
    injector: Option<inject::Injector>,
}

impl State {
    fn add(&mut self, pid: u32, propagation: Option<Mode>) -> Result<()> {
        self.targets.insert(pid);
        let turns_on = propagation.is_some_and(|m| m.carriers() != 0);
        if turns_on && self.injector.is_none() {
            self.injector = Some(self.plan.start()?);
        }
        Ok(())
    }
}

fn run(args: &Args, mode: Mode, sampling: KernelRule) -> Result<()> {
    privilege::enter_and_log(Role::Ctxprop)?;
    selfstats::publish(Role::Ctxprop, &role::run_dir());
    let plan = Plan {
        pin_dir: args.pin_dir.clone().unwrap_or_else(role::pin_dir),
        cgroup: args.cgroup.clone(),
        pin_wait: Duration::from_secs(args.pin_wait),
        default_carriers: mode.carriers(),
        sampling,
    };
    let injector = if plan.default_carriers != 0 {
        Some(plan.start()?)
    } else {
        tracing::info!(
            "context propagation disabled: no traffic is modified unless a selector turns it on"
        );
        None
    };
    let state = Arc::new(Mutex::new(State {
        plan,
        targets: BTreeSet::new(),
        injector,
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = seam_proto::lifecycle::Shutdown::install()?;
        let listener = ipc::bind(Role::Ctxprop)?;
        let policy = ipc::PeerPolicy::for_role(Role::Ctxprop);
        let shared = state.clone();
        let server = ipc::serve::<CtxpropRequest, _>(listener, policy, move |_, req, _| {
            let mut st = lock(&shared);
            let outcome = match req {
                CtxpropRequest::AddTarget { pid, propagation } => st.add(pid, propagation),
                CtxpropRequest::RemoveTarget { pid } => {
                    st.targets.remove(&pid);
                    Ok(())
                }
            };
            if let Err(e) = outcome {
                tracing::error!(error = %format!("{e:#}"), "a target's propagation could not be set; its traffic is left alone");
            }
            tracing::debug!(targets = st.targets.len(), injecting = st.injector.is_some(), "target set changed");
        });
        let reported = state.clone();
        let report = async move {
            let mut every = tokio::time::interval(selfstats::PUBLISH_EVERY);
            loop {
                every.tick().await;
                publish_counters(&lock(&reported));
            }
        };
        let giving_back = state.clone();
        let give_back = async move {
            let mut every = tokio::time::interval(GIVE_BACK_EVERY);
            loop {
                every.tick().await;
                give_back_given_up(&mut lock(&giving_back));
            }
        };
        seam_proto::lifecycle::ready(Role::Ctxprop);
        tokio::select! {
            _ = server => {}
            _ = report => {}
            _ = give_back => {}
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

/// How often sockets the sk_msg program gave up on are taken out of the sockhash: until then each
/// of their sends still takes the sockhash path.
const GIVE_BACK_EVERY: Duration = Duration::from_millis(200);

fn give_back_given_up(state: &mut State) {
    if let Some(inj) = &mut state.injector {
        let taken = inj.give_back_given_up();
        if taken > 0 {
            tracing::debug!(
                sockets = taken,
                "given-up sockets taken out of the sockhash"
            );
        }
    }
}

/// What the programs counted (their maps live as long as the injector) and the target set.
fn publish_counters(state: &State) {
    selfstats::gauge("targets").set(state.targets.len() as u64);
    selfstats::gauge("injecting").set(u64::from(state.injector.is_some()));
    if let Some(inj) = &state.injector {
        for (name, value) in inj.counters() {
            selfstats::counter(name).set(value);
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

//! seam-ctxprop: will inject trace context into outgoing traffic; until then it only tracks targets.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use clap::Parser;
use seam_proto::{ipc, msg::CtxpropRequest, privilege, Role};

#[derive(Debug, Parser)]
#[command(
    name = "seam-ctxprop",
    version,
    about = "Context propagation for seam (header injection and TCP-option carrier: not yet implemented; no traffic is modified)"
)]
struct Args {}

fn main() -> std::process::ExitCode {
    seam_proto::telemetry::init_logging(Role::Ctxprop);
    let _args = match seam_proto::lifecycle::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    seam_proto::lifecycle::exit_code(Role::Ctxprop, run())
}

fn run() -> Result<()> {
    privilege::enter_and_log(Role::Ctxprop)?;
    tracing::warn!("propagation disabled: this build modifies no traffic; spans still continue incoming traceparent headers");
    let targets: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = seam_proto::lifecycle::Shutdown::install()?;
        let listener = ipc::bind(Role::Ctxprop)?;
        let policy = ipc::PeerPolicy::for_role(Role::Ctxprop);
        let t = targets.clone();
        let server = ipc::serve::<CtxpropRequest, _>(listener, policy, move |_, req| {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            match req {
                CtxpropRequest::AddTarget { pid } => t.insert(pid),
                CtxpropRequest::RemoveTarget { pid } => t.remove(&pid),
            };
            tracing::debug!(
                targets = t.len(),
                "target set changed (propagation disabled)"
            );
        });
        seam_proto::lifecycle::ready(Role::Ctxprop);
        tokio::select! {
            _ = server => {}
            _ = shutdown.wait() => {}
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let _ = std::fs::remove_file(Role::Ctxprop.socket_path());
    Ok(())
}

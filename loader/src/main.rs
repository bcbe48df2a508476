//! seam-loader: the only daemon that loads capture eBPF programs and maintains the target set.

mod bpffs;
mod capture;
mod node;
mod targets;
mod tls;
mod uprobe_multi;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Parser;
use std::os::fd::OwnedFd;

use seam_proto::msg::{LoaderRequest, TlsFile};
use seam_proto::{ipc, lifecycle, privilege, role, selfstats, Role};

#[derive(Debug, Parser)]
#[command(
    name = "seam-loader",
    version,
    about = "Loads seam's capture programs and pins their maps"
)]
struct Args {
    /// Bytes of each HTTP message start shipped to user space (at most 4096).
    #[arg(long, env = "SEAM_CAPTURE_BYTES", default_value_t = 512)]
    capture_bytes: u32,
    /// Size of the event ring buffer in bytes (a power of two, at least 4096).
    #[arg(long, env = "SEAM_RINGBUF_BYTES", default_value_t = 4 * 1024 * 1024)]
    ringbuf_bytes: u32,
    /// Wake the consumer at once when this many bytes are waiting; below it the consumer polls.
    #[arg(long, env = "SEAM_WAKEUP_BYTES", default_value_t = 64 * 1024)]
    wakeup_bytes: u64,
    /// Directory for pinned maps (on bpffs).
    #[arg(long, env = "SEAM_PIN_DIR")]
    pin_dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    seam_proto::telemetry::init_logging(Role::Loader);
    let args = match seam_proto::lifecycle::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Err(e) = capture::validate(args.capture_bytes, args.ringbuf_bytes) {
        return lifecycle::bad_config(&e);
    }
    lifecycle::exit_code(Role::Loader, run(args))
}

fn run(args: Args) -> Result<()> {
    let pin_dir = args.pin_dir.clone().unwrap_or_else(role::pin_dir);
    // bpffs may need mounting, which is the one thing done before dropping privileges.
    bpffs::ensure_mounted(&pin_dir)?;
    privilege::enter_and_log(Role::Loader)?;
    selfstats::publish(Role::Loader, &role::run_dir());
    selfstats::declare_counters(&[
        "requests",
        "requests_refused",
        "targets_refused",
        "pins_taken_over",
    ]);

    let mut loaded = capture::load(
        &capture::Settings {
            capture_bytes: args.capture_bytes,
            ringbuf_bytes: args.ringbuf_bytes,
            wakeup_bytes: args.wakeup_bytes,
        },
        &pin_dir,
    )?;
    if loaded.reused_pins {
        selfstats::counter("pins_taken_over").add(1);
    }
    selfstats::counter("links_taken_over").add(loaded.replaced_links as u64);
    // Before any map leaves the object: the uprobe programs share every one of them.
    let (uprobes, node_loaded) = load_uprobes(&loaded.ebpf);
    let node = node::NodeProbes::new(&mut loaded.ebpf, node_loaded);
    // Loading parsed the kernel's BTF twice (aya, libbpf) and freed it: hand that heap back.
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps.
    unsafe { libc::malloc_trim(0) };
    let mut pins = bpffs::Pins::create(&pin_dir, &mut loaded.ebpf)?;
    pins.add_links(std::mem::take(&mut loaded.links));
    let targets = targets::Targets::new(&mut loaded.ebpf)?;
    // ctxprop writes its epoch here; the Node send probes follow it.
    let prop_on = aya::maps::MapData::from_pin(pin_dir.join("prop_on"))
        .map_err(anyhow::Error::from)
        .and_then(|m| Ok(aya::maps::Array::try_from(aya::maps::Map::Array(m))?))
        .context("opening the propagation flag's pin")?;
    tracing::info!(
        pin_dir = %pin_dir.display(),
        programs = loaded.attached,
        send_begin = loaded.send_begin.unwrap_or("none: outgoing messages start as their send returns"),
        "capture attached"
    );
    let state = Arc::new(Mutex::new(State {
        targets,
        uprobes,
        tls: tls::TlsProbes::default(),
        node,
        prop_on,
    }));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(async {
        let shutdown = seam_proto::lifecycle::Shutdown::install()?;
        let listener = ipc::bind(Role::Loader)?;
        let policy = ipc::PeerPolicy::for_role(Role::Loader);
        let s = state.clone();
        let server = ipc::serve::<LoaderRequest, _>(listener, policy, move |_, req, fds| {
            s.lock().unwrap_or_else(|p| p.into_inner()).apply(req, fds);
        });
        let reported = state.clone();
        let report = async move {
            let mut every = tokio::time::interval(selfstats::PUBLISH_EVERY);
            loop {
                every.tick().await;
                let mut state = reported.lock().unwrap_or_else(|p| p.into_inner());
                // a found process's learning probe runs on every callback: detach it
                state.node.detach_learned();
                state.follow_propagation();
                state.publish_gauges();
            }
        };
        seam_proto::lifecycle::ready(Role::Loader);
        tokio::select! {
            _ = server => Ok::<(), anyhow::Error>(()),
            _ = report => Ok(()),
            _ = shutdown.wait() => {
                tracing::info!("detaching programs and removing pins");
                Ok(())
            }
        }
    });
    let _ = std::fs::remove_file(Role::Loader.socket_path());
    pins.remove();
    drop(state);
    drop(loaded);
    result
}

/// The capture object's uprobe programs, loaded once for TLS and Node (a libbpf load parses the
/// object and the kernel's BTF); TLS alone when this kernel refuses the Node ones, and none when
/// it refuses those too. Says whether the Node programs are loaded.
fn load_uprobes(ebpf: &aya::Ebpf) -> (Option<uprobe_multi::UprobePrograms>, bool) {
    use uprobe_multi::UprobePrograms;
    let capture = seam_abi::objects::CAPTURE;
    let both: Vec<&'static str> = tls::PROGRAMS
        .iter()
        .chain(node::PROGRAMS)
        .copied()
        .collect();
    match UprobePrograms::load(capture, ebpf, &both) {
        Ok(p) => return (Some(p), true),
        Err(e) => {
            tracing::warn!(error = %e, "Node async context unavailable: its uprobe programs were refused")
        }
    }
    match UprobePrograms::load(capture, ebpf, tls::PROGRAMS) {
        Ok(p) => (Some(p), false),
        Err(e) => {
            tracing::warn!(error = %e, "TLS capture unavailable: uprobe programs not loaded");
            (None, false)
        }
    }
}

/// What the loader keeps between requests: the target set, the uprobe programs (their libbpf
/// object lives as long as the daemon) and the TLS and Node probes attached from them.
struct State {
    targets: targets::Targets,
    /// None when this kernel refused the uprobe programs (said once): plain capture goes on.
    uprobes: Option<uprobe_multi::UprobePrograms>,
    tls: tls::TlsProbes,
    node: node::NodeProbes,
    /// ctxprop's epoch, non-zero while it injects.
    prop_on: aya::maps::Array<aya::maps::MapData, u32>,
}

impl State {
    fn apply(&mut self, req: LoaderRequest, mut fds: Vec<OwnedFd>) {
        selfstats::counter("requests").add(1);
        match req {
            LoaderRequest::TlsLibrary { pid, file } => {
                let Some(fd) = fds.pop() else {
                    return; // the server hands over exactly one; never reached
                };
                // Only a current target's files: a file alone proves nothing about who maps it.
                if !self.targets.contains(pid) {
                    selfstats::counter("requests_refused").add(1);
                    tracing::warn!(pid, "TLS library for a pid that is not a target: ignored");
                } else if let Some(programs) = &self.uprobes {
                    if file == TlsFile::Executable {
                        self.node.add(programs, pid, &fd);
                    }
                    self.tls.add(programs, pid, fd, file);
                }
            }
            LoaderRequest::RemoveTarget { pid } => {
                self.tls.remove_pid(pid);
                self.node.remove_pid(pid);
                self.targets.remove(pid);
            }
            LoaderRequest::AddTarget { pid, propagation } => self.targets.add(pid, propagation),
        }
    }

    /// Probes what only propagation needs while ctxprop injects, and only then.
    fn follow_propagation(&mut self) {
        let on = self.prop_on.get(&0, 0).is_ok_and(|epoch| epoch != 0);
        if let Some(programs) = &self.uprobes {
            self.node.set_propagating(programs, on);
        }
    }

    /// Levels for seam-status, once a second rather than per request: counting the target set
    /// walks the kernel map (it also holds the children the kernel added on fork).
    fn publish_gauges(&self) {
        selfstats::gauge("targets").set(self.targets.len() as u64);
        selfstats::gauge("tls_probed_files").set(self.tls.probed_files() as u64);
    }
}

//! seam-discover: finds target processes, tells loader and ctxprop what to watch and correlator who they are.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use seam_discover::config::{self, DiscoveryConfig, ProcessEnv};
use seam_discover::selector::Candidate;
use seam_discover::{identity, procfs, sockdiag, tlsfiles};
use seam_proto::msg::{CorrelatorRequest, CtxpropRequest, LoaderRequest, ServiceIdentity, TlsFile};
use seam_proto::{ipc, lifecycle, privilege, selfstats, Role};

#[derive(Debug, Parser)]
#[command(
    name = "seam-discover",
    version,
    about = "Finds the processes seam instruments"
)]
struct Args {
    /// seam's YAML configuration file (the `discovery` section is read here).
    #[arg(long, env = "SEAM_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    seam_proto::telemetry::init_logging(Role::Discover);
    let args = match seam_proto::lifecycle::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let cfg = match config::load(args.config.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return lifecycle::bad_config(&e),
    };
    lifecycle::exit_code(Role::Discover, start(cfg))
}

fn start(cfg: DiscoveryConfig) -> Result<()> {
    privilege::enter_and_log(Role::Discover)?;
    selfstats::publish(Role::Discover, &seam_proto::role::run_dir());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

/// One connection to a daemon discover feeds; on reconnect the whole current state is re-sent.
#[derive(Debug)]
struct Link {
    server: Role,
    client: Option<ipc::Client>,
    connected_before: bool,
    reconnects: &'static selfstats::Metric,
}

impl Link {
    fn new(server: Role) -> Self {
        let reconnects = selfstats::counter(match server {
            Role::Loader => "loader_reconnects",
            Role::Ctxprop => "ctxprop_reconnects",
            _ => "correlator_reconnects",
        });
        Self {
            server,
            client: None,
            connected_before: false,
            reconnects,
        }
    }

    /// False when the connection was found closed (the peer restarted): the caller must send its
    /// whole state again once reconnected.
    fn still_connected(&mut self) -> bool {
        match &self.client {
            Some(c) if c.peer_closed() => {
                tracing::warn!(server = %self.server, "lost connection");
                self.client = None;
                false
            }
            _ => true,
        }
    }

    /// Sends `msgs`; returns false when the peer is away (the caller re-sends state later).
    async fn send_all<T: serde::Serialize>(&mut self, msgs: &[T]) -> bool {
        if !self.connect().await {
            return false;
        }
        let Some(c) = self.client.as_mut() else {
            return false;
        };
        for m in msgs {
            if let Err(e) = c.send(m).await {
                tracing::warn!(server = %self.server, error = %e, "lost connection");
                self.client = None;
                return false;
            }
        }
        true
    }

    /// Sends `msg` with `file` open alongside it; false when the peer is away.
    async fn send_file<T: serde::Serialize>(&mut self, msg: &T, file: &std::fs::File) -> bool {
        use std::os::fd::AsFd;
        if !self.connect().await {
            return false;
        }
        let Some(c) = self.client.as_mut() else {
            return false;
        };
        if let Err(e) = c.send_with_fd(msg, file.as_fd()).await {
            tracing::warn!(server = %self.server, error = %e, "lost connection");
            self.client = None;
            return false;
        }
        true
    }

    async fn connect(&mut self) -> bool {
        if self.client.is_none() {
            match ipc::Client::connect(Role::Discover, self.server).await {
                Ok(c) => {
                    tracing::info!(server = %self.server, "connected");
                    if self.connected_before {
                        self.reconnects.add(1);
                    }
                    self.connected_before = true;
                    self.client = Some(c);
                }
                Err(e) => {
                    tracing::debug!(server = %self.server, error = %e, "not reachable yet");
                    return false;
                }
            }
        }
        true
    }
}

#[derive(Debug, Clone)]
struct Target {
    start_time: u64,
    identity: ServiceIdentity,
    /// Its selector's `context_propagation`, if it overrides ctxprop's.
    propagation: Option<seam_proto::msg::Propagation>,
}

struct Discoverer {
    cfg: DiscoveryConfig,
    proc_root: PathBuf,
    own_pid: u32,
    seam_uids: HashSet<u32>,
    seam_exe_dir: Option<PathBuf>,
    host_name: String,
    targets: HashMap<u32, Target>,
    /// (pid, start time) of processes already judged not to match, so they are not re-read.
    rejected: HashSet<(u32, u64)>,
    /// Which process holds each socket inode seen in an fd table.
    inode_owner: HashMap<u64, u32>,
    /// sock_diag failed once (and said so); /proc/net/tcp is read instead.
    diag_unavailable: bool,
    /// (pid, dev, inode) of files already handed to the loader for TLS probing.
    tls_sent: HashSet<(u32, u64, u64)>,
    /// When each target's memory map is read again for a libssl, and how long it waits then.
    tls_next_look: HashMap<u32, (Instant, Duration)>,
    /// Targets whose libssl has been found.
    tls_found: HashSet<u32>,
}

/// A target without a libssl yet is looked at again after this, doubling up to `TLS_LOOK_MAX`:
/// a library loaded late (Python maps libssl at `import ssl`) is usually loaded early in life.
const TLS_LOOK_FIRST: Duration = Duration::from_millis(250);
const TLS_LOOK_MAX: Duration = Duration::from_secs(8);

impl Discoverer {
    fn is_seam_process(&self, pid: u32, exe: &Path) -> bool {
        if pid == self.own_pid {
            return true;
        }
        if procfs::real_uid(&self.proc_root, pid).is_some_and(|u| self.seam_uids.contains(&u)) {
            return true;
        }
        let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.starts_with("seam-") && exe.parent() == self.seam_exe_dir.as_deref()
    }

    fn forget_handed_tls_files(&mut self) {
        self.tls_sent.clear();
        self.tls_found.clear();
        self.tls_next_look.clear();
    }

    /// Files of targets that may hold OpenSSL and were not handed to the loader yet, opened.
    /// A target is looked at until a libssl of its own has been handed over, less often as it
    /// ages without one.
    fn new_tls_files(&mut self) -> Vec<(u32, tlsfiles::Mapped, std::fs::File)> {
        self.tls_sent
            .retain(|(pid, _, _)| self.targets.contains_key(pid));
        self.tls_next_look
            .retain(|pid, _| self.targets.contains_key(pid));
        self.tls_found.retain(|pid| self.targets.contains_key(pid));
        let now = Instant::now();
        let mut out = Vec::new();
        let mut found = Vec::new();
        for &pid in self.targets.keys() {
            if self.tls_found.contains(&pid) {
                continue;
            }
            let (next, every) = self
                .tls_next_look
                .entry(pid)
                .or_insert((now, TLS_LOOK_FIRST));
            if now < *next {
                continue;
            }
            *next = now + *every;
            *every = (*every * 2).min(TLS_LOOK_MAX);
            let dir = self.proc_root.join(pid.to_string());
            let (Ok(maps), Ok(exe)) = (
                std::fs::read_to_string(dir.join("maps")),
                std::fs::read_link(dir.join("exe")),
            ) else {
                continue;
            };
            for m in tlsfiles::candidates(&maps, &exe.to_string_lossy()) {
                if m.kind == TlsFile::Library {
                    found.push(pid);
                }
                if self.tls_sent.contains(&(pid, m.dev, m.inode)) {
                    continue;
                }
                match tlsfiles::open(&self.proc_root, pid, &m) {
                    Ok(f) => out.push((pid, m, f)),
                    Err(e) => {
                        tracing::warn!(pid, path = %m.path, error = %e, "cannot open a file that may hold OpenSSL");
                        // said once: not tried again for this process
                        self.tls_sent.insert((pid, m.dev, m.inode));
                    }
                }
            }
        }
        // a process with its libssl handed over is not looked at again
        self.tls_found.extend(found);
        out
    }

    /// One pass over /proc: returns the pids that appeared (with identities) and disappeared.
    fn scan(&mut self) -> (Vec<ServiceIdentity>, Vec<u32>) {
        let pids = procfs::list_pids(&self.proc_root);
        let live: HashSet<u32> = pids.iter().copied().collect();
        let needs_ports = self.cfg.selectors.iter().any(|s| s.needs_ports());
        let listeners = if needs_ports {
            match sockdiag::listening_sockets() {
                Ok(l) => l,
                Err(e) => {
                    if !self.diag_unavailable {
                        tracing::warn!(error = %e, "sock_diag unavailable: reading /proc/net/tcp instead");
                        self.diag_unavailable = true;
                    }
                    procfs::listening_sockets(&self.proc_root)
                }
            }
        } else {
            HashMap::new()
        };
        // Reading every process's fd table is the costly part of a scan: do it only when a
        // listener on a selected port has no known, live owner yet.
        let wanted = |port: u16| {
            self.cfg
                .selectors
                .iter()
                .any(|s| s.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port)))
        };
        let read_fds = listeners.iter().any(|(inode, port)| {
            wanted(*port)
                && self
                    .inode_owner
                    .get(inode)
                    .is_none_or(|owner| !live.contains(owner))
        });
        self.inode_owner.retain(|_, owner| live.contains(owner));
        let mut gone: Vec<u32> = Vec::new();
        for (&pid, t) in &self.targets {
            let same = live.contains(&pid)
                && procfs::start_time(&self.proc_root, pid) == Some(t.start_time);
            if !same {
                gone.push(pid);
            }
        }
        for pid in &gone {
            self.targets.remove(pid);
        }
        self.rejected.retain(|(pid, _)| live.contains(pid));
        let mut added = Vec::new();
        for pid in pids {
            if self.targets.contains_key(&pid) {
                continue;
            }
            let Some(start) = procfs::start_time(&self.proc_root, pid) else {
                continue;
            };
            // A rejected process is looked at again only when a new listener needs explaining.
            if !read_fds && self.rejected.contains(&(pid, start)) {
                continue;
            }
            let Some(exe) = procfs::exe(&self.proc_root, pid) else {
                continue;
            };
            if self.is_seam_process(pid, &exe) {
                self.rejected.insert((pid, start));
                continue;
            }
            let ports: Vec<u16> = if read_fds {
                let inodes = procfs::socket_inodes(&self.proc_root, pid);
                // Listeners only: a socket bound but not listening yet at this scan's listener
                // list must stay unexplained, so its owner is looked at again once it listens.
                for &i in inodes.iter().filter(|i| listeners.contains_key(i)) {
                    self.inode_owner.entry(i).or_insert(pid);
                }
                inodes
                    .iter()
                    .filter_map(|i| listeners.get(i).copied())
                    .collect()
            } else {
                Vec::new()
            };
            let exe_str = exe.to_string_lossy();
            let cand = Candidate {
                pid,
                exe: &exe_str,
                listen_ports: &ports,
            };
            let Some(sel) = self.cfg.selectors.iter().find(|s| s.matches(&cand)) else {
                self.rejected.insert((pid, start));
                continue;
            };
            let env = procfs::environ(&self.proc_root, pid);
            let id = identity::resolve(
                pid,
                &exe,
                &env,
                sel.service_name.as_deref(),
                &self.host_name,
            );
            tracing::info!(pid, service = %id.service_name, exe = %exe_str, ports = ?ports, "target found");
            self.targets.insert(
                pid,
                Target {
                    start_time: start,
                    identity: id.clone(),
                    propagation: sel.propagation,
                },
            );
            added.push(id);
        }
        for pid in &gone {
            tracing::info!(pid, "target gone");
        }
        (added, gone)
    }
}

async fn run(cfg: DiscoveryConfig) -> Result<()> {
    let proc_root = PathBuf::from("/proc");
    let own_exe = std::env::current_exe().ok();
    let mut d = Discoverer {
        cfg,
        host_name: procfs::host_name(&proc_root),
        proc_root,
        own_pid: std::process::id(),
        seam_uids: Role::ALL.iter().filter_map(|&r| ipc::uid_of(r)).collect(),
        seam_exe_dir: own_exe
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf),
        targets: HashMap::new(),
        rejected: HashSet::new(),
        inode_owner: HashMap::new(),
        diag_unavailable: false,
        tls_sent: HashSet::new(),
        tls_next_look: HashMap::new(),
        tls_found: HashSet::new(),
    };
    let mut correlator = Link::new(Role::Correlator);
    let mut loader = Link::new(Role::Loader);
    let mut ctxprop = Link::new(Role::Ctxprop);
    let (mut correlator_synced, mut loader_synced, mut ctxprop_synced) = (false, false, false);
    let mut tick = tokio::time::interval(Duration::from_millis(d.cfg.poll_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = seam_proto::lifecycle::Shutdown::install()?;
    let stop = shutdown.wait();
    tokio::pin!(stop);
    seam_proto::lifecycle::ready(Role::Discover);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        let (added, gone) = d.scan();
        correlator_synced &= correlator.still_connected();
        loader_synced &= loader.still_connected();
        ctxprop_synced &= ctxprop.still_connected();
        selfstats::counter("scans").add(1);
        selfstats::counter("targets_found").add(added.len() as u64);
        selfstats::counter("targets_gone").add(gone.len() as u64);
        selfstats::gauge("targets").set(d.targets.len() as u64);
        // Identity first, so the correlator knows a process before its first event can arrive.
        let ids: Vec<CorrelatorRequest> = if correlator_synced {
            added
                .iter()
                .cloned()
                .map(CorrelatorRequest::ServiceUp)
                .chain(
                    gone.iter()
                        .map(|&pid| CorrelatorRequest::ServiceDown { pid }),
                )
                .collect()
        } else {
            d.targets
                .values()
                .map(|t| CorrelatorRequest::ServiceUp(t.identity.clone()))
                .collect()
        };
        correlator_synced = correlator.send_all(&ids).await;
        let adds = |all: bool| -> Vec<u32> {
            if all {
                d.targets.keys().copied().collect()
            } else {
                added.iter().map(|i| i.pid).collect()
            }
        };
        // Capture starts only once the correlator has been told who a target is (it may not be
        // up yet at start-up); exits are passed on regardless, so a reused pid is never captured.
        let loader_adds = if correlator_synced {
            adds(!loader_synced)
        } else {
            Vec::new()
        };
        let l: Vec<LoaderRequest> = loader_adds
            .into_iter()
            .map(|pid| LoaderRequest::AddTarget {
                pid,
                propagation: d.targets.get(&pid).and_then(|t| t.propagation),
            })
            .chain(gone.iter().map(|&pid| LoaderRequest::RemoveTarget { pid }))
            .collect();
        let loader_resync = correlator_synced && !loader_synced;
        loader_synced = loader.send_all(&l).await && correlator_synced;
        let forget_tls = loader_resync && loader_synced;
        let c: Vec<CtxpropRequest> = adds(!ctxprop_synced)
            .into_iter()
            .map(|pid| CtxpropRequest::AddTarget {
                pid,
                propagation: d.targets.get(&pid).and_then(|t| t.propagation),
            })
            .chain(gone.iter().map(|&pid| CtxpropRequest::RemoveTarget { pid }))
            .collect();
        ctxprop_synced = ctxprop.send_all(&c).await;
        if forget_tls {
            // A new loader has no OpenSSL probes: hand it every target's files again.
            d.forget_handed_tls_files();
        }
        // After the loader knows the targets: it probes only a current target's files.
        if loader_synced {
            for (pid, m, file) in d.new_tls_files() {
                let req = LoaderRequest::TlsLibrary { pid, file: m.kind };
                if !loader.send_file(&req, &file).await {
                    loader_synced = false;
                    break;
                }
                d.tls_sent.insert((pid, m.dev, m.inode));
            }
        }
        if !loader_synced {
            // a loader that comes back is told again
            d.tls_sent.clear();
            d.tls_next_look.clear();
            d.tls_found.clear();
        }
    }
    Ok(())
}

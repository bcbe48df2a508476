//! seam-correlator: reads the pinned capture ring buffer with no capabilities and ships spans.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use clap::Parser;
use seam_correlator::batches::{frame_batches, Shipment, SPANS_PER_BATCH};
use seam_correlator::context::Sampler;
use seam_correlator::engine::{Engine, LinkConfig, MonotonicClock};
use seam_proto::msg::{CorrelatorRequest, ServiceIdentity, SpanRecord};
use seam_proto::{ipc, privilege, role, selfstats, Role};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(
    name = "seam-correlator",
    version,
    about = "Builds spans from seam's captured traffic"
)]
struct Args {
    /// Directory of the loader's pinned maps.
    #[arg(long, env = "SEAM_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// Longest a response may stay silent before it is ended with what was seen (seconds).
    #[arg(long, env = "SEAM_OPEN_RESPONSE_TIMEOUT", default_value_t = 30)]
    open_response_timeout: u64,
    /// Span batches waiting for the exporter before new ones are dropped (and counted).
    #[arg(long, env = "SEAM_SPAN_QUEUE", default_value_t = 1024)]
    span_queue: usize,
    /// seam's YAML configuration file (the `correlator` section is read here).
    #[arg(long, env = "SEAM_CONFIG")]
    config: Option<PathBuf>,
    /// Do not link a server span to the same-host client span that called it (overrides the
    /// file's `correlator.black_box`).
    #[arg(long, env = "SEAM_DISABLE_BLACK_BOX",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    disable_black_box: Option<bool>,
    /// Parents and callers older than this are never linked, in seconds (default 10).
    #[arg(long, env = "SEAM_MAX_TRANSACTION_TIME")]
    max_transaction_time: Option<u64>,
    /// How long to wait at start for the loader's pins to appear (seconds).
    #[arg(long, env = "SEAM_PIN_WAIT", default_value_t = 60)]
    pin_wait: u64,
}

type Services = Arc<Mutex<HashMap<u32, ServiceIdentity>>>;

fn main() -> std::process::ExitCode {
    seam_proto::telemetry::init_logging(Role::Correlator);
    let args = match seam_proto::lifecycle::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let links = match link_config(&args) {
        Ok(l) => l,
        Err(e) => return seam_proto::lifecycle::bad_config(&format!("{e:#}")),
    };
    seam_proto::lifecycle::exit_code(Role::Correlator, run(args, links))
}

/// How spans link and sample: flags and environment over the YAML file over defaults.
fn link_config(args: &Args) -> Result<LinkConfig> {
    let section = args
        .config
        .as_deref()
        .map(seam_correlator::config::load)
        .transpose()?
        .unwrap_or_default();
    let sampler = Sampler::from_env(
        std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
        std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
    )?;
    Ok(LinkConfig {
        sampler,
        black_box: match args.disable_black_box {
            Some(off) => !off,
            None => section.black_box.unwrap_or(true),
        },
        max_transaction_ns: args
            .max_transaction_time
            .or(section.max_transaction_time)
            .map_or(LinkConfig::default().max_transaction_ns, |s| {
                s.saturating_mul(1_000_000_000)
            }),
    })
}

fn run(args: Args, links: LinkConfig) -> Result<()> {
    privilege::enter_and_log(Role::Correlator)?;
    seam_proto::heap::keep_batch_memory();
    selfstats::publish(Role::Correlator, &role::run_dir());
    selfstats::declare_counters(&["spans_shipped", "spans_dropped", "exporter_reconnects"]);
    let pin_dir = args.pin_dir.clone().unwrap_or_else(role::pin_dir);
    let ring = wait_for_pins(&pin_dir, Duration::from_secs(args.pin_wait))?;
    let counters = open_counters_read_only(&pin_dir.join("counters"))?;
    tracing::info!(pin_dir = %pin_dir.display(), "opened pinned ring buffer by file permission");

    let services: Services = Arc::default();
    let (tx, rx) = mpsc::channel::<Shipment>(args.span_queue);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let consumer = {
        let services = services.clone();
        let timeout = Duration::from_secs(args.open_response_timeout);
        tracing::info!(
            black_box = links.black_box,
            max_transaction_ns = links.max_transaction_ns,
            sampler = ?links.sampler,
            "span linking"
        );
        std::thread::Builder::new()
            .name("ringbuf".into())
            .spawn(move || consume(ring, counters, services, tx, timeout, links))
            .context("spawning the ring buffer thread")?
    };
    rt.block_on(async move {
        let shutdown = seam_proto::lifecycle::Shutdown::install()?;
        let listener = ipc::bind(Role::Correlator)?;
        let policy = ipc::PeerPolicy::for_role(Role::Correlator);
        let svc = services.clone();
        tokio::spawn(ipc::serve::<CorrelatorRequest, _>(listener, policy, move |_, req, _| {
            let mut s = svc.lock().unwrap_or_else(|p| p.into_inner());
            match req {
                CorrelatorRequest::ServiceUp(id) => {
                    tracing::info!(pid = id.pid, service = %id.service_name, "service identity");
                    s.insert(id.pid, id);
                }
                CorrelatorRequest::ServiceDown { pid } => {
                    s.remove(&pid);
                }
            }
        }));
        tokio::spawn(ship(rx));
        seam_proto::lifecycle::ready(Role::Correlator);
        shutdown.wait().await;
        Ok::<(), anyhow::Error>(())
    })?;
    let _ = std::fs::remove_file(Role::Correlator.socket_path());
    selfstats::publish_now(&role::run_dir());
    // As the consumer last published them (each second).
    let get = |name| selfstats::counter(name).get();
    tracing::info!(
        events = get("events"),
        lost_events = get("lost_events"),
        spans = get("spans"),
        dropped_spans = get("spans_dropped"),
        records = get("records"),
        malformed_records = get("malformed_records"),
        unanswered_requests = get("unanswered_requests"),
        orphan_responses = get("orphan_responses"),
        truncated_starts = get("truncated_starts"),
        expired_responses = get("expired_responses"),
        injected_spans = get("injected_spans"),
        injected_unlinked = get("injected_unlinked"),
        option_contexts = get("option_contexts"),
        "final counters"
    );
    drop(consumer);
    Ok(())
}

/// The loader may start after the correlator (or restart): wait for its pins instead of failing.
fn wait_for_pins(pin_dir: &Path, patience: Duration) -> Result<RingBuf<MapData>> {
    let pins = [pin_dir.join("events"), pin_dir.join("counters")];
    if !seam_proto::lifecycle::wait_for_paths(&pins, patience) {
        return open_ring(pin_dir).context("the loader's pins never appeared");
    }
    open_ring(pin_dir)
}

fn open_ring(pin_dir: &Path) -> Result<RingBuf<MapData>> {
    let path = pin_dir.join("events");
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (needs read-write permission through the seam group)",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data).context("pinned events map")?;
    RingBuf::try_from(map).context("pinned events is not a ring buffer")
}

/// Opens a pinned map read-only (BPF_F_RDONLY), which needs only read permission on the pin.
fn open_counters_read_only(path: &Path) -> Result<PerCpuArray<MapData, u64>> {
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        // The kernel rejects attrs whose bytes past the last field are not zero.
        pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_F_RDONLY: u32 = 1 << 3;
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let attr = ObjGetAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: BPF_F_RDONLY,
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: the attr struct matches the kernel's BPF_OBJ_GET layout and outlives the call;
    // cpath stays alive until after it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening {} read-only", path.display()));
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let map = Map::from_map_data(MapData::from_fd(fd)?)?;
    PerCpuArray::try_from(map).context("pinned counters map has the wrong type")
}

fn counter_sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// Names of processes discover never described (children a target forked), read at first sight
/// because a short-lived child may be gone by the time its spans are flushed.
#[derive(Debug, Default)]
struct CommNames(HashMap<u32, String>);

impl CommNames {
    const MAX: usize = 16_384;

    /// The kernel's name for the process at exec; replaces whatever was known.
    fn exec(&mut self, pid: u32, comm: &[u8]) {
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        let name = String::from_utf8_lossy(&comm[..end]).into_owned();
        if !name.is_empty() {
            self.0.insert(pid, name);
        }
    }

    fn note(&mut self, pid: u32) {
        if self.0.contains_key(&pid) {
            return;
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let name = match comm.trim() {
            "" => "unknown_service".to_string(),
            c => c.to_string(),
        };
        self.0.insert(pid, name);
    }
}

fn identity(
    described: &HashMap<u32, ServiceIdentity>,
    comms: &CommNames,
    pid: u32,
) -> ServiceIdentity {
    described.get(&pid).cloned().unwrap_or_else(|| {
        let name = comms
            .0
            .get(&pid)
            .map_or("unknown_service", String::as_str)
            .to_string();
        ServiceIdentity {
            service_name: name.clone(),
            instance_id: format!("{pid}"),
            pid,
            executable_name: name,
            ..ServiceIdentity::default()
        }
    })
}

fn consume(
    mut ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    services: Services,
    tx: mpsc::Sender<Shipment>,
    open_timeout: Duration,
    links: LinkConfig,
) {
    const POLL: Duration = Duration::from_millis(50);
    const FLUSH: Duration = Duration::from_millis(100);
    let mut engine = Engine::new(links);
    let mut ready: Vec<(u32, SpanRecord)> = Vec::new();
    let mut last_flush = Instant::now();
    let mut last_report = Instant::now();
    let mut reports = 0u64;
    let mut lost_seen = 0u64;
    let mut comms = CommNames::default();
    loop {
        let mut pfd = libc::pollfd {
            fd: ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as i32) };
        while let Some(item) = ring.next() {
            match engine.on_record(&item, &mut ready) {
                Some((ev, comm)) if ev.kind == seam_abi::EV_EXEC => comms.exec(ev.pid, comm),
                Some((ev, _)) => comms.note(ev.pid),
                None => {}
            }
        }
        // A full batch goes at once: waiting for the tick would hold 100 ms of spans in memory.
        if last_flush.elapsed() < FLUSH && ready.len() >= SPANS_PER_BATCH {
            flush(&mut ready, &services, &comms, &tx);
        }
        if last_flush.elapsed() >= FLUSH {
            last_flush = Instant::now();
            engine.sweep(
                MonotonicClock::monotonic_now_ns(),
                open_timeout.as_nanos() as u64,
                600_000_000_000,
                &mut ready,
            );
            flush(&mut ready, &services, &comms, &tx);
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            reports += 1;
            if reports.is_multiple_of(10) {
                // Bursts leave the allocator holding freed pages; hand them back now and then.
                // SAFETY: malloc_trim only releases free heap memory.
                unsafe { libc::malloc_trim(0) };
            }
            let lost = counter_sum(&counters, seam_abi::CNT_RINGBUF_FULL);
            let events_total = counter_sum(&counters, seam_abi::CNT_EVENTS);
            if lost > lost_seen {
                tracing::warn!(
                    lost_events = lost - lost_seen,
                    total = lost,
                    "ring buffer was full: events lost"
                );
                lost_seen = lost;
            }
            publish_counters(&engine, events_total, lost, &tx);
        }
    }
}

/// This daemon's counters for seam-status and the exporter's self-metrics.
fn publish_counters(engine: &Engine, events: u64, lost_events: u64, tx: &mpsc::Sender<Shipment>) {
    selfstats::counter("events").set(events);
    selfstats::counter("lost_events").set(lost_events);
    for (name, value) in engine.counters.named() {
        selfstats::counter(name).set(value);
    }
    selfstats::gauge("open_connections").set(engine.open_connections() as u64);
    selfstats::gauge("export_queue_depth").set((tx.max_capacity() - tx.capacity()) as u64);
}

/// Frames finished spans by process and queues the frames; spans the queue cannot take are counted.
fn flush(
    ready: &mut Vec<(u32, SpanRecord)>,
    services: &Services,
    comms: &CommNames,
    tx: &mpsc::Sender<Shipment>,
) {
    if ready.is_empty() {
        return;
    }
    let described = services.lock().unwrap_or_else(|p| p.into_inner());
    frame_batches(
        ready,
        |pid| identity(&described, comms, pid),
        |batch| match batch {
            Ok(shipment) => {
                let n = shipment.spans;
                if tx.try_send(shipment).is_err() {
                    selfstats::counter("spans_dropped").add(n);
                    tracing::warn!(spans = n, "exporter queue full: spans dropped");
                }
            }
            Err((n, e)) => {
                selfstats::counter("spans_dropped").add(n);
                tracing::warn!(spans = n, error = %e, "a span batch does not frame: dropped");
            }
        },
    );
}

/// Sends queued batches to the exporter, reconnecting when it restarts.
async fn ship(mut rx: mpsc::Receiver<Shipment>) {
    let mut client: Option<ipc::Client> = None;
    let mut connected_before = false;
    while let Some(shipment) = rx.recv().await {
        let n = shipment.spans;
        for attempt in 0..2 {
            if client.is_none() {
                match ipc::connect_with_retry(
                    Role::Correlator,
                    Role::Exporter,
                    Duration::from_secs(2),
                )
                .await
                {
                    Ok(c) => {
                        if connected_before {
                            selfstats::counter("exporter_reconnects").add(1);
                        }
                        connected_before = true;
                        client = Some(c);
                    }
                    Err(e) => {
                        selfstats::counter("spans_dropped").add(n);
                        tracing::warn!(error = %e, "exporter unreachable: batch dropped");
                        break;
                    }
                }
            }
            if let Some(c) = client.as_mut() {
                match c.send_frame(&shipment.frame).await {
                    Ok(()) => {
                        selfstats::counter("spans_shipped").add(n);
                        break;
                    }
                    Err(e) => {
                        client = None;
                        if attempt == 1 {
                            selfstats::counter("spans_dropped").add(n);
                            tracing::warn!(error = %e, "sending to exporter failed: batch dropped");
                        }
                    }
                }
            }
        }
    }
}

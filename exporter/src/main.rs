//! seam-exporter: receives spans from the correlator, exports OTLP and prints traces; no capabilities.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use seam_exporter::config::{self, ExporterConfig, PrinterMode};
use seam_exporter::{
    metrics::RedMetrics, otlp::OtlpSpans, printer::TracePrinter, selfmetrics::SelfMetrics,
};
use seam_proto::msg::{ExporterFrame, SpanBatchView};
use seam_proto::{ipc, privilege, role, selfstats, Role};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(
    name = "seam-exporter",
    version,
    about = "Exports seam's spans over OTLP (OTEL_EXPORTER_OTLP_*) and prints traces (SEAM_TRACE_PRINTER)"
)]
struct Args {
    /// seam's YAML configuration file (the `exporter` section is read here).
    #[arg(long, env = "SEAM_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    seam_proto::telemetry::init_logging(Role::Exporter);
    let args = match seam_proto::lifecycle::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let cfg = match config::load(args.config.as_deref(), &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => return seam_proto::lifecycle::bad_config(&e),
    };
    seam_proto::lifecycle::exit_code(Role::Exporter, run(cfg))
}

fn run(cfg: ExporterConfig) -> Result<()> {
    privilege::enter_and_log(Role::Exporter)?;
    seam_proto::heap::keep_batch_memory();
    selfstats::publish(Role::Exporter, &role::run_dir());
    selfstats::declare_counters(&[
        "spans_received",
        "spans_dropped",
        "spans_exported",
        "spans_export_failed",
        "export_retries",
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let shutdown = seam_proto::lifecycle::Shutdown::install()?;
        let (tx, rx) = mpsc::channel::<ExporterFrame>(cfg.queue_batches);
        let listener = ipc::bind(Role::Exporter)?;
        let policy = ipc::PeerPolicy::for_role(Role::Exporter);
        let received = selfstats::counter("spans_received");
        let dropped = selfstats::counter("spans_dropped");
        let depth = selfstats::gauge("export_queue_depth");
        tokio::spawn(ipc::serve::<ExporterFrame, _>(
            listener,
            policy,
            move |_, frame, _| {
                let n = frame.spans() as u64;
                received.add(n);
                if tx.try_send(frame).is_err() {
                    dropped.add(n);
                    tracing::warn!(
                        spans = n,
                        total_dropped = dropped.get(),
                        "export queue full: spans dropped"
                    );
                }
                depth.set((tx.max_capacity() - tx.capacity()) as u64);
            },
        ));
        tracing::info!(otlp = cfg.otlp, printer = ?cfg.printer, "exporter configured");
        let work = export_loop(cfg, rx);
        seam_proto::lifecycle::ready(Role::Exporter);
        tokio::select! {
            r = work => r,
            _ = shutdown.wait() => Ok(()),
        }
    })?;
    let _ = std::fs::remove_file(Role::Exporter.socket_path());
    Ok(())
}

async fn export_loop(cfg: ExporterConfig, mut rx: mpsc::Receiver<ExporterFrame>) -> Result<()> {
    let mut otlp = if cfg.otlp {
        Some(OtlpSpans::from_env().context("OTLP exporter configuration (OTEL_EXPORTER_OTLP_*)")?)
    } else {
        None
    };
    let mut metrics = cfg.otlp.then(RedMetrics::default);
    let mut own = if cfg.otlp {
        SelfMetrics::new(role::run_dir())
    } else {
        None
    };
    let mut last_own = tokio::time::Instant::now();
    let depth = selfstats::gauge("export_queue_depth");
    let mut collector = Collector::default();
    let mut printer = TracePrinter::new(cfg.printer, Duration::from_millis(1500));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                depth.set(rx.len() as u64);
                if otlp.is_none() && !printer.wants_spans() {
                    continue; // nothing reads the spans: they were checked and counted
                }
                let batch = match frame.view() {
                    Ok(b) => b,
                    Err(e) => {
                        selfstats::counter("spans_dropped").add(frame.spans() as u64);
                        tracing::error!(error = %e, "a checked span batch no longer decodes: dropped");
                        continue;
                    }
                };
                printer.add(&batch);
                if let Some(m) = metrics.as_mut() {
                    m.record(&batch);
                }
                if let Some(o) = otlp.as_mut() {
                    export_with_retry(o, &batch, &mut collector).await;
                }
            }
            _ = tick.tick() => {
                if let Some(own) = own.as_mut().filter(|_| last_own.elapsed() >= selfstats::PUBLISH_EVERY) {
                    own.refresh();
                    last_own = tokio::time::Instant::now();
                }
                if cfg.printer != PrinterMode::Disabled {
                    printer.flush(&mut stdout, false);
                }
            }
        }
    }
    if let Some(m) = metrics {
        m.shutdown();
    }
    if let Some(mut own) = own {
        own.refresh();
        own.shutdown();
    }
    Ok(())
}

/// Whether the collector answered lately: while it does not, each batch gets one attempt, so the
/// queue drains (and drops are counted) at the rate batches arrive instead of growing in memory.
#[derive(Debug, Default)]
struct Collector {
    down: bool,
}

/// Retries with exponential backoff while the collector is up; one attempt per batch while it is
/// down. A batch that fails is dropped and counted.
async fn export_with_retry(
    otlp: &mut OtlpSpans,
    batch: &SpanBatchView<'_>,
    collector: &mut Collector,
) {
    let n = batch.spans.len() as u64;
    let attempts = if collector.down { 1 } else { 5 };
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=attempts {
        match otlp.export(batch).await {
            Ok(()) => {
                selfstats::counter("spans_exported").add(n);
                if collector.down {
                    collector.down = false;
                    tracing::info!("collector answers again");
                }
                return;
            }
            Err(e) if attempt == attempts => {
                selfstats::counter("spans_export_failed").add(n);
                if !collector.down {
                    collector.down = true;
                    tracing::warn!(error = %e, spans = n, "OTLP export failed: batch dropped; one attempt per batch until the collector answers");
                }
            }
            Err(e) => {
                selfstats::counter("export_retries").add(1);
                tracing::debug!(error = %e, attempt, "OTLP export failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

//! seam-exporter: receives spans from the correlator, exports OTLP and prints traces; no capabilities.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use seam_exporter::config::{self, ExporterConfig, PrinterMode};
use seam_exporter::{metrics::RedMetrics, otlp::OtlpSpans, printer::TracePrinter};
use seam_proto::msg::{ExporterRequest, SpanBatch};
use seam_proto::{ipc, privilege, Role};
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let shutdown = seam_proto::lifecycle::Shutdown::install()?;
        let (tx, rx) = mpsc::channel::<SpanBatch>(cfg.queue_batches);
        let listener = ipc::bind(Role::Exporter)?;
        let policy = ipc::PeerPolicy::for_role(Role::Exporter);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let d = dropped.clone();
        tokio::spawn(ipc::serve::<ExporterRequest, _>(
            listener,
            policy,
            move |_, req, _| match req {
                ExporterRequest::Spans(batch) => {
                    let n = batch.spans.len() as u64;
                    if tx.try_send(batch).is_err() {
                        let total = d.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                        tracing::warn!(
                            spans = n,
                            total_dropped = total,
                            "export queue full: spans dropped"
                        );
                    }
                }
                ExporterRequest::Counters { role, counters } => {
                    tracing::debug!(from = %role, ?counters, "self counters");
                }
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

async fn export_loop(cfg: ExporterConfig, mut rx: mpsc::Receiver<SpanBatch>) -> Result<()> {
    let mut otlp = if cfg.otlp {
        Some(OtlpSpans::from_env().context("OTLP exporter configuration (OTEL_EXPORTER_OTLP_*)")?)
    } else {
        None
    };
    let mut metrics = cfg.otlp.then(RedMetrics::default);
    let mut printer = TracePrinter::new(cfg.printer, Duration::from_millis(1500));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                printer.add(&batch);
                if let Some(m) = metrics.as_mut() {
                    m.record(&batch);
                }
                if let Some(o) = otlp.as_mut() {
                    export_with_retry(o, &batch).await;
                }
            }
            _ = tick.tick() => {
                if cfg.printer != PrinterMode::Disabled {
                    printer.flush(&mut stdout, false);
                }
            }
        }
    }
    if let Some(m) = metrics {
        m.shutdown();
    }
    Ok(())
}

/// Retries with exponential backoff; while it waits, new batches queue (bounded) and overflow is counted.
async fn export_with_retry(otlp: &mut OtlpSpans, batch: &SpanBatch) {
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=5 {
        match otlp.export(batch).await {
            Ok(()) => return,
            Err(e) if attempt == 5 => {
                tracing::warn!(error = %e, spans = batch.spans.len(), "OTLP export failed: batch dropped");
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "OTLP export failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

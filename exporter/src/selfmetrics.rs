//! seam's own counters as OTLP metrics: every daemon's published stats, one instrument per name.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::Resource;
use seam_proto::selfstats::{self, Kind};
use seam_proto::Role;

/// Latest value per metric name, per (daemon, pid): a restarted daemon is a new series.
type Latest = Arc<Mutex<BTreeMap<String, Vec<(Role, u32, u64)>>>>;

pub struct SelfMetrics {
    provider: SdkMeterProvider,
    meter: Meter,
    run_dir: PathBuf,
    latest: Latest,
    instruments: HashSet<String>,
    unreadable: HashSet<Role>,
}

impl std::fmt::Debug for SelfMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfMetrics")
            .field("instruments", &self.instruments.len())
            .finish()
    }
}

fn resource(host_name: &str) -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "seam"),
            KeyValue::new("host.name", host_name.to_string()),
            KeyValue::new("telemetry.sdk.name", "seam"),
            KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

impl SelfMetrics {
    pub fn new(run_dir: PathBuf) -> Option<Self> {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let provider = crate::metrics::otlp_meter_provider(resource(&host))?;
        let meter = provider.meter_with_scope(crate::otlp::scope());
        Some(Self {
            provider,
            meter,
            run_dir,
            latest: Arc::default(),
            instruments: HashSet::new(),
            unreadable: HashSet::new(),
        })
    }

    /// Reads every daemon's stats file; new names get an instrument that reports from then on.
    pub fn refresh(&mut self) {
        let mut fresh: BTreeMap<String, Vec<(Role, u32, u64)>> = BTreeMap::new();
        let mut kinds = Vec::new();
        for role in Role::ALL {
            let snap = match selfstats::read(&self.run_dir, role) {
                Ok(s) => {
                    self.unreadable.remove(&role);
                    s
                }
                Err(e) => {
                    if !matches!(e, selfstats::StatsError::Missing(_))
                        && self.unreadable.insert(role)
                    {
                        tracing::warn!(daemon = %role, error = %e, "daemon counters unreadable");
                    }
                    continue;
                }
            };
            for (name, kind, value) in snap.metrics {
                fresh
                    .entry(name.clone())
                    .or_default()
                    .push((role, snap.pid, value));
                kinds.push((name, kind));
            }
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        for (name, kind) in kinds {
            if self.instruments.insert(name.clone()) {
                self.register(name, kind);
            }
        }
    }

    fn register(&self, name: String, kind: Kind) {
        let latest = self.latest.clone();
        let key = name.clone();
        let observe = move |report: &dyn Fn(u64, &[KeyValue])| {
            let latest = latest.lock().unwrap_or_else(|p| p.into_inner());
            for (role, pid, value) in latest.get(&key).into_iter().flatten() {
                report(
                    *value,
                    &[
                        KeyValue::new("seam.daemon", role.name()),
                        KeyValue::new("process.pid", i64::from(*pid)),
                    ],
                );
            }
        };
        let full = format!("seam.{name}");
        match kind {
            Kind::Counter => {
                self.meter
                    .u64_observable_counter(full)
                    .with_description("seam's own counter (see seam-status)")
                    .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                    .build();
            }
            Kind::Gauge => {
                self.meter
                    .u64_observable_gauge(full)
                    .with_description("seam's own gauge (see seam-status)")
                    .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                    .build();
            }
        }
    }

    pub fn shutdown(&self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

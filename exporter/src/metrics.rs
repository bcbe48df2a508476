//! RED metrics per service: the semantic-convention HTTP duration histograms, from every span.

use std::collections::HashMap;

use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::Resource;
use seam_proto::msg::{SpanBatchView, SpanKind};

/// Semantic-convention default boundaries for HTTP durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

const SERVER_KEYS: &[&str] = &[
    "http.request.method",
    "http.response.status_code",
    "url.scheme",
    "network.protocol.version",
];
const CLIENT_KEYS: &[&str] = &[
    "http.request.method",
    "http.response.status_code",
    "url.scheme",
    "network.protocol.version",
    "server.address",
    "server.port",
];

/// A meter provider exporting over OTLP (OTEL_EXPORTER_OTLP_* and OTEL_METRIC_EXPORT_INTERVAL).
pub fn otlp_meter_provider(resource: Resource) -> Option<SdkMeterProvider> {
    let exporter = match opentelemetry_otlp::MetricExporter::builder().build() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "metric exporter unavailable");
            return None;
        }
    };
    // The async-runtime reader exports from tokio, where the OTLP HTTP client lives; the default
    // reader's own thread has no tokio reactor.
    let reader = PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Some(
        SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build(),
    )
}

#[derive(Debug)]
struct ServiceMeters {
    provider: SdkMeterProvider,
    server: Histogram<f64>,
    client: Histogram<f64>,
}

#[derive(Debug, Default)]
pub struct RedMetrics {
    services: HashMap<(String, String), ServiceMeters>,
}

impl RedMetrics {
    /// Records every span, sampled or not: metrics count all requests.
    pub fn record(&mut self, batch: &SpanBatchView<'_>) {
        let key = (
            batch.service.service_name.clone(),
            batch.service.instance_id.clone(),
        );
        let meters = match self.services.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let Some(provider) = otlp_meter_provider(crate::resource::of(&batch.service))
                else {
                    return;
                };
                let meter = provider.meter_with_scope(crate::otlp::scope());
                let hist = |name: &'static str, what: &'static str| {
                    meter
                        .f64_histogram(name)
                        .with_unit("s")
                        .with_description(what)
                        .with_boundaries(DURATION_BUCKETS.to_vec())
                        .build()
                };
                v.insert(ServiceMeters {
                    server: hist(
                        "http.server.request.duration",
                        "Duration of HTTP server requests.",
                    ),
                    client: hist(
                        "http.client.request.duration",
                        "Duration of HTTP client requests.",
                    ),
                    provider,
                })
            }
        };
        for s in &batch.spans {
            let secs = s.end_unix_nanos.saturating_sub(s.start_unix_nanos) as f64 / 1e9;
            let (hist, keys) = match s.kind {
                SpanKind::Server => (&meters.server, SERVER_KEYS),
                SpanKind::Client => (&meters.client, CLIENT_KEYS),
            };
            let attrs: Vec<KeyValue> = keys
                .iter()
                .filter_map(|k| {
                    s.attributes
                        .get(k)
                        .map(|v| KeyValue::new(*k, crate::otlp::value(v)))
                })
                .collect();
            hist.record(secs, &attrs);
        }
    }

    pub fn shutdown(&self) {
        for m in self.services.values() {
            let _ = m.provider.force_flush();
            let _ = m.provider.shutdown();
        }
    }
}

//! OTLP span export through opentelemetry-otlp (gRPC or HTTP/protobuf, chosen by OTEL_* variables).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use seam_proto::msg::{self, AttrKey, AttrRef, SpanBatchView, SpanView};

pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("seam")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

pub fn value(v: AttrRef<'_>) -> Value {
    match v {
        AttrRef::Str(s) => Value::from(s.to_string()),
        AttrRef::Ip(ip) => Value::from(ip.to_string()),
        AttrRef::Known(k) => Value::from(k.as_str()),
        AttrRef::Int(i) => Value::from(i),
        AttrRef::Bool(b) => Value::from(b),
    }
}

pub fn key_value(k: &AttrKey, v: AttrRef<'_>) -> KeyValue {
    let key = match k.known_name() {
        Some(name) => Key::from_static_str(name),
        None => Key::from(k.as_str().to_string()),
    };
    KeyValue::new(key, value(v))
}

fn time(unix_nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

pub fn to_span_data(s: &SpanView<'_>, scope: &InstrumentationScope) -> SpanData {
    let state = s.tracestate.parse::<TraceState>().unwrap_or_default();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.trace_id),
            SpanId::from_bytes(s.span_id),
            TraceFlags::new(s.trace_flags),
            false,
            state,
        ),
        parent_span_id: s.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: s.parent_is_remote,
        span_kind: match s.kind {
            msg::SpanKind::Server => SpanKind::Server,
            msg::SpanKind::Client => SpanKind::Client,
        },
        name: match msg::Known::method(s.name) {
            Some(k) => k.as_str().into(),
            None => s.name.to_string().into(),
        },
        start_time: time(s.start_unix_nanos),
        end_time: time(s.end_unix_nanos),
        attributes: s.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match s.status {
            msg::SpanStatus::Error => Status::error(""),
            msg::SpanStatus::Unset => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

#[derive(Debug)]
pub struct OtlpSpans {
    exporter: opentelemetry_otlp::SpanExporter,
    resources: HashMap<u32, (String, Resource)>,
    scope: InstrumentationScope,
}

impl OtlpSpans {
    /// Builds the exporter from the standard `OTEL_EXPORTER_OTLP_*` variables.
    pub fn from_env() -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        Ok(Self {
            exporter: opentelemetry_otlp::SpanExporter::builder().build()?,
            resources: HashMap::new(),
            scope: scope(),
        })
    }

    /// Exports the sampled spans of one batch under its service's resource.
    pub async fn export(&mut self, batch: &SpanBatchView<'_>) -> Result<(), String> {
        let spans: Vec<SpanData> = batch
            .spans
            .iter()
            .filter(|s| s.sampled())
            .map(|s| to_span_data(s, &self.scope))
            .collect();
        if spans.is_empty() {
            return Ok(());
        }
        let id = &batch.service;
        let stale = self
            .resources
            .get(&id.pid)
            .is_none_or(|(name, _)| *name != id.service_name);
        if stale {
            self.resources
                .insert(id.pid, (id.service_name.clone(), crate::resource::of(id)));
        }
        if let Some((_, r)) = self.resources.get(&id.pid) {
            self.exporter.set_resource(r);
        }
        self.exporter.export(spans).await.map_err(|e| e.to_string())
    }

    pub fn forget(&mut self, pid: u32) {
        self.resources.remove(&pid);
    }
}

//! An OTLP receiver for tests, built on the official OTLP protobuf definitions: gRPC and HTTP/protobuf.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One span as a collector received it, with its resource.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub resource: HashMap<String, String>,
    pub span: Span,
}

fn value_string(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(value_string)
    }

    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attr(key)?.parse().ok()
    }

    pub fn service(&self) -> &str {
        self.resource.get("service.name").map_or("", String::as_str)
    }

    pub fn is_server(&self) -> bool {
        self.span.kind == 2
    }

    pub fn is_client(&self) -> bool {
        self.span.kind == 3
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            self.span
                .end_time_unix_nano
                .saturating_sub(self.span.start_time_unix_nano),
        )
    }
}

#[derive(Default, Debug)]
struct Store {
    spans: Vec<ReceivedSpan>,
    metric_names: Vec<String>,
    /// Latest integer point of each seam self-metric, by (metric name, `seam.daemon`).
    self_points: HashMap<(String, String), i64>,
    requests: HashMap<&'static str, u64>,
}

type Shared = Arc<Mutex<Store>>;

fn store_traces(store: &Shared, req: ExportTraceServiceRequest, via: &'static str) {
    let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
    *s.requests.entry(via).or_default() += 1;
    for rs in req.resource_spans {
        let resource: HashMap<String, String> = rs
            .resource
            .map(|r| {
                r.attributes
                    .iter()
                    .filter_map(|kv| Some((kv.key.clone(), value_string(kv)?)))
                    .collect()
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                s.spans.push(ReceivedSpan {
                    resource: resource.clone(),
                    span,
                });
            }
        }
    }
}

fn store_metrics(store: &Shared, req: ExportMetricsServiceRequest) {
    let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
    for rm in req.resource_metrics {
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
                let points = match &m.data {
                    Some(Data::Sum(sum)) => sum.data_points.as_slice(),
                    Some(Data::Gauge(g)) => g.data_points.as_slice(),
                    _ => &[],
                };
                for p in points {
                    let daemon = p
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "seam.daemon")
                        .and_then(value_string);
                    if let (Some(daemon), Some(number_data_point::Value::AsInt(v))) =
                        (daemon, p.value)
                    {
                        s.self_points.insert((m.name.clone(), daemon), v);
                    }
                }
                if !s.metric_names.contains(&m.name) {
                    s.metric_names.push(m.name);
                }
            }
        }
    }
}

#[derive(Clone)]
struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        store_traces(&self.0, request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        store_metrics(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves `/v1/traces` and `/v1/metrics` (HTTP/1.1, protobuf bodies) on one connection at a time each.
async fn serve_http(listener: tokio::net::TcpListener, store: Shared) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut tmp = [0u8; 8192];
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let mut tmp = [0u8; 65536];
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let body = buf[head_end..head_end + len].to_vec();
                buf.drain(..head_end + len);
                let ok = match path.as_str() {
                    "/v1/traces" => ExportTraceServiceRequest::decode(body.as_slice())
                        .map(|r| store_traces(&store, r, "http"))
                        .is_ok(),
                    "/v1/metrics" => ExportMetricsServiceRequest::decode(body.as_slice())
                        .map(|r| store_metrics(&store, r))
                        .is_ok(),
                    _ => false,
                };
                let status = if ok { "200 OK" } else { "400 Bad Request" };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                );
                if sock.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A collector listening on loopback for the duration of a test.
pub struct OtlpReceiver {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    store: Shared,
    /// None while paused (the collector is down).
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .finish()
    }
}

impl OtlpReceiver {
    pub fn start() -> anyhow::Result<Self> {
        let store: Shared = Arc::default();
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let (rt, grpc_addr, http_addr) = Self::serve(any, any, store.clone())?;
        Ok(Self {
            grpc_addr,
            http_addr,
            store,
            rt: Some(rt),
        })
    }

    fn serve(
        grpc_at: SocketAddr,
        http_at: SocketAddr,
        store: Shared,
    ) -> anyhow::Result<(tokio::runtime::Runtime, SocketAddr, SocketAddr)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (grpc_addr, http_addr) = rt.block_on(async {
            let grpc = tokio::net::TcpListener::bind(grpc_at).await?;
            let http = tokio::net::TcpListener::bind(http_at).await?;
            let addrs = (grpc.local_addr()?, http.local_addr()?);
            let svc = Grpc(store.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(svc.clone()))
                    .add_service(MetricsServiceServer::new(svc))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
            );
            tokio::spawn(serve_http(http, store.clone()));
            Ok::<_, anyhow::Error>(addrs)
        })?;
        Ok((rt, grpc_addr, http_addr))
    }

    /// Takes the collector down: its listeners and every open connection close.
    pub fn pause(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Brings the collector back on the same addresses, keeping what it had received.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.rt.is_none() {
            let (rt, _, _) = Self::serve(self.grpc_addr, self.http_addr, self.store.clone())?;
            self.rt = Some(rt);
        }
        Ok(())
    }

    /// Environment for seam-exporter to send here with the given protocol (`grpc` or `http/protobuf`).
    pub fn exporter_env(&self, protocol: &str) -> Vec<(String, String)> {
        let addr = if protocol == "grpc" {
            self.grpc_addr
        } else {
            self.http_addr
        };
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{addr}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
            ("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into()),
        ]
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spans
            .clone()
    }

    pub fn metric_names(&self) -> Vec<String> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .metric_names
            .clone()
    }

    /// The latest value the exporter sent of seam's own metric `name` for `daemon`.
    pub fn self_metric(&self, name: &str, daemon: &str) -> Option<i64> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .self_points
            .get(&(name.to_string(), daemon.to_string()))
            .copied()
    }

    pub fn requests_via(&self, via: &str) -> u64 {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .get(via)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `pred` holds for the received spans, or the timeout passes; returns the spans.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let timeout = crate::patience(timeout);
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if pred(&spans) || start.elapsed() > timeout {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

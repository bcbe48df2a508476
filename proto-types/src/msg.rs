//! The closed set of requests each daemon accepts, one enum per receiving role.

use serde::{Deserialize, Serialize};

use crate::Role;

/// First frame on every connection: who the client says it is and which protocol it speaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
}

/// The server's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted { version: u32 },
}

/// discover → loader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoaderRequest {
    AddTarget { pid: u32 },
    RemoveTarget { pid: u32 },
}

/// discover → ctxprop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtxpropRequest {
    AddTarget { pid: u32 },
    RemoveTarget { pid: u32 },
}

/// Who a target process is, as discover resolved it from the process itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceIdentity {
    pub service_name: String,
    pub service_namespace: Option<String>,
    pub instance_id: String,
    pub pid: u32,
    pub executable_name: String,
    pub executable_path: String,
    pub host_name: String,
    /// Further resource attributes from the target's `OTEL_RESOURCE_ATTRIBUTES`.
    pub extra: Vec<(String, String)>,
}

/// discover → correlator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CorrelatorRequest {
    ServiceUp(ServiceIdentity),
    ServiceDown { pid: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpanStatus {
    Unset,
    Error,
}

/// Attribute keys seam emits, sent as one byte instead of a string; anything else is `Other`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrKey {
    HttpRequestMethod,
    HttpResponseStatusCode,
    UrlPath,
    UrlQuery,
    UrlScheme,
    UrlFull,
    NetworkProtocolVersion,
    NetworkPeerAddress,
    NetworkPeerPort,
    HttpRequestBodySize,
    HttpResponseBodySize,
    ServerAddress,
    ServerPort,
    ClientAddress,
    ThreadId,
    Other(String),
}

impl AttrKey {
    /// The semantic-convention name of a known key (`None` only for `Other`).
    pub fn known_name(&self) -> Option<&'static str> {
        Some(match self {
            AttrKey::HttpRequestMethod => "http.request.method",
            AttrKey::HttpResponseStatusCode => "http.response.status_code",
            AttrKey::UrlPath => "url.path",
            AttrKey::UrlQuery => "url.query",
            AttrKey::UrlScheme => "url.scheme",
            AttrKey::UrlFull => "url.full",
            AttrKey::NetworkProtocolVersion => "network.protocol.version",
            AttrKey::NetworkPeerAddress => "network.peer.address",
            AttrKey::NetworkPeerPort => "network.peer.port",
            AttrKey::HttpRequestBodySize => "http.request.body.size",
            AttrKey::HttpResponseBodySize => "http.response.body.size",
            AttrKey::ServerAddress => "server.address",
            AttrKey::ServerPort => "server.port",
            AttrKey::ClientAddress => "client.address",
            AttrKey::ThreadId => "thread.id",
            AttrKey::Other(_) => return None,
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            AttrKey::Other(s) => s,
            known => known.known_name().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// One finished span, with W3C ids and OpenTelemetry HTTP attributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_flags: u8,
    pub tracestate: String,
    /// The parent came from another process (e.g. an incoming traceparent).
    pub parent_is_remote: bool,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status: SpanStatus,
    pub attributes: Vec<(AttrKey, AttrValue)>,
}

impl SpanRecord {
    pub fn sampled(&self) -> bool {
        self.trace_flags & 0x01 != 0
    }

    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }
}

/// Spans of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanBatch {
    pub service: ServiceIdentity,
    pub spans: Vec<SpanRecord>,
}

/// Counters a daemon reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfCounters {
    pub events: u64,
    pub lost_events: u64,
    pub spans: u64,
    pub dropped_spans: u64,
}

/// correlator → exporter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ExporterRequest {
    Spans(SpanBatch),
    Counters { role: Role, counters: SelfCounters },
}

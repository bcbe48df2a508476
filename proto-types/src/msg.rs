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

/// discover → loader. `propagation` is the target's selector override of `context_propagation`:
/// the loader keeps it with the target, so processes the target forks inherit it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoaderRequest {
    AddTarget {
        pid: u32,
        propagation: Option<Propagation>,
    },
    RemoveTarget {
        pid: u32,
    },
    /// A file mapped by target `pid` that may hold OpenSSL, sent open with the request (the loader
    /// never opens paths it is told): a `libssl.so.*` library, or the executable itself (Node.js
    /// links OpenSSL statically). The loader probes each distinct file once.
    TlsLibrary {
        pid: u32,
        file: TlsFile,
    },
}

/// What kind of file a [`LoaderRequest::TlsLibrary`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsFile {
    /// A `libssl.so.*` the process mapped: it must export OpenSSL's API.
    Library,
    /// The process's executable: OpenSSL only if linked in and exported.
    Executable,
}

impl crate::ipc::Request for LoaderRequest {
    fn passed_fds(&self) -> usize {
        match self {
            LoaderRequest::TlsLibrary { .. } => 1,
            LoaderRequest::AddTarget { .. } | LoaderRequest::RemoveTarget { .. } => 0,
        }
    }
}

impl crate::ipc::Request for CtxpropRequest {}
impl crate::ipc::Request for CorrelatorRequest {}
impl crate::ipc::Request for ExporterRequest {}

/// discover → ctxprop. A target's `propagation` is its selector's override of ctxprop's own
/// `context_propagation`; `None` keeps ctxprop's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtxpropRequest {
    AddTarget {
        pid: u32,
        propagation: Option<Propagation>,
    },
    RemoveTarget {
        pid: u32,
    },
}

/// `context_propagation`: which carriers give a request its context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// The header and the TCP option.
    All,
    /// A `traceparent` header in plaintext HTTP/1.x requests.
    Headers,
    /// A TCP option (kind 25) on the request's first data segment.
    Tcp,
    /// Nothing is modified (the default: injection is opted into).
    #[default]
    Disabled,
}

/// Bits of a carrier set (the eBPF side's `SEAM_CARRIER_*`).
pub const CARRIER_HEADER: u32 = 1;
pub const CARRIER_TCP_OPTION: u32 = 2;

impl Propagation {
    /// The carriers this setting writes; none for `disabled`.
    pub fn carriers(self) -> u32 {
        match self {
            Propagation::All => CARRIER_HEADER | CARRIER_TCP_OPTION,
            Propagation::Headers => CARRIER_HEADER,
            Propagation::Tcp => CARRIER_TCP_OPTION,
            Propagation::Disabled => 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("context_propagation must be all, headers, tcp or disabled, got {0:?}")]
pub struct BadPropagation(pub String);

impl std::str::FromStr for Propagation {
    type Err = BadPropagation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(Propagation::All),
            "headers" => Ok(Propagation::Headers),
            "tcp" => Ok(Propagation::Tcp),
            "disabled" => Ok(Propagation::Disabled),
            other => Err(BadPropagation(other.to_string())),
        }
    }
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
    /// How seam read the bytes; present (as `tls`) when they came from the TLS library.
    SeamCapture,
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
            AttrKey::SeamCapture => "seam.capture",
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

/// Attribute values that recur on every span, sent as one byte and exported without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Known {
    Http,
    Https,
    Http10,
    Http11,
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Patch,
    Connect,
    Trace,
    /// `seam.capture`: plaintext read at the TLS library's boundary.
    Tls,
}

impl Known {
    pub fn as_str(self) -> &'static str {
        match self {
            Known::Http => "http",
            Known::Https => "https",
            Known::Http10 => "1.0",
            Known::Http11 => "1.1",
            Known::Get => "GET",
            Known::Post => "POST",
            Known::Put => "PUT",
            Known::Delete => "DELETE",
            Known::Head => "HEAD",
            Known::Options => "OPTIONS",
            Known::Patch => "PATCH",
            Known::Connect => "CONNECT",
            Known::Tls => "tls",
            Known::Trace => "TRACE",
        }
    }

    pub fn method(m: &str) -> Option<Known> {
        Some(match m {
            "GET" => Known::Get,
            "POST" => Known::Post,
            "PUT" => Known::Put,
            "DELETE" => Known::Delete,
            "HEAD" => Known::Head,
            "OPTIONS" => Known::Options,
            "PATCH" => Known::Patch,
            "CONNECT" => Known::Connect,
            "TRACE" => Known::Trace,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    Str(String),
    /// An address: sent as bytes, so neither side allocates text for it per span.
    Ip(std::net::IpAddr),
    Known(Known),
    Int(i64),
    Bool(bool),
}

impl AttrValue {
    /// The text of a string-like value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            AttrValue::Known(k) => Some(k.as_str()),
            _ => None,
        }
    }
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
    /// Borrowed where it is a method seam knows, so most spans' names cost no allocation.
    pub name: std::borrow::Cow<'static, str>,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status: SpanStatus,
    #[serde(with = "crate::attr_wire")]
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

/// correlator → exporter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ExporterRequest {
    Spans(SpanBatch),
}

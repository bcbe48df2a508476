//! The closed set of requests each daemon accepts, one enum per receiving role.

use serde::{Deserialize, Serialize};

pub use crate::attr_wire::{AttrRef, AttrsView};
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
    fn from_frame(body: &[u8]) -> Result<Self, crate::codec::CodecError> {
        crate::codec::decode(body)
    }

    fn passed_fds(&self) -> usize {
        match self {
            LoaderRequest::TlsLibrary { .. } => 1,
            LoaderRequest::AddTarget { .. } | LoaderRequest::RemoveTarget { .. } => 0,
        }
    }
}

impl crate::ipc::Request for CtxpropRequest {
    fn from_frame(body: &[u8]) -> Result<Self, crate::codec::CodecError> {
        crate::codec::decode(body)
    }
}

impl crate::ipc::Request for CorrelatorRequest {
    fn from_frame(body: &[u8]) -> Result<Self, crate::codec::CodecError> {
        crate::codec::decode(body)
    }
}

/// The exporter serves span batches as checked frames, read in place.
impl crate::ipc::Request for ExporterFrame {
    fn from_frame(body: &[u8]) -> Result<Self, crate::codec::CodecError> {
        ExporterFrame::check(body)
    }
}

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

/// A [`SpanRecord`] read in place from a received frame (the same bytes): its text is borrowed,
/// so the exporter decodes a span without allocating. Fields in the record's order.
#[derive(Debug, Deserialize)]
pub struct SpanView<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_flags: u8,
    pub tracestate: &'a str,
    pub parent_is_remote: bool,
    pub name: &'a str,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status: SpanStatus,
    #[serde(borrow)]
    pub attributes: AttrsView<'a>,
}

impl SpanView<'_> {
    pub fn sampled(&self) -> bool {
        self.trace_flags & 0x01 != 0
    }

    pub fn to_owned_record(&self) -> SpanRecord {
        SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            trace_flags: self.trace_flags,
            tracestate: self.tracestate.to_string(),
            parent_is_remote: self.parent_is_remote,
            name: std::borrow::Cow::Owned(self.name.to_string()),
            kind: self.kind,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.end_unix_nanos,
            status: self.status,
            attributes: self.attributes.to_owned_list(),
        }
    }
}

/// Spans of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanBatch {
    pub service: ServiceIdentity,
    pub spans: Vec<SpanRecord>,
}

/// A [`SpanBatch`] read in place from a received frame.
#[derive(Debug, Deserialize)]
pub struct SpanBatchView<'a> {
    pub service: ServiceIdentity,
    #[serde(borrow)]
    pub spans: Vec<SpanView<'a>>,
}

impl SpanBatchView<'_> {
    pub fn to_owned_batch(&self) -> SpanBatch {
        SpanBatch {
            service: self.service.clone(),
            spans: self.spans.iter().map(SpanView::to_owned_record).collect(),
        }
    }
}

/// correlator → exporter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ExporterRequest {
    Spans(SpanBatch),
}

/// An [`ExporterRequest::Spans`] made of borrowed spans: the same bytes, without moving each span
/// into a batch of its own.
#[derive(Debug, Serialize)]
pub enum ExporterRequestRef<'a> {
    Spans {
        service: &'a ServiceIdentity,
        spans: &'a [&'a SpanRecord],
    },
}

/// An [`ExporterRequest`] read in place from its frame; variants in the same order.
#[derive(Debug, Deserialize)]
enum ExporterRequestView<'a> {
    #[serde(borrow)]
    Spans(SpanBatchView<'a>),
}

/// An [`ExporterRequest`] decoded only to be checked: every span is read as a [`SpanView`] and
/// counted, none is kept (a list of views would be allocated and each view moved into it).
#[derive(Debug, Deserialize)]
enum ExporterRequestCheck {
    Spans {
        #[serde(rename = "service")]
        _service: ServiceIdentity,
        spans: SpanCount,
    },
}

/// How many spans a batch holds, each decoded and dropped.
#[derive(Debug)]
struct SpanCount(usize);

impl<'de> Deserialize<'de> for SpanCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> serde::de::Visitor<'de> for Count {
            type Value = SpanCount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of spans")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SpanCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<SpanView<'de>>()?.is_some() {
                    n += 1;
                }
                Ok(SpanCount(n))
            }
        }
        d.deserialize_seq(Count)
    }
}

/// What the exporter keeps of an [`ExporterRequest`]: the frame's body, checked to decode when
/// it arrived and read in place only when something reads the spans (decoding a batch into
/// owned spans cost an allocation per text attribute, freed on another thread, whether or not
/// anything read them).
#[derive(Debug)]
pub struct ExporterFrame {
    body: Vec<u8>,
    spans: usize,
}

impl ExporterFrame {
    /// Takes a frame's body if it decodes as an [`ExporterRequest`].
    pub fn check(body: &[u8]) -> Result<Self, crate::codec::CodecError> {
        let ExporterRequestCheck::Spans { spans, .. } = crate::codec::decode_borrowed(body)?;
        Ok(Self {
            body: body.to_vec(),
            spans: spans.0,
        })
    }

    /// The frame the exporter receives for `batch`.
    pub fn of(batch: &SpanBatch) -> Result<Self, crate::codec::CodecError> {
        let request = ExporterRequest::Spans(batch.clone());
        Self::check(&crate::codec::encode(
            &request,
            u64::from(crate::frame::MAX_FRAME),
        )?)
    }

    /// How many spans the batch holds.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// The batch; it decoded when checked, so an error here means its memory was overwritten.
    pub fn view(&self) -> Result<SpanBatchView<'_>, crate::codec::CodecError> {
        let ExporterRequestView::Spans(batch) = crate::codec::decode_borrowed(&self.body)?;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn batch() -> SpanBatch {
        let span = |i: u8, method: &str, attributes| SpanRecord {
            trace_id: [i; 16],
            span_id: [i ^ 1; 8],
            parent_span_id: (i % 2 == 1).then_some([3; 8]),
            trace_flags: i & 1,
            tracestate: if i == 2 { "k=v".into() } else { String::new() },
            parent_is_remote: i == 2,
            name: method.to_string().into(),
            kind: SpanKind::Client,
            start_unix_nanos: u64::from(i) << 40,
            end_unix_nanos: (u64::from(i) << 40) + 9,
            status: SpanStatus::Error,
            attributes,
        };
        SpanBatch {
            service: ServiceIdentity {
                service_name: "svc".into(),
                service_namespace: Some("ns".into()),
                extra: vec![("a".into(), "b".into())],
                ..ServiceIdentity::default()
            },
            spans: vec![
                span(
                    1,
                    "GET",
                    vec![
                        (AttrKey::HttpRequestMethod, AttrValue::Known(Known::Get)),
                        (AttrKey::UrlPath, AttrValue::Str("/é".into())),
                        (
                            AttrKey::NetworkPeerAddress,
                            AttrValue::Ip("fe80::1".parse().expect("ip")),
                        ),
                        (AttrKey::ServerPort, AttrValue::Int(-5)),
                    ],
                ),
                span(
                    2,
                    "PURGE",
                    vec![
                        (AttrKey::HttpRequestMethod, AttrValue::Str("PURGE".into())),
                        (AttrKey::Other("x.y".into()), AttrValue::Bool(true)),
                        (AttrKey::UrlPath, AttrValue::Str("/a".into())),
                        (AttrKey::UrlPath, AttrValue::Str("/b".into())),
                    ],
                ),
                span(3, "", Vec::new()),
            ],
        }
    }

    #[test]
    fn a_frame_read_in_place_is_the_batch_decoded() {
        let sent = batch();
        let body = codec::encode(&ExporterRequest::Spans(sent.clone()), 1 << 20).expect("encodes");
        let ExporterRequest::Spans(decoded) = codec::decode(&body).expect("decodes");
        let frame = ExporterFrame::check(&body).expect("checks");
        assert_eq!(frame.spans(), 3);
        let view = frame.view().expect("reads");
        assert_eq!(view.to_owned_batch(), decoded);
        assert_eq!(
            view.spans[0].attributes.get("url.path"),
            Some(AttrRef::Str("/é"))
        );
        assert_eq!(
            view.spans[1].attributes.get("url.path"),
            Some(AttrRef::Str("/a"))
        );
        assert_eq!(
            view.spans[1].attributes.get("x.y"),
            Some(AttrRef::Bool(true))
        );
        assert_eq!(view.spans[1].attributes.get("url.query"), None);
        assert_eq!(view.spans[1].tracestate, "k=v");
        assert!(view.spans[0].sampled() && !view.spans[1].sampled());
    }

    #[test]
    fn borrowed_spans_encode_as_a_batch() {
        let sent = batch();
        let spans: Vec<&SpanRecord> = sent.spans.iter().collect();
        let borrowed = ExporterRequestRef::Spans {
            service: &sent.service,
            spans: &spans,
        };
        assert_eq!(
            codec::encode(&borrowed, 1 << 20).expect("encodes"),
            codec::encode(&ExporterRequest::Spans(sent.clone()), 1 << 20).expect("encodes")
        );
    }

    #[test]
    fn a_frame_is_checked_like_a_decode() {
        let body = codec::encode(&ExporterRequest::Spans(batch()), 1 << 20).expect("encodes");
        for cut in 0..body.len() {
            assert!(ExporterFrame::check(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(ExporterFrame::check(&longer).is_err());
        // "/é" is the only non-ASCII text: an invalid UTF-8 byte in its place is refused
        let at = body
            .windows(2)
            .position(|w| w == "é".as_bytes())
            .expect("the path is in the frame");
        let mut bad = body.clone();
        bad[at] = 0xff;
        assert!(codec::decode::<ExporterRequest>(&bad).is_err());
        assert!(ExporterFrame::check(&bad).is_err());
        assert!(ExporterFrame::check(&body).is_ok());
    }
}

//! Builds OpenTelemetry HTTP spans (semantic conventions) from finished exchanges.

use std::borrow::Cow;
use std::net::IpAddr;

use seam_proto::msg::{AttrKey, AttrValue, Known, SpanKind, SpanRecord, SpanStatus};

use crate::conn::{Exchange, Side};
use crate::context::SpanCtx;
use crate::http::Method;

/// Local and remote ends of the connection, as the kernel saw them, with their text formatted
/// once per connection rather than once per span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// The remote address as it is reported: an IPv4-mapped IPv6 address as IPv4.
    remote_ip: IpAddr,
    /// The connection's bytes came as plaintext from its TLS library: an HTTPS connection.
    pub tls: bool,
    local_text: String,
    remote_text: String,
}

impl Endpoints {
    pub fn new(local: (IpAddr, u16), remote: (IpAddr, u16)) -> Self {
        Self {
            local_text: addr_string(local.0),
            remote_text: addr_string(remote.0),
            remote_ip: unmapped(remote.0),
            tls: false,
            local,
            remote,
        }
    }
}

/// Turns monotonic kernel timestamps into Unix time.
pub trait Clock {
    fn unix_nanos(&self, monotonic_ns: u64) -> u64;
}

fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; anything else unchanged.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn addr_string(ip: IpAddr) -> String {
    unmapped(ip).to_string()
}

/// Where `part` lies in `whole`, if it is a slice of it (a path may also be a constant "/").
fn range_in(whole: &str, part: &str) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// `text` cut down to `range` in place: the head's own allocation becomes the attribute's.
fn keep_only(mut text: String, range: std::ops::Range<usize>) -> String {
    text.truncate(range.end);
    text.drain(..range.start);
    text
}

/// Takes the exchange by value: its request's method, target and Host text become the span's
/// name and attributes without being copied (a method seam does not know is copied once, for
/// its attribute).
pub fn build(ex: Exchange, ends: &Endpoints, clock: &dyn Clock, ctx: SpanCtx) -> SpanRecord {
    let Exchange {
        side,
        request,
        response,
        start_ns,
        end_ns,
        request_body_bytes,
        response_body_bytes,
        tid,
        ..
    } = ex;
    let status_code = response.status;
    let scheme = if ends.tls { Known::Https } else { Known::Http };
    let (server_end, server_text, kind) = match side {
        Side::Server => (ends.local, &ends.local_text, SpanKind::Server),
        Side::Client => (ends.remote, &ends.remote_text, SpanKind::Client),
    };
    let (host_range, port) = match &request.fields.host {
        Some(h) => {
            let (name, p) = split_host(h);
            (range_in(h, name), p.unwrap_or(server_end.1))
        }
        None => (None, server_end.1),
    };
    let host = match (&request.fields.host, &host_range) {
        (Some(h), Some(r)) => &h[r.clone()],
        _ => server_text.as_str(),
    };
    // Built while the head's text is still whole; after this it moves into the attributes.
    let url_full = (side == Side::Client).then(|| {
        // an IPv6 literal is bracketed in a URL (RFC 3986 §3.2.2)
        let (open, close) = if host.contains(':') {
            ("[", "]")
        } else {
            ("", "")
        };
        format!(
            "{}://{open}{host}{close}:{port}{}",
            scheme.as_str(),
            request.target_for_url()
        )
    });
    let query = request.query().map(str::to_string);
    let path = request.path();
    let path_range = range_in(&request.target, path).ok_or_else(|| path.to_string());
    let minor_version = request.minor_version;
    let server_address = match (request.fields.host, host_range) {
        (Some(h), Some(r)) => keep_only(h, r),
        _ => server_text.clone(),
    };
    let (method_attr, name) = match request.method {
        Method::Known(k) => (AttrValue::Known(k), Cow::Borrowed(k.as_str())),
        Method::Other(m) => (AttrValue::Str(m.clone()), Cow::Owned(m)),
    };

    let mut attrs: Vec<(AttrKey, AttrValue)> = Vec::with_capacity(16);
    let mut put = |k: AttrKey, v: AttrValue| attrs.push((k, v));
    put(AttrKey::HttpRequestMethod, method_attr);
    put(
        AttrKey::HttpResponseStatusCode,
        AttrValue::Int(i64::from(status_code)),
    );
    put(
        AttrKey::UrlPath,
        AttrValue::Str(match path_range {
            Ok(range) => keep_only(request.target, range),
            Err(constant) => constant,
        }),
    );
    if let Some(q) = query {
        put(AttrKey::UrlQuery, AttrValue::Str(q));
    }
    put(AttrKey::UrlScheme, AttrValue::Known(scheme));
    put(
        AttrKey::NetworkProtocolVersion,
        AttrValue::Known(if minor_version == 0 {
            Known::Http10
        } else {
            Known::Http11
        }),
    );
    put(AttrKey::NetworkPeerAddress, AttrValue::Ip(ends.remote_ip));
    put(
        AttrKey::NetworkPeerPort,
        AttrValue::Int(i64::from(ends.remote.1)),
    );
    if let Some(n) = request_body_bytes {
        put(AttrKey::HttpRequestBodySize, AttrValue::Int(n as i64));
    }
    if let Some(n) = response_body_bytes {
        put(AttrKey::HttpResponseBodySize, AttrValue::Int(n as i64));
    }
    put(AttrKey::ServerAddress, AttrValue::Str(server_address));
    put(AttrKey::ServerPort, AttrValue::Int(i64::from(port)));
    match url_full {
        None => put(AttrKey::ClientAddress, AttrValue::Ip(ends.remote_ip)),
        Some(url) => put(AttrKey::UrlFull, AttrValue::Str(url)),
    }
    put(AttrKey::ThreadId, AttrValue::Int(i64::from(tid)));
    if ends.tls {
        put(AttrKey::SeamCapture, AttrValue::Known(Known::Tls));
    }

    let error = match side {
        Side::Server => status_code >= 500,
        Side::Client => status_code >= 400,
    };
    SpanRecord {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_flags: ctx.flags,
        tracestate: ctx.tracestate,
        parent_is_remote: ctx.parent_is_remote,
        name,
        kind,
        start_unix_nanos: clock.unix_nanos(start_ns),
        end_unix_nanos: clock.unix_nanos(end_ns),
        status: if error {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        },
        attributes: attrs,
    }
}

impl crate::http::RequestHead {
    /// The target as it goes into `url.full`: origin-form path and query, fragment dropped.
    pub fn target_for_url(&self) -> String {
        match self.query() {
            Some(q) => format!("{}?{q}", self.path()),
            None => self.path().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context;
    use crate::http::{parse_head, Head};
    use crate::traceparent;

    struct Fixed;
    impl Clock for Fixed {
        fn unix_nanos(&self, m: u64) -> u64 {
            1_000_000 + m
        }
    }

    fn exchange(side: Side, req: &str, status: &str) -> Exchange {
        let Some(Head::Request(request)) = parse_head(req.as_bytes()) else {
            panic!("request")
        };
        let Some(Head::Response(response)) = parse_head(status.as_bytes()) else {
            panic!("response")
        };
        Exchange {
            side,
            request,
            response,
            start_ns: 10,
            end_ns: 30,
            request_body_bytes: Some(0),
            response_body_bytes: Some(5),
            tid: 3,
            seq: 0,
        }
    }

    fn ends() -> Endpoints {
        Endpoints::new(
            ("::ffff:127.0.0.1".parse().expect("ip"), 8080),
            ("127.0.0.1".parse().expect("ip"), 50000),
        )
    }

    #[test]
    fn server_span_carries_its_context_and_semconv_attributes() {
        let ex = exchange(
            Side::Server,
            "GET /a?b=1 HTTP/1.1\r\nHost: svc:8080\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: a=1\r\n\r\n",
            "HTTP/1.1 503 Busy\r\n\r\n",
        );
        let (h, state) = context::from_headers(
            &ex.request.fields.traceparent,
            &ex.request.fields.tracestate,
        )
        .expect("valid header");
        let s = build(ex, &ends(), &Fixed, SpanCtx::continuing(&h, state));
        assert_eq!(
            traceparent::hex(&s.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            s.parent_span_id.map(|p| traceparent::hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(s.parent_is_remote);
        assert_eq!(s.tracestate, "a=1");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.status, SpanStatus::Error);
        assert_eq!(s.start_unix_nanos, 1_000_010);
        assert_eq!(s.attr("url.path"), Some(&AttrValue::Str("/a".into())));
        assert_eq!(
            s.attr("server.address"),
            Some(&AttrValue::Str("svc".into()))
        );
        assert_eq!(
            s.attr("http.response.status_code"),
            Some(&AttrValue::Int(503))
        );
        assert_eq!(
            s.attr("http.request.method").and_then(AttrValue::as_str),
            Some("GET")
        );
        assert_eq!(
            s.attr("network.peer.address"),
            Some(&AttrValue::Ip([127, 0, 0, 1].into()))
        );
    }

    #[test]
    fn client_span_has_url_full_and_4xx_error() {
        let ex = exchange(
            Side::Client,
            "GET /x?y HTTP/1.1\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\n\r\n",
        );
        let s = build(ex, &ends(), &Fixed, SpanCtx::root());
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.status, SpanStatus::Error);
        assert_eq!(
            s.attr("url.full"),
            Some(&AttrValue::Str("http://127.0.0.1:50000/x?y".into()))
        );
        assert_eq!(split_host("[::1]:9"), ("::1", Some(9)));
        let no_path = exchange(
            Side::Client,
            "OPTIONS http://h:1 HTTP/1.1\r\nHost: h:1\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
        );
        let s = build(no_path, &ends(), &Fixed, SpanCtx::root());
        assert_eq!(s.attr("url.path"), Some(&AttrValue::Str("/".into())));
        assert_eq!(s.attr("server.address"), Some(&AttrValue::Str("h".into())));
        assert_eq!(s.name, "OPTIONS");
        let unknown = exchange(
            Side::Server,
            "PURGE /p/q?r#s HTTP/1.1\r\nHost: [fe80::1]\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        );
        let s = build(unknown, &ends(), &Fixed, SpanCtx::root());
        assert_eq!(s.name, "PURGE");
        assert_eq!(
            s.attr("http.request.method"),
            Some(&AttrValue::Str("PURGE".into()))
        );
        assert_eq!(s.attr("url.path"), Some(&AttrValue::Str("/p/q".into())));
        assert_eq!(s.attr("url.query"), Some(&AttrValue::Str("r".into())));
        assert_eq!(
            s.attr("server.address"),
            Some(&AttrValue::Str("fe80::1".into()))
        );
        assert_eq!(s.attr("server.port"), Some(&AttrValue::Int(8080)));
        let v6 = exchange(
            Side::Client,
            "GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
        );
        let s = build(v6, &ends(), &Fixed, SpanCtx::root());
        assert_eq!(
            s.attr("url.full"),
            Some(&AttrValue::Str("http://[::1]:8080/x".into()))
        );
        assert_eq!(
            s.attr("server.address"),
            Some(&AttrValue::Str("::1".into()))
        );
        assert_eq!(split_host("h"), ("h", None));
    }
}

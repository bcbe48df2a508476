//! HTTP/1.x message heads from a captured prefix: what a span needs, and where the message ends.

use seam_proto::msg::Known;

/// How the body of a message is delimited (RFC 9112 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLen {
    Fixed(u64),
    Chunked,
    /// The body runs until the connection closes (a response with neither length nor chunking).
    UntilClose,
}

/// Header fields seam cares about, common to requests and responses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub host: Option<String>,
    pub traceparent: Vec<Vec<u8>>,
    pub tracestate: Vec<String>,
    pub connection_close: bool,
    pub upgrade: bool,
    /// Length of the head including the blank line; `None` when the capture ends inside it.
    pub head_len: Option<usize>,
}

/// A request method: one seam knows (no allocation, and spans use it as it is) or another token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Known(Known),
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Known(k) => k.as_str(),
            Method::Other(m) => m,
        }
    }
}

impl PartialEq<&str> for Method {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub target: String,
    pub minor_version: u8,
    pub fields: Fields,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub fields: Fields,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

impl RequestHead {
    pub fn body_len(&self) -> BodyLen {
        if self.fields.chunked {
            BodyLen::Chunked
        } else {
            BodyLen::Fixed(self.fields.content_length.unwrap_or(0))
        }
    }

    /// Path part of the request target (origin-form or absolute-form).
    pub fn path(&self) -> &str {
        let t = self.target.as_str();
        let t = match t.find("://") {
            Some(i) => t[i + 3..].find('/').map_or("/", |j| &t[i + 3 + j..]),
            None => t,
        };
        t.split(['?', '#']).next().unwrap_or(t)
    }

    pub fn query(&self) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        Some(q.split('#').next().unwrap_or(q))
    }
}

impl ResponseHead {
    /// Whether this is an interim (1xx) response other than 101, which another response follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    pub fn body_len(&self, request_method: &str) -> BodyLen {
        if request_method == "HEAD"
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            BodyLen::Fixed(0)
        } else if self.fields.chunked {
            BodyLen::Chunked
        } else if let Some(n) = self.fields.content_length {
            BodyLen::Fixed(n)
        } else {
            BodyLen::UntilClose
        }
    }
}

/// Length of the line starting at `from`, up to (not including) its CRLF; `None` if no CRLF follows.
/// A bare LF inside the line is part of it: only CRLF ends a line here.
fn line_len(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let mut at = 0;
    loop {
        let lf = at + memchr::memchr(b'\n', &rest[at..])?;
        if lf > 0 && rest[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        at = lf + 1;
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_version(v: &[u8]) -> Option<u8> {
    match v {
        b"HTTP/1.1" => Some(1),
        b"HTTP/1.0" => Some(0),
        _ => None,
    }
}

/// Parses the head at the start of `buf`. The start line must be complete; header fields are read
/// as far as the capture goes.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let line_end = line_len(buf, 0)?;
    let line = &buf[..line_end];
    let fields_start = line_end + 2;
    if line.starts_with(b"HTTP/") {
        let mut parts = line.splitn(3, |&b| b == b' ');
        let minor_version = parse_version(parts.next()?)?;
        let code = parts.next()?;
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let status = std::str::from_utf8(code).ok()?.parse().ok()?;
        let fields = parse_fields(buf, fields_start);
        return Some(Head::Response(ResponseHead {
            status,
            minor_version,
            fields,
        }));
    }
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some()
        || method.is_empty()
        || !method.iter().all(|&b| is_token(b))
        || target.is_empty()
        || !target.iter().all(|&b| b.is_ascii_graphic())
    {
        return None;
    }
    let minor_version = parse_version(version)?;
    Some(Head::Request(RequestHead {
        method: match std::str::from_utf8(method).ok().and_then(Known::method) {
            Some(known) => Method::Known(known),
            None => Method::Other(String::from_utf8_lossy(method).into_owned()),
        },
        target: String::from_utf8_lossy(target).into_owned(),
        minor_version,
        fields: parse_fields(buf, fields_start),
    }))
}

fn parse_fields(buf: &[u8], mut pos: usize) -> Fields {
    let mut f = Fields::default();
    while pos < buf.len() {
        let Some(rel) = line_len(buf, pos) else {
            break; // the capture ends inside this line
        };
        let line = &buf[pos..pos + rel];
        pos += rel + 2;
        if line.is_empty() {
            f.head_len = Some(pos);
            break;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        // Most fields are none of these: their name's length rules them out without a compare.
        let is = |wanted: &[u8]| name.len() == wanted.len() && name.eq_ignore_ascii_case(wanted);
        match name.len() {
            14 if is(b"content-length") => {
                f.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            17 if is(b"transfer-encoding") => {
                f.chunked = value
                    .split(|&b| b == b',')
                    .next_back()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            4 if is(b"host") => f.host = Some(String::from_utf8_lossy(value).into_owned()),
            11 if is(b"traceparent") => f.traceparent.push(value.to_vec()),
            10 if is(b"tracestate") => f
                .tracestate
                .push(String::from_utf8_lossy(value).into_owned()),
            10 if is(b"connection") => {
                f.connection_close = value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            7 if is(b"upgrade") => f.upgrade = true,
            _ => {}
        }
    }
    f
}

/// Outcome of walking a chunked body that starts at the beginning of `body`.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkScan {
    /// The last chunk and trailers end after this many bytes.
    Complete(usize),
    /// The body goes on past what was captured.
    NeedMore,
    Malformed,
}

pub fn scan_chunked(body: &[u8]) -> ChunkScan {
    let mut pos = 0;
    loop {
        let Some(rel) = line_len(body, pos) else {
            return ChunkScan::NeedMore;
        };
        let line = &body[pos..pos + rel];
        let size_hex = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or(line)
            .trim_ascii();
        let Some(size) = std::str::from_utf8(size_hex)
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
        else {
            return ChunkScan::Malformed;
        };
        pos += rel + 2;
        if size == 0 {
            // trailer fields, then an empty line
            loop {
                let Some(rel) = line_len(body, pos) else {
                    return ChunkScan::NeedMore;
                };
                pos += rel + 2;
                if rel == 0 {
                    return ChunkScan::Complete(pos);
                }
            }
        }
        pos = match pos.checked_add(size).and_then(|p| p.checked_add(2)) {
            Some(p) => p,
            None => return ChunkScan::Malformed,
        };
        if pos > body.len() {
            return ChunkScan::NeedMore;
        }
    }
}

/// Whether the last bytes written or read end a chunked body.
pub fn ends_chunked(tail: &[u8]) -> bool {
    tail.ends_with(b"\r\n0\r\n\r\n") || tail == b"0\r\n\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> RequestHead {
        match parse_head(s.as_bytes()) {
            Some(Head::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn resp(s: &str) -> ResponseHead {
        match parse_head(s.as_bytes()) {
            Some(Head::Response(r)) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    #[test]
    fn request_head_fields() {
        let r = req("POST /a/b?x=1#f HTTP/1.1\r\nHost: svc:8080\r\nContent-Length: 12\r\ntraceparent: 00-ab\r\nTraceState: k=v\r\n\r\nhello");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.query(), Some("x=1"));
        assert_eq!(r.fields.host.as_deref(), Some("svc:8080"));
        assert_eq!(r.body_len(), BodyLen::Fixed(12));
        assert_eq!(r.fields.traceparent, vec![b"00-ab".to_vec()]);
        assert_eq!(r.fields.tracestate, vec!["k=v".to_string()]);
        assert_eq!(
            r.fields.head_len,
            Some(r.fields.head_len.expect("complete"))
        );
        assert_eq!(
            &"POST /a/b?x=1#f HTTP/1.1\r\nHost: svc:8080\r\nContent-Length: 12\r\ntraceparent: 00-ab\r\nTraceState: k=v\r\n\r\nhello"[r.fields.head_len.expect("complete")..],
            "hello"
        );
    }

    /// Every string of up to seven bytes over {a, CR, LF} from every start: the line ends where
    /// the first CRLF at or after the start begins, whatever bare CRs and LFs come before it.
    #[test]
    fn line_len_finds_the_first_crlf() {
        fn reference(buf: &[u8], from: usize) -> Option<usize> {
            buf.get(from..)?.windows(2).position(|w| w == b"\r\n")
        }
        let alphabet = [b'a', b'\r', b'\n'];
        let mut checked = 0;
        for len in 0..=7u32 {
            for code in 0..3usize.pow(len) {
                let buf: Vec<u8> = (0..len)
                    .map(|i| alphabet[code / 3usize.pow(i) % 3])
                    .collect();
                for from in 0..=buf.len() + 1 {
                    assert_eq!(
                        line_len(&buf, from),
                        reference(&buf, from),
                        "{buf:?} from {from}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 20_000);
    }

    #[test]
    fn absolute_form_and_truncated_heads() {
        assert_eq!(req("GET http://h:1/x/y?q HTTP/1.1\r\n").path(), "/x/y");
        let r = req("GET / HTTP/1.0\r\nHost: a\r\nUser-Ag");
        assert_eq!(r.fields.head_len, None);
        assert_eq!(r.minor_version, 0);
        assert!(parse_head(b"GET / HTTP/1.1").is_none());
        assert!(parse_head(b"GET  / HTTP/1.1\r\n").is_none());
        assert!(parse_head(b"HELLO world\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/2.0\r\n\r\n").is_none());
        assert!(parse_head(b"\x00\x01\x02\r\n").is_none());
    }

    #[test]
    fn response_body_rules() {
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body_len("GET"), BodyLen::Fixed(5));
        assert_eq!(r.body_len("HEAD"), BodyLen::Fixed(0));
        let r = resp("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(r.body_len("GET"), BodyLen::Fixed(0));
        let r = resp("HTTP/1.0 200 OK\r\nServer: x\r\n\r\n");
        assert_eq!(r.body_len("GET"), BodyLen::UntilClose);
        let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(r.body_len("GET"), BodyLen::Chunked);
        assert!(resp("HTTP/1.1 100 Continue\r\n\r\n").is_interim());
        assert!(!resp("HTTP/1.1 101 Switching Protocols\r\n\r\n").is_interim());
        assert!(parse_head(b"HTTP/1.1 20 OK\r\n").is_none());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            scan_chunked(b"5\r\nhello\r\n0\r\n\r\nNEXT"),
            ChunkScan::Complete(15)
        );
        assert_eq!(
            scan_chunked(b"5;ext=1\r\nhello\r\n0\r\nT: v\r\n\r\n"),
            ChunkScan::Complete(27)
        );
        assert_eq!(scan_chunked(b"5\r\nhel"), ChunkScan::NeedMore);
        assert_eq!(scan_chunked(b"zz\r\n"), ChunkScan::Malformed);
        assert!(ends_chunked(b"abc\r\n0\r\n\r\n"));
        assert!(!ends_chunked(b"abc\r\n"));
    }
}

//! Per-connection HTTP/1.x state: pairs requests with responses, in order, across keep-alive and
//! pipelining, and finds where each message ends from lengths, chunk terminators or close.

use std::collections::VecDeque;

use crate::http::{parse_head, scan_chunked, BodyLen, ChunkScan, Head, RequestHead, ResponseHead};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// The process read the bytes.
    In,
    /// The process wrote the bytes.
    Out,
}

/// Which end of the connection this process is, judged from who sends the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

impl Side {
    fn request_dir(self) -> Dir {
        match self {
            Side::Server => Dir::In,
            Side::Client => Dir::Out,
        }
    }
}

/// One read or write the kernel reported on this connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub dir: Dir,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tid: u32,
    pub bytes: u64,
    pub http_start: bool,
    pub payload: &'a [u8],
    pub tail: &'a [u8],
}

/// A finished request/response pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub side: Side,
    pub request: RequestHead,
    pub response: ResponseHead,
    pub start_ns: u64,
    pub end_ns: u64,
    pub request_body_bytes: Option<u64>,
    pub response_body_bytes: Option<u64>,
    /// Thread that read (server) or wrote (client) the request.
    pub tid: u32,
    /// Index of the request on its connection, from 0.
    pub seq: u64,
}

/// A request that just started, so trace context can be given to it before it finishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub seq: u64,
    pub side: Side,
    pub start_ns: u64,
    pub tid: u32,
    pub traceparent: Vec<Vec<u8>>,
    pub tracestate: Vec<String>,
}

#[derive(Clone, Debug)]
struct Tracker {
    body: BodyLen,
    head_len: Option<u64>,
    seen: u64,
    done: bool,
    end_ns: u64,
}

impl Tracker {
    /// Starts tracking a message that begins in this chunk; `captured` starts at the message,
    /// `avail` is how many of the chunk's bytes from there on belong to the message or after it.
    /// Returns the bytes the message used when it ends inside this chunk.
    fn first(
        body: BodyLen,
        head_len: Option<usize>,
        captured: &[u8],
        avail: u64,
        chunk: &Chunk<'_>,
    ) -> (Self, Option<u64>) {
        let mut t = Tracker {
            body,
            head_len: head_len.map(|h| h as u64),
            seen: avail,
            done: false,
            end_ns: chunk.end_ns,
        };
        let Some(head) = head_len else {
            return (t, None);
        };
        let used = match body {
            BodyLen::Fixed(n) => Some(head as u64 + n).filter(|&total| total <= avail),
            BodyLen::Chunked => match scan_chunked(captured.get(head..).unwrap_or(&[])) {
                ChunkScan::Complete(k) => Some((head + k) as u64).filter(|&total| total <= avail),
                ChunkScan::NeedMore if (captured.len() as u64) < avail => {
                    crate::http::ends_chunked(chunk.tail).then_some(avail)
                }
                _ => None,
            },
            BodyLen::UntilClose => None,
        };
        if let Some(u) = used {
            t.seen = u;
            t.done = true;
        }
        (t, used)
    }

    fn more(&mut self, chunk: &Chunk<'_>) {
        self.seen += chunk.bytes;
        self.end_ns = chunk.end_ns;
        self.done = match (self.body, self.head_len) {
            (BodyLen::Fixed(n), Some(h)) => self.seen >= h + n,
            (BodyLen::Chunked, Some(_)) => crate::http::ends_chunked(chunk.tail),
            _ => false,
        };
    }

    fn body_bytes(&self) -> Option<u64> {
        match (self.body, self.head_len) {
            (BodyLen::Fixed(n), Some(_)) if self.done => Some(n),
            (_, Some(h)) => Some(self.seen.saturating_sub(h)),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Pending {
    head: RequestHead,
    start_ns: u64,
    tid: u32,
    seq: u64,
    tracker: Tracker,
}

#[derive(Debug)]
struct OpenResponse {
    request: Pending,
    head: ResponseHead,
    tracker: Tracker,
}

/// What the connection has that did not become a span, for the correlator's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    pub unanswered: u64,
    pub orphan_responses: u64,
    pub truncated_starts: u64,
}

#[derive(Debug, Default)]
pub struct Conn {
    side: Option<Side>,
    pending: VecDeque<Pending>,
    response: Option<OpenResponse>,
    /// After a 101 response the bytes are no longer HTTP/1.x.
    upgraded: bool,
    next_seq: u64,
    /// Requests started since the caller last drained this.
    pub started: Vec<Started>,
    pub last_ns: u64,
    pub leftovers: Leftovers,
}

impl Conn {
    pub fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) {
        self.last_ns = chunk.end_ns;
        if self.upgraded {
            return;
        }
        if !chunk.http_start {
            self.continue_message(chunk, out);
            return;
        }
        let mut offset: usize = 0;
        while (offset as u64) < chunk.bytes {
            let Some(rest) = chunk.payload.get(offset..).filter(|r| !r.is_empty()) else {
                self.leftovers.truncated_starts += 1;
                break;
            };
            let Some(head) = parse_head(rest) else { break };
            let avail = chunk.bytes - offset as u64;
            let used = match head {
                Head::Request(r) => self.start_request(r, rest, avail, chunk),
                Head::Response(r) => self.start_response(r, rest, avail, chunk, out),
            };
            match used {
                Some(u) if u > 0 => offset += u as usize,
                _ => break,
            }
        }
    }

    fn start_request(
        &mut self,
        head: RequestHead,
        captured: &[u8],
        avail: u64,
        chunk: &Chunk<'_>,
    ) -> Option<u64> {
        let side = *self.side.get_or_insert(match chunk.dir {
            Dir::In => Side::Server,
            Dir::Out => Side::Client,
        });
        if side.request_dir() != chunk.dir {
            return None;
        }
        if let Some(last) = self.pending.back_mut() {
            last.tracker.done = true; // a new request start ends the previous one
        }
        let (tracker, used) = Tracker::first(
            head.body_len(),
            head.fields.head_len,
            captured,
            avail,
            chunk,
        );
        let start_ns = match chunk.dir {
            // A read's entry may be long before the bytes arrived; its exit is when they did.
            Dir::In => chunk.end_ns,
            Dir::Out => chunk.start_ns,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.started.push(Started {
            seq,
            side,
            start_ns,
            tid: chunk.tid,
            traceparent: head.fields.traceparent.clone(),
            tracestate: head.fields.tracestate.clone(),
        });
        if self.pending.capacity() == 0 {
            // most connections never have more than one request open
            self.pending.reserve_exact(1);
        }
        self.pending.push_back(Pending {
            head,
            start_ns,
            tid: chunk.tid,
            seq,
            tracker,
        });
        used
    }

    fn start_response(
        &mut self,
        head: ResponseHead,
        captured: &[u8],
        avail: u64,
        chunk: &Chunk<'_>,
        out: &mut Vec<Exchange>,
    ) -> Option<u64> {
        let side = *self.side.get_or_insert(match chunk.dir {
            Dir::In => Side::Client,
            Dir::Out => Side::Server,
        });
        if side.request_dir() == chunk.dir {
            return None;
        }
        if let Some(open) = self.response.take() {
            self.finish(open, out);
        }
        let Some(body) = self
            .pending
            .front()
            .map(|p| head.body_len(p.head.method.as_str()))
        else {
            self.leftovers.orphan_responses += 1;
            return None;
        };
        let (mut tracker, used) =
            Tracker::first(body, head.fields.head_len, captured, avail, chunk);
        if head.is_interim() {
            return used;
        }
        let mut request = self.pending.pop_front()?;
        request.tracker.done = true;
        if head.status == 101 {
            self.upgraded = true;
            tracker.done = true;
        }
        let open = OpenResponse {
            request,
            head,
            tracker,
        };
        if open.tracker.done {
            self.finish(open, out);
        } else {
            self.response = Some(open);
        }
        used
    }

    fn continue_message(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) {
        let Some(side) = self.side else { return };
        if chunk.dir == side.request_dir() {
            if let Some(p) = self.pending.back_mut().filter(|p| !p.tracker.done) {
                p.tracker.more(chunk);
            }
        } else if let Some(open) = self.response.as_mut() {
            open.tracker.more(chunk);
            if open.tracker.done {
                if let Some(open) = self.response.take() {
                    self.finish(open, out);
                }
            }
        }
    }

    fn finish(&mut self, open: OpenResponse, out: &mut Vec<Exchange>) {
        let side = self.side.unwrap_or(Side::Server);
        out.push(Exchange {
            side,
            start_ns: open.request.start_ns,
            end_ns: open.tracker.end_ns.max(open.request.start_ns),
            request_body_bytes: open.request.tracker.body_bytes(),
            response_body_bytes: open.tracker.body_bytes(),
            tid: open.request.tid,
            seq: open.request.seq,
            request: open.request.head,
            response: open.head,
        });
    }

    /// The connection closed: a response delimited by close (or still open) ends here.
    pub fn on_close(&mut self, out: &mut Vec<Exchange>) {
        if let Some(mut open) = self.response.take() {
            open.tracker.done = matches!(open.tracker.body, BodyLen::UntilClose);
            self.finish(open, out);
        }
        self.leftovers.unanswered += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Ends a response that has seen no bytes for a while (e.g. events were lost).
    pub fn expire_open_response(&mut self, out: &mut Vec<Exchange>) {
        if let Some(open) = self.response.take() {
            self.finish(open, out);
        }
    }

    /// Gives up on requests that got no response in time: counted, not reported, state freed.
    pub fn abandon_unanswered(&mut self, abandoned: &mut Vec<u64>) {
        self.leftovers.unanswered += self.pending.len() as u64;
        abandoned.extend(self.pending.drain(..).map(|p| p.seq));
    }

    /// Requests still waiting for (the end of) their response.
    pub fn in_flight(&self) -> u64 {
        self.pending.len() as u64 + u64::from(self.response.is_some())
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.response.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk<'a>(
        dir: Dir,
        t: u64,
        bytes: u64,
        start: bool,
        payload: &'a [u8],
        tail: &'a [u8],
    ) -> Chunk<'a> {
        Chunk {
            dir,
            start_ns: t,
            end_ns: t + 1,
            tid: 7,
            bytes,
            http_start: start,
            payload,
            tail,
        }
    }

    fn whole<'a>(dir: Dir, t: u64, s: &'a [u8]) -> Chunk<'a> {
        chunk(
            dir,
            t,
            s.len() as u64,
            true,
            s,
            &s[s.len().saturating_sub(16)..],
        )
    }

    #[test]
    fn server_keep_alive_pairs_in_order() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        for i in 0..3u64 {
            let req = format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n");
            c.on_chunk(&whole(Dir::In, 100 * i, req.as_bytes()), &mut out);
            c.on_chunk(
                &whole(
                    Dir::Out,
                    100 * i + 10,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                ),
                &mut out,
            );
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].request.path(), "/p2");
        assert_eq!(out[2].side, Side::Server);
        assert_eq!(out[2].start_ns, 201);
        assert_eq!(out[2].end_ns, 211);
        assert_eq!(out[0].response_body_bytes, Some(2));
    }

    #[test]
    fn pipelined_requests_in_one_read() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        let reqs = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\n\r\n";
        c.on_chunk(&whole(Dir::In, 0, reqs), &mut out);
        for i in 0..3 {
            c.on_chunk(
                &whole(Dir::Out, 10 + i, b"HTTP/1.1 204 No Content\r\n\r\n"),
                &mut out,
            );
        }
        let paths: Vec<&str> = out.iter().map(|e| e.request.path()).collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert_eq!(out[1].request_body_bytes, Some(3));
    }

    #[test]
    fn large_body_in_many_writes_ends_on_last_byte() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        c.on_chunk(&whole(Dir::In, 0, b"GET /big HTTP/1.1\r\n\r\n"), &mut out);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        c.on_chunk(&whole(Dir::Out, 10, head), &mut out);
        for i in 0..9 {
            c.on_chunk(&chunk(Dir::Out, 20 + i, 100, false, b"", b""), &mut out);
            assert!(out.is_empty());
        }
        c.on_chunk(&chunk(Dir::Out, 50, 100, false, b"", b""), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_ns, 51);
        assert_eq!(out[0].response_body_bytes, Some(1000));
    }

    #[test]
    fn client_chunked_response_and_upload() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        c.on_chunk(
            &whole(
                Dir::Out,
                0,
                b"POST /u HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n",
            ),
            &mut out,
        );
        c.on_chunk(&chunk(Dir::Out, 1, 5_000_000, false, b"", b""), &mut out);
        c.on_chunk(
            &whole(
                Dir::In,
                5,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
            ),
            &mut out,
        );
        assert!(out.is_empty());
        c.on_chunk(&chunk(Dir::In, 9, 5, false, b"", b"0\r\n\r\n"), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].side, Side::Client);
        assert_eq!(out[0].start_ns, 0);
        assert_eq!(out[0].end_ns, 10);
        assert_eq!(out[0].request_body_bytes, Some(5_000_000));
    }

    #[test]
    fn interim_response_and_close_delimited_body() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        c.on_chunk(
            &whole(
                Dir::In,
                0,
                b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            ),
            &mut out,
        );
        c.on_chunk(
            &whole(Dir::Out, 2, b"HTTP/1.1 100 Continue\r\n\r\n"),
            &mut out,
        );
        c.on_chunk(&chunk(Dir::In, 3, 4, false, b"", b""), &mut out);
        c.on_chunk(
            &whole(Dir::Out, 5, b"HTTP/1.0 200 OK\r\n\r\nbody..."),
            &mut out,
        );
        assert!(out.is_empty());
        c.on_close(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].response.status, 200);
        assert_eq!(out[0].request_body_bytes, Some(4));
    }

    #[test]
    fn non_http_and_orphans_produce_nothing() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        c.on_chunk(&whole(Dir::Out, 0, b"HTTP/1.1 200 OK\r\n\r\n"), &mut out);
        c.on_chunk(&whole(Dir::In, 1, b"\x16\x03\x01 binary"), &mut out);
        c.on_close(&mut out);
        assert!(out.is_empty());
        assert_eq!(c.leftovers.orphan_responses, 1);
    }
}

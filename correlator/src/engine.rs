//! Turns ring-buffer records into finished spans: one connection state per kernel connection id.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use seam_abi::{Event, Tuple, AF_INET, DIR_INGRESS, EV_CLOSE, EV_DATA, EV_EXEC};
use seam_proto::msg::SpanRecord;

use crate::conn::{Chunk, Conn, Dir, Exchange};
use crate::span::{self, Clock, Endpoints};

/// Connections tracked at most; idle ones beyond this are forgotten first.
const MAX_CONNS: usize = 65_536;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineCounters {
    pub records: u64,
    pub malformed_records: u64,
    pub spans: u64,
    pub unanswered_requests: u64,
    pub orphan_responses: u64,
    pub truncated_starts: u64,
    pub expired_responses: u64,
}

#[derive(Debug)]
struct Entry {
    conn: Conn,
    pid: u32,
    ends: Endpoints,
}

/// CLOCK_MONOTONIC → Unix time, from one paired reading refreshed now and then.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    offset_ns: i128,
}

fn clock_ns(id: nix::time::ClockId) -> i128 {
    nix::time::clock_gettime(id)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0)
}

impl MonotonicClock {
    pub fn now() -> Self {
        let real = clock_ns(nix::time::ClockId::CLOCK_REALTIME);
        let mono = clock_ns(nix::time::ClockId::CLOCK_MONOTONIC);
        Self {
            offset_ns: real - mono,
        }
    }

    pub fn monotonic_now_ns() -> u64 {
        clock_ns(nix::time::ClockId::CLOCK_MONOTONIC) as u64
    }
}

impl Clock for MonotonicClock {
    fn unix_nanos(&self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).max(0) as u64
    }
}

fn endpoints(t: &Tuple) -> Endpoints {
    let ip = |a: &[u8; 16]| -> IpAddr {
        if t.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*a))
        }
    };
    Endpoints::new(
        (ip(&t.local_addr), t.local_port),
        (ip(&t.remote_addr), t.remote_port),
    )
}

#[derive(Debug)]
pub struct Engine {
    conns: HashMap<u64, Entry>,
    clock: MonotonicClock,
    exchanges: Vec<Exchange>,
    pub counters: EngineCounters,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Self {
            conns: HashMap::new(),
            clock: MonotonicClock::now(),
            exchanges: Vec::new(),
            counters: EngineCounters::default(),
        }
    }

    /// Feeds one ring-buffer record; finished spans are appended to `out` with their pid.
    pub fn on_record(&mut self, record: &[u8], out: &mut Vec<(u32, SpanRecord)>) {
        self.counters.records += 1;
        let Some((ev, payload)) = Event::parse(record) else {
            self.counters.malformed_records += 1;
            return;
        };
        self.on_event(&ev, payload, out);
    }

    pub fn on_event(&mut self, ev: &Event, payload: &[u8], out: &mut Vec<(u32, SpanRecord)>) {
        match ev.kind {
            EV_DATA => {
                if !self.conns.contains_key(&ev.conn_id) && self.conns.len() >= MAX_CONNS {
                    self.evict_idle();
                }
                let entry = self.conns.entry(ev.conn_id).or_insert_with(|| Entry {
                    conn: Conn::default(),
                    pid: ev.pid,
                    ends: endpoints(&ev.tuple),
                });
                let chunk = Chunk {
                    dir: if ev.direction == DIR_INGRESS {
                        Dir::In
                    } else {
                        Dir::Out
                    },
                    start_ns: ev.start_ns,
                    end_ns: ev.end_ns,
                    tid: ev.tid,
                    bytes: u64::from(ev.bytes),
                    http_start: ev.is_http_start(),
                    payload,
                    tail: ev.tail_of(payload),
                };
                entry.conn.on_chunk(&chunk, &mut self.exchanges);
                for ex in self.exchanges.drain(..) {
                    self.counters.spans += 1;
                    out.push((entry.pid, span::build(&ex, &entry.ends, &self.clock)));
                }
            }
            EV_CLOSE => {
                if let Some(mut entry) = self.conns.remove(&ev.conn_id) {
                    entry.conn.on_close(&mut self.exchanges);
                    self.account(&entry.conn);
                    self.emit(entry.pid, &entry.ends, out);
                }
            }
            // Process names are the daemon's concern, not the span engine's.
            EV_EXEC => {}
            _ => self.counters.malformed_records += 1,
        }
    }

    fn account(&mut self, conn: &Conn) {
        let l = conn.leftovers;
        self.counters.unanswered_requests += l.unanswered;
        self.counters.orphan_responses += l.orphan_responses;
        self.counters.truncated_starts += l.truncated_starts;
    }

    fn emit(&mut self, pid: u32, ends: &Endpoints, out: &mut Vec<(u32, SpanRecord)>) {
        for ex in self.exchanges.drain(..) {
            self.counters.spans += 1;
            out.push((pid, span::build(&ex, ends, &self.clock)));
        }
    }

    /// Ends responses silent for `open_timeout_ns` and forgets connections idle for `idle_ns`.
    pub fn sweep(
        &mut self,
        now_ns: u64,
        open_timeout_ns: u64,
        idle_ns: u64,
        out: &mut Vec<(u32, SpanRecord)>,
    ) {
        self.clock = MonotonicClock::now();
        let mut forget = Vec::new();
        for (&id, entry) in self.conns.iter_mut() {
            let quiet = now_ns.saturating_sub(entry.conn.last_ns);
            if !entry.conn.is_idle() && quiet > open_timeout_ns {
                let mut finished = Vec::new();
                entry.conn.expire_open_response(&mut finished);
                self.counters.expired_responses += finished.len() as u64;
                for ex in finished {
                    self.counters.spans += 1;
                    out.push((entry.pid, span::build(&ex, &entry.ends, &self.clock)));
                }
            }
            if quiet > idle_ns {
                forget.push(id);
            }
        }
        for id in forget {
            if let Some(e) = self.conns.remove(&id) {
                self.counters.unanswered_requests += e.conn.leftovers.unanswered;
            }
        }
    }

    fn evict_idle(&mut self) {
        let mut idle: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.is_idle())
            .map(|(&id, e)| (e.conn.last_ns, id))
            .collect();
        idle.sort_unstable();
        for (_, id) in idle.into_iter().take(MAX_CONNS / 8) {
            self.conns.remove(&id);
        }
    }

    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_abi::{DATA_HTTP_START, DIR_EGRESS};

    fn ev(conn: u64, dir: u8, payload: &[u8], t: u64) -> (Event, Vec<u8>) {
        let mut e = Event {
            conn_id: conn,
            start_ns: t,
            end_ns: t + 5,
            pid: 42,
            tid: 43,
            fd: 3,
            bytes: payload.len() as u32,
            captured: payload.len() as u32,
            kind: EV_DATA,
            direction: dir,
            flags: DATA_HTTP_START,
            ..Event::default()
        };
        e.tuple.family = AF_INET;
        e.tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.tuple.local_port = 8080;
        (e, payload.to_vec())
    }

    #[test]
    fn request_and_response_events_make_one_server_span() {
        let mut engine = Engine::new();
        let mut out = Vec::new();
        let (a, pa) = ev(
            1,
            DIR_INGRESS,
            b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n",
            1000,
        );
        let (b, pb) = ev(
            1,
            DIR_EGRESS,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            2000,
        );
        engine.on_event(&a, &pa, &mut out);
        assert!(out.is_empty());
        engine.on_event(&b, &pb, &mut out);
        assert_eq!(out.len(), 1);
        let (pid, span) = &out[0];
        assert_eq!(*pid, 42);
        assert_eq!(span.name, "GET");
        assert_eq!(span.end_unix_nanos - span.start_unix_nanos, 2005 - 1005);
        assert_eq!(engine.counters.spans, 1);
    }

    #[test]
    fn close_finishes_and_forgets_the_connection() {
        let mut engine = Engine::new();
        let mut out = Vec::new();
        let (a, pa) = ev(9, DIR_INGRESS, b"GET / HTTP/1.0\r\n\r\n", 1);
        let (b, pb) = ev(9, DIR_EGRESS, b"HTTP/1.0 200 OK\r\n\r\nbody", 2);
        engine.on_event(&a, &pa, &mut out);
        engine.on_event(&b, &pb, &mut out);
        let close = Event {
            conn_id: 9,
            kind: EV_CLOSE,
            ..Event::default()
        };
        engine.on_event(&close, &[], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(engine.open_connections(), 0);
    }

    #[test]
    fn short_record_is_counted_not_fatal() {
        let mut engine = Engine::new();
        let mut out = Vec::new();
        engine.on_record(&[1, 2, 3], &mut out);
        assert_eq!(engine.counters.malformed_records, 1);
    }
}

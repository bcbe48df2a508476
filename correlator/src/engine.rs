//! Turns ring-buffer records into finished spans: one connection state per kernel connection id.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use seam_abi::{
    Event, Injected, NodeAccept, Tuple, AF_INET, DATA_CONTEXT, DIR_INGRESS, EV_CLOSE, EV_DATA,
    EV_EXEC, EV_EXIT, EV_NODE_ACCEPT, EV_NODE_SOCKET, EV_SPAWN, INJ_CHILD, INJ_REMOTE,
};
use seam_proto::msg::SpanRecord;

use crate::conn::{Chunk, Conn, Dir, Exchange, Side, Started};
use crate::context::{self, ApplySampling, Sampler, SpanCtx};
use crate::handoff::{Handoffs, RequestKey};
use crate::idhash::IdMap;
use crate::node::{self, IdRange, NodeCall, NodeLoops, SetupIds};
use crate::span::{self, unmapped, Clock, Endpoints};
use crate::traceparent::TraceContext;

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
    /// Client spans whose ids ctxprop put on the wire.
    pub injected_spans: u64,
    /// Server requests whose incoming context came in a peer's TCP option.
    pub option_contexts: u64,
    /// Of those, ones the kernel made children of a server request this engine could not match
    /// (kept as their own trace: the ids on the wire cannot change).
    pub injected_unlinked: u64,
}

impl EngineCounters {
    /// Each counter under the name seam's own metrics publish it as.
    pub fn named(&self) -> [(&'static str, u64); 10] {
        [
            ("records", self.records),
            ("malformed_records", self.malformed_records),
            ("spans", self.spans),
            ("unanswered_requests", self.unanswered_requests),
            ("orphan_responses", self.orphan_responses),
            ("truncated_starts", self.truncated_starts),
            ("expired_responses", self.expired_responses),
            ("injected_spans", self.injected_spans),
            ("option_contexts", self.option_contexts),
            ("injected_unlinked", self.injected_unlinked),
        ]
    }
}

/// A context the kernel reported for the request that follows on a connection.
#[derive(Clone, Debug)]
enum WireCtx {
    /// ctxprop sent this with an outgoing request (header or TCP option).
    Sent(Injected),
    /// A peer's TCP option brought this with an incoming request.
    Received(TraceContext),
}

/// Trace context of one request of a connection, from its start until its span is built.
#[derive(Debug)]
struct ReqCtx {
    side: Side,
    tid: u32,
    start_ns: u64,
    header: Option<(TraceContext, String)>,
    /// `None` until needed: a server span's caller may not have been seen yet when it starts.
    ctx: Option<SpanCtx>,
}

/// Contexts of a connection's open requests by sequence number. Rarely more than one or two, so a
/// short list: a hash map would allocate several buckets for every connection.
#[derive(Debug, Default)]
struct Reqs(Vec<(u64, ReqCtx)>);

impl Reqs {
    fn insert(&mut self, seq: u64, req: ReqCtx) {
        if let Some(slot) = self.get_mut(&seq) {
            *slot = req;
            return;
        }
        if self.0.capacity() == 0 {
            self.0.reserve_exact(1);
        }
        self.0.push((seq, req));
    }

    fn get(&self, seq: &u64) -> Option<&ReqCtx> {
        self.0.iter().find(|(s, _)| s == seq).map(|(_, r)| r)
    }

    fn get_mut(&mut self, seq: &u64) -> Option<&mut ReqCtx> {
        self.0.iter_mut().find(|(s, _)| s == seq).map(|(_, r)| r)
    }

    fn remove(&mut self, seq: &u64) -> Option<ReqCtx> {
        let i = self.0.iter().position(|(s, _)| s == seq)?;
        Some(self.0.swap_remove(i).1)
    }

    fn contains_key(&self, seq: &u64) -> bool {
        self.get(seq).is_some()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug)]
struct Entry {
    conn: Conn,
    pid: u32,
    ends: Endpoints,
    reqs: Reqs,
    /// Async ids a Node process allocated setting up this connection it accepted.
    node_setup: Option<SetupIds>,
}

/// One direction of a TCP connection, IPv4-mapped addresses folded to IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Flow {
    from: (IpAddr, u16),
    to: (IpAddr, u16),
}

impl Flow {
    /// Client side: from its local end to the server.
    fn outbound(ends: &Endpoints) -> Self {
        Self {
            from: (unmapped(ends.local.0), ends.local.1),
            to: (unmapped(ends.remote.0), ends.remote.1),
        }
    }

    /// Server side: the flow its caller sent on.
    fn inbound(ends: &Endpoints) -> Self {
        Self {
            from: (unmapped(ends.remote.0), ends.remote.1),
            to: (unmapped(ends.local.0), ends.local.1),
        }
    }
}

/// A client request seen on this host, waiting for the server span on the other end.
#[derive(Debug)]
struct ClientSeen {
    start_ns: u64,
    ctx: SpanCtx,
}

/// Client requests remembered per connection at most (a server that is not instrumented here
/// never claims them; they also expire with the transaction time).
const MAX_CLIENTS_PER_FLOW: usize = 256;

/// A client's timestamp is taken when its send completes, which on loopback can be just after the
/// server's receive completes; a server request may start this much before its client's.
const SEND_SLACK_NS: u64 = 100_000_000;

/// Threads handed a request by the thread that created them, at most this many creations deep.
const MAX_HANDOFF_DEPTH: u8 = 3;

/// The request a thread was created for, and the created threads from its serving thread down
/// to this one (all must prove dedicated before a call links).
#[derive(Debug, Clone, Copy)]
struct Handoff {
    conn: u64,
    seq: u64,
    depth: u8,
    chain: [u32; MAX_HANDOFF_DEPTH as usize],
}

impl Handoff {
    fn chain(&self) -> &[u32] {
        &self.chain[..usize::from(self.depth)]
    }
}

/// Where a call's in-process parent comes from.
#[derive(Debug, Clone, Copy)]
enum InProcess {
    /// The thread serves exactly this one request.
    Serving(RequestKey),
    /// The thread was created for this request; it links once it proves dedicated.
    Created(Handoff),
}

/// How requests link across processes and threads.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// Link a server span to a client span of this host over the same connection.
    pub black_box: bool,
    /// Parents and callers older than this are never linked.
    pub max_transaction_ns: u64,
    /// Decides, once per trace entering this host, whether it is sampled.
    pub sampler: Sampler,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            black_box: true,
            max_transaction_ns: 10_000_000_000,
            sampler: Sampler::default(),
        }
    }
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

    /// Takes a fresh reading only when the wall clock moved by more than a millisecond: each
    /// reading pairs two clock reads, and their jitter alone would reorder spans that started
    /// in the same instant (pipelined requests read together).
    pub fn follow(&mut self, fresh: Self) {
        if (fresh.offset_ns - self.offset_ns).abs() > 1_000_000 {
            *self = fresh;
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
    conns: IdMap<u64, Entry>,
    clock: MonotonicClock,
    exchanges: Vec<Exchange>,
    links: LinkConfig,
    /// Client requests by the flow they were sent on, oldest first.
    clients: HashMap<Flow, VecDeque<ClientSeen>>,
    /// Server requests being served, by the thread that read them: (connection id, request seq).
    serving_by_tid: IdMap<u32, Vec<(u64, u64)>>,
    /// Reused buffer for the requests a chunk started.
    started: Vec<Started>,
    /// Threads (or processes) created by a thread that was working for exactly one request.
    handed: IdMap<u32, Handoff>,
    /// Calls by such threads, held until the thread proves dedicated to its request.
    handoffs: Handoffs,
    /// The context the kernel reported with the event being handled, and its connection.
    wire: Option<(u64, WireCtx)>,
    node: NodeLoops,
    pub counters: EngineCounters,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(LinkConfig::default())
    }
}

fn unlist(map: &mut IdMap<u32, Vec<(u64, u64)>>, key: u32, item: (u64, u64)) {
    if let Some(v) = map.get_mut(&key) {
        v.retain(|x| *x != item);
        if v.is_empty() {
            map.remove(&key);
        }
    }
}

impl Engine {
    pub fn new(links: LinkConfig) -> Self {
        Self {
            conns: IdMap::default(),
            clock: MonotonicClock::now(),
            exchanges: Vec::new(),
            links,
            clients: HashMap::new(),
            serving_by_tid: IdMap::default(),
            started: Vec::new(),
            handed: IdMap::default(),
            handoffs: Handoffs::default(),
            wire: None,
            node: NodeLoops::default(),
            counters: EngineCounters::default(),
        }
    }

    /// Feeds one ring-buffer record; finished spans are appended to `out` with their pid. Returns
    /// the parsed header and payload so the caller need not parse the record again.
    pub fn on_record<'r>(
        &mut self,
        record: &'r [u8],
        out: &mut Vec<(u32, SpanRecord)>,
    ) -> Option<(Event, &'r [u8])> {
        self.counters.records += 1;
        let Some((ev, payload)) = Event::parse(record) else {
            self.counters.malformed_records += 1;
            return None;
        };
        if ev.kind == EV_DATA && ev.flags & DATA_CONTEXT != 0 {
            match ev.context(record) {
                Some(ctx) => self.on_context(ev.conn_id, ctx),
                None => self.counters.malformed_records += 1,
            }
        }
        self.on_event(&ev, payload, out);
        Some((ev, payload))
    }

    /// The context the kernel reported with the request that starts in the next event of `conn`
    /// (the one it came with): one ctxprop sent with it, or (kind [`INJ_REMOTE`]) one a peer's
    /// TCP option brought.
    pub fn on_context(&mut self, conn: u64, ctx: Injected) {
        let wire = if ctx.kind == INJ_REMOTE {
            WireCtx::Received(TraceContext {
                trace_id: ctx.trace_id,
                parent_id: ctx.span_id,
                flags: ctx.flags,
            })
        } else {
            WireCtx::Sent(ctx)
        };
        self.wire = Some((conn, wire));
    }

    pub fn on_event(&mut self, ev: &Event, payload: &[u8], out: &mut Vec<(u32, SpanRecord)>) {
        match ev.kind {
            EV_DATA => {
                let node_setup = if self.conns.contains_key(&ev.conn_id) {
                    None
                } else {
                    if self.conns.len() >= MAX_CONNS {
                        self.evict_idle();
                    }
                    self.node.take_setup(ev.conn_id)
                };
                let entry = self.conns.entry(ev.conn_id).or_insert_with(|| Entry {
                    conn: Conn::default(),
                    pid: ev.pid,
                    ends: endpoints(&ev.tuple),
                    reqs: Reqs::default(),
                    node_setup,
                });
                entry.ends.tls |= ev.is_tls();
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
                // Moved through a kept buffer: no allocation per request start.
                self.started.append(&mut entry.conn.started);
                let mut started = std::mem::take(&mut self.started);
                // Node's ids place a request only when its read held it alone, from its start.
                let node = NodeCall::of(ev);
                let alone = started.len() == 1 && ev.is_http_start();
                for st in started.drain(..) {
                    self.on_started(ev.conn_id, ev.pid, st, node.filter(|_| alone));
                }
                self.started = started;
                // a context comes with its request's event: never later
                self.wire = None;
                self.finish_exchanges(ev.conn_id, out);
            }
            EV_CLOSE => {
                if let Some(entry) = self.conns.get_mut(&ev.conn_id) {
                    entry.conn.on_close(&mut self.exchanges);
                }
                self.finish_exchanges(ev.conn_id, out);
                if let Some(entry) = self.conns.remove(&ev.conn_id) {
                    self.forget(ev.conn_id, &entry);
                }
            }
            // Process names are the daemon's concern, not the span engine's.
            EV_EXEC => {}
            EV_SPAWN => self.on_spawn(ev.tid, ev.bytes),
            EV_NODE_ACCEPT => match NodeAccept::parse(payload) {
                Some(acc) => {
                    if let Some(ids) = IdRange::of(&acc) {
                        if node::is_secured(&acc) {
                            self.node.secured(ev.conn_id, ids);
                        } else {
                            self.node.accepted(ev.pid, ev.conn_id, ids);
                        }
                    }
                }
                None => self.counters.malformed_records += 1,
            },
            EV_NODE_SOCKET => {
                if let Some(call) = NodeCall::of(ev) {
                    self.node.socket_made(ev.pid, &call);
                }
            }
            EV_EXIT => {
                if ev.tid == ev.pid {
                    self.node.process_exited(ev.pid);
                }
                self.handed.remove(&ev.tid);
                self.handoffs.thread_exited(
                    ev.tid,
                    ev.start_ns,
                    &self.links.sampler,
                    self.links.max_transaction_ns,
                    out,
                );
            }
            _ => self.counters.malformed_records += 1,
        }
    }

    /// Gives a request its context as it starts. Client requests are settled at once (their
    /// callee may look them up); server requests wait until something needs them.
    fn on_started(&mut self, conn_id: u64, pid: u32, st: Started, node: Option<NodeCall>) {
        let Some(entry) = self.conns.get(&conn_id) else {
            return;
        };
        let flow = Flow::outbound(&entry.ends);
        let node_setup = entry.node_setup;
        let (received, injected) = match self.take_wire(conn_id) {
            Some(WireCtx::Received(ctx)) => (Some(ctx), None),
            Some(WireCtx::Sent(inj)) => (None, Some(inj)),
            None => (None, None),
        };
        // A header wins over the TCP option (the kernel reports the option only without one).
        let header = context::from_headers(&st.traceparent, &st.tracestate).or_else(|| {
            let ctx = received.filter(|_| st.side == Side::Server)?;
            self.counters.option_contexts += 1;
            Some((ctx, String::new()))
        });
        let ctx = match st.side {
            Side::Server => {
                if let Some(call) = &node {
                    self.node
                        .request_read(pid, call, conn_id, st.seq, node_setup);
                }
                let item = (conn_id, st.seq);
                self.serving_by_tid.entry(st.tid).or_default().push(item);
                None
            }
            Side::Client => {
                // The app's own header carries the app's decision; a child inherits its parent's.
                let ctx = if let Some((h, state)) = &header {
                    SpanCtx::adopting(h, state.clone())
                } else {
                    let parent = self
                        .node_parent(pid, node.as_ref(), st.seq == 0, st.start_ns)
                        .or_else(|| self.in_process_parent(st.tid, st.start_ns));
                    match (injected, parent) {
                        (Some(inj), parent) => self.as_injected(parent, &inj),
                        (None, Some(InProcess::Serving((c, s)))) => {
                            SpanCtx::child_of(&self.resolve(c, s), false)
                        }
                        (None, Some(InProcess::Created(h))) => {
                            let parent = self.resolve(h.conn, h.seq);
                            let call = SpanCtx::root();
                            let deadline = st.start_ns + self.links.max_transaction_ns;
                            self.handoffs
                                .open(&call, parent, (h.conn, h.seq), h.chain(), deadline);
                            call
                        }
                        (None, None) => self.new_root(),
                    }
                };
                if self.links.black_box {
                    let q = self.clients.entry(flow).or_default();
                    if q.len() >= MAX_CLIENTS_PER_FLOW {
                        q.pop_front();
                    }
                    q.push_back(ClientSeen {
                        start_ns: st.start_ns,
                        ctx: ctx.clone(),
                    });
                }
                Some(ctx)
            }
        };
        if let Some(entry) = self.conns.get_mut(&conn_id) {
            entry.reqs.insert(
                st.seq,
                ReqCtx {
                    side: st.side,
                    tid: st.tid,
                    start_ns: st.start_ns,
                    header,
                    ctx,
                },
            );
        }
    }

    /// The context reported for a connection's request starting now, if any.
    fn take_wire(&mut self, conn_id: u64) -> Option<WireCtx> {
        self.wire
            .take_if(|(conn, _)| *conn == conn_id)
            .map(|(_, wire)| wire)
    }

    /// A client span whose context is already on the wire: its ids, trace and sampling are the
    /// injected ones. The kernel made it a child of the request a Node main thread's call works
    /// for, or of the sending thread's one server request, or a new trace; `parent`, found here by
    /// the same rules, becomes its parent when it is in that trace (and, when it had no context
    /// of its own yet, takes the injected trace). A created thread's call is never held for its
    /// request: its callee already continues the injected trace.
    fn as_injected(&mut self, parent: Option<InProcess>, inj: &Injected) -> SpanCtx {
        self.counters.injected_spans += 1;
        let mut ctx = SpanCtx {
            trace_id: inj.trace_id,
            span_id: inj.span_id,
            parent_span_id: None,
            flags: inj.flags,
            tracestate: String::new(),
            parent_is_remote: false,
        };
        if inj.kind != INJ_CHILD {
            return ctx;
        }
        let parent = match parent {
            Some(InProcess::Serving((c, s))) => Some(self.resolve_in_trace(c, s, inj.trace_id)),
            _ => None,
        };
        match parent {
            Some(p) if p.trace_id == inj.trace_id => {
                ctx.parent_span_id = Some(p.span_id);
                ctx.tracestate = p.tracestate;
            }
            _ => self.counters.injected_unlinked += 1,
        }
        ctx
    }

    /// Settles a server request whose trace the kernel already started for one of its calls: a
    /// request with no context of its own becomes that trace's root.
    fn resolve_in_trace(&mut self, conn_id: u64, seq: u64, trace_id: [u8; 16]) -> SpanCtx {
        let sampler = self.links.sampler;
        if let Some(req) = self
            .conns
            .get_mut(&conn_id)
            .and_then(|e| e.reqs.get_mut(&seq))
        {
            if req.ctx.is_none() && req.header.is_none() {
                let mut ctx = SpanCtx {
                    trace_id,
                    ..SpanCtx::root()
                };
                // the kernel decided the wire's flag by the same rule (Sampler::kernel_rule)
                sampler.apply(&mut ctx, None);
                req.ctx = Some(ctx.clone());
                return ctx;
            }
        }
        self.resolve(conn_id, seq)
    }

    /// The request a thread works for: the one it serves, when it serves exactly one; or the one
    /// it was created for, while that request is open.
    fn working_for(&self, tid: u32) -> Option<InProcess> {
        if let Some([one]) = self.serving_by_tid.get(&tid).map(Vec::as_slice) {
            return Some(InProcess::Serving(*one));
        }
        let h = self.handed.get(&tid)?;
        let open = self
            .conns
            .get(&h.conn)
            .is_some_and(|e| e.reqs.get(&h.seq).is_some_and(|r| r.side == Side::Server));
        open.then_some(InProcess::Created(*h))
    }

    /// A thread or process was created: it inherits the request its creator works for.
    fn on_spawn(&mut self, creator: u32, child: u32) {
        let inherited = match self.working_for(creator) {
            Some(InProcess::Serving((conn, seq))) => Some(Handoff {
                conn,
                seq,
                depth: 1,
                chain: [child, 0, 0],
            }),
            Some(InProcess::Created(h)) if h.depth < MAX_HANDOFF_DEPTH => {
                let mut next = h;
                next.chain[usize::from(h.depth)] = child;
                next.depth += 1;
                Some(next)
            }
            _ => None,
        };
        match inherited {
            Some(h) => {
                self.handed.insert(child, h);
            }
            // A reused thread id must never keep an old hand-off.
            None => {
                self.handed.remove(&child);
            }
        }
    }

    /// The server request a new client request is made for, only when that cannot be wrong: the
    /// thread serves exactly one request (thread per request; an event loop at concurrency one),
    /// or the thread was created for one (then the call waits until the thread proves dedicated,
    /// see `handoff`). A process serving one request is not enough: another of its threads may
    /// be doing its own background work (an SDK's exporter, a health check). Anything else stays
    /// unlinked.
    fn in_process_parent(&self, tid: u32, now_ns: u64) -> Option<InProcess> {
        let candidate = self.working_for(tid)?;
        let (conn, seq) = match candidate {
            InProcess::Serving(k) => k,
            InProcess::Created(h) => (h.conn, h.seq),
        };
        let req = self.conns.get(&conn)?.reqs.get(&seq)?;
        (now_ns.saturating_sub(req.start_ns) <= self.links.max_transaction_ns).then_some(candidate)
    }

    /// The server request a Node main thread's call belongs to, by Node's async ids (see
    /// `node`; a connection's first request also by the request its socket was made for), while
    /// that request is open and within the transaction time.
    fn node_parent(
        &mut self,
        pid: u32,
        call: Option<&NodeCall>,
        first_on_conn: bool,
        now_ns: u64,
    ) -> Option<InProcess> {
        let call = call?;
        let (conn, seq) = self.node.parent(pid, call).or_else(|| {
            first_on_conn
                .then(|| self.node.first_call_parent(pid, call))
                .flatten()
        })?;
        let req = self.conns.get(&conn)?.reqs.get(&seq)?;
        let fresh = now_ns.saturating_sub(req.start_ns) <= self.links.max_transaction_ns;
        (req.side == Side::Server && fresh).then_some(InProcess::Serving((conn, seq)))
    }

    /// Settles a request's context: an incoming header, else the same-host client span that sent
    /// it, else a new trace. Settled once; later calls return the same context.
    fn resolve(&mut self, conn_id: u64, seq: u64) -> SpanCtx {
        let Some(entry) = self.conns.get_mut(&conn_id) else {
            return SpanCtx::root();
        };
        let inbound = Flow::inbound(&entry.ends);
        let Some(req) = entry.reqs.get_mut(&seq) else {
            return SpanCtx::root();
        };
        if let Some(ctx) = &req.ctx {
            return ctx.clone();
        }
        let ctx = if let Some((h, state)) = &req.header {
            let mut ctx = SpanCtx::continuing(h, state.clone());
            self.links.sampler.apply(&mut ctx, Some(h.flags));
            ctx
        } else if let Some(caller) = self
            .links
            .black_box
            .then(|| {
                claim_caller(
                    &mut self.clients,
                    inbound,
                    req.start_ns,
                    self.links.max_transaction_ns,
                )
            })
            .flatten()
        {
            SpanCtx::child_of(&caller, true)
        } else {
            let mut ctx = SpanCtx::root();
            self.links.sampler.apply(&mut ctx, None);
            ctx
        };
        req.ctx = Some(ctx.clone());
        ctx
    }

    fn new_root(&self) -> SpanCtx {
        let mut ctx = SpanCtx::root();
        self.links.sampler.apply(&mut ctx, None);
        ctx
    }

    fn finish_exchanges(&mut self, conn_id: u64, out: &mut Vec<(u32, SpanRecord)>) {
        if self.exchanges.is_empty() {
            return;
        }
        // Taken and given back, so the buffer's capacity survives across responses.
        let mut done = std::mem::take(&mut self.exchanges);
        for ex in done.drain(..) {
            let ctx = self.resolve(conn_id, ex.seq);
            let Some(entry) = self.conns.get_mut(&conn_id) else {
                continue;
            };
            let pid = entry.pid;
            if let Some(req) = entry.reqs.remove(&ex.seq) {
                if req.side == Side::Server {
                    unlist(&mut self.serving_by_tid, req.tid, (conn_id, ex.seq));
                    self.handoffs.request_ended((conn_id, ex.seq), ex.end_ns);
                }
            }
            self.counters.spans += 1;
            let record = span::build(ex, &entry.ends, &self.clock, ctx);
            self.handoffs.finish(pid, record, out);
        }
        self.exchanges = done;
    }

    /// A request that will never finish: its context leaves the shared indexes.
    fn drop_request(&mut self, conn_id: u64, seq: u64) {
        let Some(req) = self
            .conns
            .get_mut(&conn_id)
            .and_then(|e| e.reqs.remove(&seq))
        else {
            return;
        };
        if req.side == Side::Server {
            unlist(&mut self.serving_by_tid, req.tid, (conn_id, seq));
            self.handoffs
                .request_ended((conn_id, seq), req.start_ns + self.links.max_transaction_ns);
        }
    }

    /// Drops what a connection that is going away still holds in the shared indexes.
    fn forget(&mut self, conn_id: u64, entry: &Entry) {
        let l = entry.conn.leftovers;
        // an evicted connection's open requests are given up as well
        self.counters.unanswered_requests += l.unanswered + entry.conn.in_flight();
        self.counters.orphan_responses += l.orphan_responses;
        self.counters.truncated_starts += l.truncated_starts;
        for (seq, req) in entry.reqs.0.iter().map(|(s, r)| (*s, r)) {
            if req.side == Side::Server {
                unlist(&mut self.serving_by_tid, req.tid, (conn_id, seq));
                self.handoffs
                    .request_ended((conn_id, seq), entry.conn.last_ns);
            }
        }
    }

    /// Ends responses silent for `open_timeout_ns`, forgets connections idle for `idle_ns`, and
    /// expires client requests no server claimed.
    pub fn sweep(
        &mut self,
        now_ns: u64,
        open_timeout_ns: u64,
        idle_ns: u64,
        out: &mut Vec<(u32, SpanRecord)>,
    ) {
        self.clock.follow(MonotonicClock::now());
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| {
                !e.conn.is_idle() && now_ns.saturating_sub(e.conn.last_ns) > open_timeout_ns
            })
            .map(|(&id, _)| id)
            .collect();
        let mut abandoned = Vec::new();
        for id in expired {
            if let Some(e) = self.conns.get_mut(&id) {
                e.conn.expire_open_response(&mut self.exchanges);
                self.counters.expired_responses += self.exchanges.len() as u64;
                e.conn.abandon_unanswered(&mut abandoned);
            }
            self.finish_exchanges(id, out);
            for seq in abandoned.drain(..) {
                self.drop_request(id, seq);
            }
        }
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| now_ns.saturating_sub(e.conn.last_ns) > idle_ns)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            if let Some(e) = self.conns.remove(&id) {
                self.forget(id, &e);
            }
        }
        self.handoffs.sweep(
            now_ns,
            &self.links.sampler,
            self.links.max_transaction_ns,
            out,
        );
        let conns = &self.conns;
        self.handed.retain(|_, h| {
            conns
                .get(&h.conn)
                .is_some_and(|e| e.reqs.contains_key(&h.seq))
        });
        let horizon = now_ns.saturating_sub(self.links.max_transaction_ns);
        self.clients.retain(|_, q| {
            while q.front().is_some_and(|c| c.start_ns < horizon) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// Makes room for new connections: the longest-silent idle ones go first, and when none is
    /// idle (requests abandoned on connections held open), the longest-silent of all.
    fn evict_idle(&mut self) {
        let mut idle: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.is_idle())
            .map(|(&id, e)| (e.conn.last_ns, id))
            .collect();
        if idle.is_empty() {
            idle = self
                .conns
                .iter()
                .map(|(&id, e)| (e.conn.last_ns, id))
                .collect();
        }
        idle.sort_unstable();
        for (_, id) in idle.into_iter().take(MAX_CONNS / 8) {
            if let Some(e) = self.conns.remove(&id) {
                self.forget(id, &e);
            }
        }
    }

    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }
}

/// Takes the oldest unclaimed client request on `flow` that could have caused a server request
/// starting at `server_start`: requests on one connection are answered in order, so the first
/// one left is the one. Older than the transaction time: dropped, never linked.
fn claim_caller(
    clients: &mut HashMap<Flow, VecDeque<ClientSeen>>,
    flow: Flow,
    server_start: u64,
    max_age: u64,
) -> Option<SpanCtx> {
    let q = clients.get_mut(&flow)?;
    let horizon = server_start.saturating_sub(max_age);
    while q.front().is_some_and(|c| c.start_ns < horizon) {
        q.pop_front();
    }
    let taken = match q.front() {
        Some(c) if c.start_ns <= server_start + SEND_SLACK_NS => q.pop_front().map(|c| c.ctx),
        _ => None,
    };
    if q.is_empty() {
        clients.remove(&flow);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_abi::{DATA_HTTP_START, DIR_EGRESS};
    use seam_proto::msg::AttrValue;

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
        let mut engine = Engine::default();
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
        let mut engine = Engine::default();
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

    /// An event on connection `conn` of process `pid`, thread `tid`, between two loopback ports.
    fn at(
        conn: u64,
        pid: u32,
        tid: u32,
        dir: u8,
        ports: (u16, u16),
        payload: &[u8],
        t: u64,
    ) -> (Event, Vec<u8>) {
        let (mut e, p) = ev(conn, dir, payload, t);
        e.pid = pid;
        e.tid = tid;
        e.tuple.local_port = ports.0;
        e.tuple.remote_port = ports.1;
        e.tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        (e, p)
    }

    /// One event: (connection, pid, tid, direction, (local port, remote port), bytes, time).
    type Step<'a> = (u64, u32, u32, u8, (u16, u16), &'a [u8], u64);

    fn play(engine: &mut Engine, steps: &[Step<'_>]) -> Vec<(u32, SpanRecord)> {
        let mut out = Vec::new();
        for &(conn, pid, tid, dir, ports, payload, t) in steps {
            let (e, p) = at(conn, pid, tid, dir, ports, payload, t);
            engine.on_event(&e, &p, &mut out);
        }
        out
    }

    const REQ: &[u8] = b"GET /x HTTP/1.1\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn a_tcp_option_context_is_the_server_spans_parent_unless_a_header_is_there() {
        let opt = Injected {
            trace_id: [7; 16],
            span_id: [8; 8],
            flags: 1,
            kind: seam_abi::INJ_REMOTE,
            ..Injected::default()
        };
        let mut engine = Engine::default();
        let mut out = Vec::new();
        engine.on_context(1, opt);
        out.extend(play(
            &mut engine,
            &[
                (1, 2, 22, DIR_INGRESS, (80, 5000), REQ, 10),
                (1, 2, 22, DIR_EGRESS, (80, 5000), OK, 20),
            ],
        ));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.trace_id, [7; 16]);
        assert_eq!(out[0].1.parent_span_id, Some([8; 8]));
        assert_eq!(engine.counters.option_contexts, 1);

        let with_header: &[u8] =
            b"GET /x HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        engine.on_context(3, opt);
        out.extend(play(
            &mut engine,
            &[
                (3, 2, 22, DIR_INGRESS, (80, 5001), with_header, 30),
                (3, 2, 22, DIR_EGRESS, (80, 5001), OK, 40),
            ],
        ));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].1.trace_id[..2], [0x4b, 0xf9], "the header wins");
    }

    #[test]
    fn an_injected_call_carries_the_wire_ids_under_its_server_request() {
        let inj = Injected {
            trace_id: [5; 16],
            span_id: [6; 8],
            flags: 1,
            kind: INJ_CHILD,
            ..Injected::default()
        };
        let mut engine = Engine::default();
        let mut out = play(&mut engine, &[(1, 2, 22, DIR_INGRESS, (80, 5000), REQ, 10)]);
        engine.on_context(2, inj);
        out.extend(play(
            &mut engine,
            &[
                (2, 2, 22, DIR_EGRESS, (6000, 9090), REQ, 20),
                (2, 2, 22, DIR_INGRESS, (6000, 9090), OK, 30),
                (1, 2, 22, DIR_EGRESS, (80, 5000), OK, 40),
            ],
        ));
        assert_eq!(out.len(), 2);
        let client = &out[0].1;
        let server = &out[1].1;
        assert_eq!(
            (client.trace_id, client.span_id),
            ([5; 16], [6; 8]),
            "the ids on the wire"
        );
        assert_eq!(
            server.trace_id, [5; 16],
            "the request without context took the call's trace"
        );
        assert_eq!(client.parent_span_id, Some(server.span_id));
        assert_eq!(engine.counters.injected_spans, 1);
        assert_eq!(engine.counters.injected_unlinked, 0);
    }

    fn span_for(
        out: &[(u32, SpanRecord)],
        pid: u32,
        kind: seam_proto::msg::SpanKind,
    ) -> Vec<SpanRecord> {
        out.iter()
            .filter(|(p, s)| *p == pid && s.kind == kind)
            .map(|(_, s)| s.clone())
            .collect()
    }

    #[test]
    fn same_host_caller_becomes_the_parent_request_by_request() {
        use seam_proto::msg::SpanKind::{Client, Server};
        let mut engine = Engine::default();
        let mut out = Vec::new();
        // client pid 1 on port 40000 → server pid 2 on port 8080; two requests on one connection
        for t in [100u64, 200] {
            out.extend(play(
                &mut engine,
                &[
                    (1, 1, 11, DIR_EGRESS, (40000, 8080), REQ, t),
                    (2, 2, 22, DIR_INGRESS, (8080, 40000), REQ, t + 1),
                    (2, 2, 22, DIR_EGRESS, (8080, 40000), OK, t + 5),
                    (1, 1, 11, DIR_INGRESS, (40000, 8080), OK, t + 6),
                ],
            ));
        }
        let clients = span_for(&out, 1, Client);
        let servers = span_for(&out, 2, Server);
        assert_eq!((clients.len(), servers.len()), (2, 2));
        for (c, s) in clients.iter().zip(&servers) {
            assert_eq!(s.trace_id, c.trace_id);
            assert_eq!(s.parent_span_id, Some(c.span_id));
            assert!(s.parent_is_remote);
        }
        assert_ne!(
            clients[0].trace_id, clients[1].trace_id,
            "keep-alive must not merge traces"
        );
    }

    #[test]
    fn server_event_before_its_callers_event_still_links() {
        use seam_proto::msg::SpanKind::{Client, Server};
        let mut engine = Engine::default();
        // loopback: the server's receive can complete (and be recorded) before the client's send
        let out = play(
            &mut engine,
            &[
                (2, 2, 22, DIR_INGRESS, (8080, 40000), REQ, 100),
                (1, 1, 11, DIR_EGRESS, (40000, 8080), REQ, 101),
                (2, 2, 22, DIR_EGRESS, (8080, 40000), OK, 150),
                (1, 1, 11, DIR_INGRESS, (40000, 8080), OK, 151),
            ],
        );
        let c = &span_for(&out, 1, Client)[0];
        let s = &span_for(&out, 2, Server)[0];
        assert_eq!(s.parent_span_id, Some(c.span_id));
    }

    #[test]
    fn outgoing_call_on_the_serving_thread_is_a_child() {
        use seam_proto::msg::SpanKind::{Client, Server};
        let mut engine = Engine::default();
        // pid 2 serves on thread 22 and calls out on the same thread
        let out = play(
            &mut engine,
            &[
                (2, 2, 22, DIR_INGRESS, (8080, 40000), REQ, 100),
                (3, 2, 22, DIR_EGRESS, (41000, 9090), REQ, 110),
                (3, 2, 22, DIR_INGRESS, (41000, 9090), OK, 120),
                (2, 2, 22, DIR_EGRESS, (8080, 40000), OK, 130),
            ],
        );
        let server = &span_for(&out, 2, Server)[0];
        let client = &span_for(&out, 2, Client)[0];
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, Some(server.span_id));
        assert!(!client.parent_is_remote);
    }

    fn spawn(engine: &mut Engine, pid: u32, creator: u32, child: u32) {
        let e = Event {
            kind: EV_SPAWN,
            pid,
            tid: creator,
            bytes: child,
            ..Event::default()
        };
        engine.on_event(&e, &[], &mut Vec::new());
    }

    fn exit(engine: &mut Engine, pid: u32, tid: u32, t: u64, out: &mut Vec<(u32, SpanRecord)>) {
        let e = Event {
            kind: EV_EXIT,
            pid,
            tid,
            start_ns: t,
            end_ns: t,
            ..Event::default()
        };
        engine.on_event(&e, &[], out);
    }

    #[test]
    fn work_handed_to_a_new_thread_stays_with_its_request() {
        use seam_proto::msg::SpanKind::{Client, Server};
        let mut engine = Engine::default();
        // two requests in flight on threads 21 and 22; each hands its call to a thread it creates
        let mut out = play(
            &mut engine,
            &[
                (2, 2, 21, DIR_INGRESS, (8080, 40000), REQ, 100),
                (4, 2, 22, DIR_INGRESS, (8080, 40001), REQ, 101),
            ],
        );
        spawn(&mut engine, 2, 21, 31);
        spawn(&mut engine, 2, 22, 32);
        spawn(&mut engine, 2, 31, 41); // a grandchild, within the depth bound
        out.extend(play(
            &mut engine,
            &[
                (3, 2, 41, DIR_EGRESS, (41000, 9090), REQ, 110),
                (5, 2, 32, DIR_EGRESS, (41001, 9090), REQ, 111),
                (3, 2, 41, DIR_INGRESS, (41000, 9090), OK, 120),
                (5, 2, 32, DIR_INGRESS, (41001, 9090), OK, 121),
            ],
        ));
        assert!(
            span_for(&out, 2, Client).is_empty(),
            "calls wait until their threads prove dedicated"
        );
        // thread 32 is gone before its request ends; 41 and 31 just after (within the grace)
        exit(&mut engine, 2, 32, 125, &mut out);
        exit(&mut engine, 2, 41, 126, &mut out);
        out.extend(play(
            &mut engine,
            &[
                (2, 2, 21, DIR_EGRESS, (8080, 40000), OK, 130),
                (4, 2, 22, DIR_EGRESS, (8080, 40001), OK, 131),
            ],
        ));
        exit(&mut engine, 2, 31, 140, &mut out);
        let int = |s: &SpanRecord, key: &str| match s.attr(key) {
            Some(AttrValue::Int(v)) => *v,
            _ => -1,
        };
        let server_from = |peer: i64| {
            span_for(&out, 2, Server)
                .into_iter()
                .find(|s| int(s, "network.peer.port") == peer)
                .map(|s| s.span_id)
        };
        let client_on = |tid: i64| {
            span_for(&out, 2, Client)
                .into_iter()
                .find(|s| int(s, "thread.id") == tid)
                .and_then(|s| s.parent_span_id)
        };
        assert_eq!(client_on(41), server_from(40000), "grandchild of thread 21");
        assert_eq!(client_on(32), server_from(40001), "child of thread 22");
        // a thread created by a thread working for nothing inherits nothing, even a reused id
        spawn(&mut engine, 2, 99, 32);
        assert!(engine.working_for(32).is_none());
    }

    #[test]
    fn a_pool_worker_started_during_a_request_never_links_to_it() {
        use seam_proto::msg::SpanKind::{Client, Server};
        let mut engine = Engine::default();
        // requests A (thread 21) and B (thread 22) in flight; A's submit starts worker 31, which
        // then runs B's call (on host: pid 3 serves it) and lives on after A
        let mut out = play(
            &mut engine,
            &[
                (2, 2, 21, DIR_INGRESS, (8080, 40000), REQ, 100),
                (4, 2, 22, DIR_INGRESS, (8080, 40001), REQ, 101),
            ],
        );
        spawn(&mut engine, 2, 21, 31);
        out.extend(play(
            &mut engine,
            &[
                (3, 2, 31, DIR_EGRESS, (41000, 9090), REQ, 110),
                (6, 3, 61, DIR_INGRESS, (9090, 41000), REQ, 111),
                (6, 3, 61, DIR_EGRESS, (9090, 41000), OK, 115),
                (3, 2, 31, DIR_INGRESS, (41000, 9090), OK, 120),
                (2, 2, 21, DIR_EGRESS, (8080, 40000), OK, 130),
            ],
        ));
        assert_eq!(span_for(&out, 2, Client).len(), 0, "held");
        assert_eq!(span_for(&out, 3, Server).len(), 0, "its callee is held too");
        engine.sweep(
            200 + crate::handoff::EXIT_GRACE_NS,
            u64::MAX,
            u64::MAX,
            &mut out,
        );
        let call = &span_for(&out, 2, Client)[0];
        let callee = &span_for(&out, 3, Server)[0];
        let a = &span_for(&out, 2, Server)[0];
        assert_eq!(call.parent_span_id, None, "released as its own trace");
        assert_ne!(call.trace_id, a.trace_id);
        assert_eq!(callee.trace_id, call.trace_id);
        assert_eq!(callee.parent_span_id, Some(call.span_id));
        assert!(call.sampled() && callee.sampled());
        // a worker that exits long after its request ended proves nothing either
        exit(
            &mut engine,
            2,
            31,
            130 + 2 * crate::handoff::EXIT_GRACE_NS,
            &mut out,
        );
        assert_eq!(span_for(&out, 2, Client).len(), 1);
    }

    #[test]
    fn a_dedicated_threads_call_brings_its_callee_into_the_request_trace() {
        use seam_proto::msg::SpanKind::{Client, Server};
        let mut engine = Engine::default();
        let mut out = play(
            &mut engine,
            &[(2, 2, 21, DIR_INGRESS, (8080, 40000), REQ, 100)],
        );
        spawn(&mut engine, 2, 21, 31);
        out.extend(play(
            &mut engine,
            &[
                // a second request keeps the process rule out of play
                (4, 2, 22, DIR_INGRESS, (8080, 40001), REQ, 101),
                (3, 2, 31, DIR_EGRESS, (41000, 9090), REQ, 110),
                (6, 3, 61, DIR_INGRESS, (9090, 41000), REQ, 111),
                (6, 3, 61, DIR_EGRESS, (9090, 41000), OK, 115),
                (3, 2, 31, DIR_INGRESS, (41000, 9090), OK, 120),
            ],
        ));
        exit(&mut engine, 2, 31, 125, &mut out);
        out.extend(play(
            &mut engine,
            &[(2, 2, 21, DIR_EGRESS, (8080, 40000), OK, 130)],
        ));
        let a = &span_for(&out, 2, Server)[0];
        let call = &span_for(&out, 2, Client)[0];
        let callee = &span_for(&out, 3, Server)[0];
        assert_eq!(call.parent_span_id, Some(a.span_id));
        assert_eq!((call.trace_id, callee.trace_id), (a.trace_id, a.trace_id));
        assert_eq!(callee.parent_span_id, Some(call.span_id));
        assert!(!call.parent_is_remote);
    }

    #[test]
    fn the_clock_ignores_reading_jitter_but_follows_wall_clock_steps() {
        let mut c = MonotonicClock {
            offset_ns: 1_000_000_000,
        };
        c.follow(MonotonicClock {
            offset_ns: 1_000_000_040,
        });
        assert_eq!(c.unix_nanos(5), 1_000_000_005);
        c.follow(MonotonicClock {
            offset_ns: 1_500_000_000,
        });
        assert_eq!(c.unix_nanos(5), 1_500_000_005);
    }

    #[test]
    fn abandoned_requests_expire_and_free_their_state() {
        let mut engine = Engine::default();
        let mut out = play(
            &mut engine,
            &[(2, 2, 22, DIR_INGRESS, (8080, 40000), REQ, 100)],
        );
        assert!(engine.working_for(22).is_some());
        let timeout = 30_000_000_000;
        engine.sweep(100 + timeout / 2, timeout, u64::MAX, &mut out);
        assert!(engine.working_for(22).is_some(), "not yet");
        engine.sweep(200 + timeout, timeout, u64::MAX, &mut out);
        assert!(out.is_empty(), "no response, no span");
        assert!(
            engine.working_for(22).is_none(),
            "its thread works for nothing now"
        );
        assert!(engine.conns[&2].reqs.is_empty() && engine.conns[&2].conn.is_idle());
    }

    #[test]
    fn connections_stay_bounded_when_none_is_idle() {
        let mut engine = Engine::default();
        let mut out = Vec::new();
        for conn in 0..(MAX_CONNS as u64 + 100) {
            let (e, p) = ev(conn, DIR_INGRESS, REQ, conn);
            engine.on_event(&e, &p, &mut out);
        }
        assert!(engine.open_connections() <= MAX_CONNS);
        assert!(engine.counters.unanswered_requests >= (MAX_CONNS / 8) as u64);
    }

    #[test]
    fn no_link_when_the_thread_and_process_serve_several_requests() {
        use seam_proto::msg::SpanKind::Client;
        let mut engine = Engine::default();
        // one event-loop thread with two requests in flight: the outgoing call cannot be attributed
        let out = play(
            &mut engine,
            &[
                (2, 2, 22, DIR_INGRESS, (8080, 40000), REQ, 100),
                (4, 2, 22, DIR_INGRESS, (8080, 40001), REQ, 101),
                (3, 2, 22, DIR_EGRESS, (41000, 9090), REQ, 110),
                (3, 2, 22, DIR_INGRESS, (41000, 9090), OK, 120),
            ],
        );
        let client = &span_for(&out, 2, Client)[0];
        assert_eq!(client.parent_span_id, None);
    }

    #[test]
    fn black_box_can_be_turned_off_and_links_expire() {
        use seam_proto::msg::SpanKind::Server;
        let mut off = Engine::new(LinkConfig {
            black_box: false,
            ..LinkConfig::default()
        });
        let out = play(
            &mut off,
            &[
                (1, 1, 11, DIR_EGRESS, (40000, 8080), REQ, 100),
                (2, 2, 22, DIR_INGRESS, (8080, 40000), REQ, 101),
                (2, 2, 22, DIR_EGRESS, (8080, 40000), OK, 102),
            ],
        );
        assert_eq!(span_for(&out, 2, Server)[0].parent_span_id, None);

        let mut short = Engine::new(LinkConfig {
            max_transaction_ns: 1_000,
            ..LinkConfig::default()
        });
        let out = play(
            &mut short,
            &[
                (1, 1, 11, DIR_EGRESS, (40000, 8080), REQ, 100),
                (2, 2, 22, DIR_INGRESS, (8080, 40000), REQ, 5_000),
                (2, 2, 22, DIR_EGRESS, (8080, 40000), OK, 5_001),
            ],
        );
        assert_eq!(
            span_for(&out, 2, Server)[0].parent_span_id,
            None,
            "a stale caller is never linked"
        );
    }

    #[test]
    fn short_record_is_counted_not_fatal() {
        let mut engine = Engine::default();
        let mut out = Vec::new();
        engine.on_record(&[1, 2, 3], &mut out);
        assert_eq!(engine.counters.malformed_records, 1);
    }
}

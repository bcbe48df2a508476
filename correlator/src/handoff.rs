//! Calls made by threads created for a request: held until the thread proves it was dedicated.
//!
//! A thread created while its creator serves request A may be A's own helper (it ends with A) or
//! a pool worker started lazily during A that goes on to run other requests' work. The two look
//! the same when the call starts, so the call gets a provisional trace of its own; every span
//! derived from it (its callee on this host, the callee's calls…) carries that trace id and is
//! held. When every created thread in the chain has exited before A ended (or within
//! [`EXIT_GRACE_NS`] after: a runtime may wake A's thread just before the helper is gone), the
//! held spans move into A's trace under A; otherwise they are released as their own trace.

use seam_proto::msg::SpanRecord;

use crate::context::{ApplySampling, Sampler, SpanCtx};
use crate::idhash::IdMap;

/// How long after its request ends a created thread may still exit and count as dedicated to it.
pub const EXIT_GRACE_NS: u64 = 1_000_000_000;

/// A server request: (connection id, request sequence number).
pub type RequestKey = (u64, u64);

#[derive(Debug)]
struct Pending {
    /// The span of the call itself: the one that gets A as parent.
    call_span: [u8; 8],
    /// A's context.
    parent: SpanCtx,
    request: RequestKey,
    /// Created threads between A's serving thread and the caller, not yet exited.
    alive: Vec<u32>,
    last_exit_ns: u64,
    request_end_ns: Option<u64>,
    /// Past this, undecided means unlinked.
    deadline_ns: u64,
    held: Vec<(u32, SpanRecord)>,
}

/// What a provisional trace became; kept a while for spans of it that finish later.
#[derive(Debug, Clone)]
struct Outcome {
    linked: Option<(SpanCtx, [u8; 8])>,
    flags: u8,
    expires_ns: u64,
}

impl Outcome {
    fn apply(&self, span: &mut SpanRecord) {
        if let Some((parent, call_span)) = &self.linked {
            span.trace_id = parent.trace_id;
            span.tracestate.clone_from(&parent.tracestate);
            if span.span_id == *call_span {
                span.parent_span_id = Some(parent.span_id);
                span.parent_is_remote = false;
            }
        }
        span.trace_flags = self.flags;
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HandoffCounters {
    pub linked: u64,
    pub unlinked: u64,
}

#[derive(Debug, Default)]
pub struct Handoffs {
    pending: IdMap<[u8; 16], Pending>,
    settled: IdMap<[u8; 16], Outcome>,
    by_thread: IdMap<u32, Vec<[u8; 16]>>,
    by_request: IdMap<RequestKey, Vec<[u8; 16]>>,
    pub counters: HandoffCounters,
}

impl Handoffs {
    /// Registers a call made by `chain`'s last thread for `request` (context `parent`); the call's
    /// own context `call` is a fresh root whose trace id marks everything derived from it.
    pub fn open(
        &mut self,
        call: &SpanCtx,
        parent: SpanCtx,
        request: RequestKey,
        chain: &[u32],
        deadline_ns: u64,
    ) {
        let trace = call.trace_id;
        for &tid in chain {
            self.by_thread.entry(tid).or_default().push(trace);
        }
        self.by_request.entry(request).or_default().push(trace);
        self.pending.insert(
            trace,
            Pending {
                call_span: call.span_id,
                parent,
                request,
                alive: chain.to_vec(),
                last_exit_ns: 0,
                request_end_ns: None,
                deadline_ns,
                held: Vec::new(),
            },
        );
    }

    /// Passes a finished span on, unless its trace is still undecided.
    pub fn finish(&mut self, pid: u32, mut span: SpanRecord, out: &mut Vec<(u32, SpanRecord)>) {
        if self.pending.is_empty() && self.settled.is_empty() {
            out.push((pid, span));
            return;
        }
        if let Some(p) = self.pending.get_mut(&span.trace_id) {
            p.held.push((pid, span));
            return;
        }
        if let Some(o) = self.settled.get(&span.trace_id) {
            o.apply(&mut span);
        }
        out.push((pid, span));
    }

    pub fn thread_exited(
        &mut self,
        tid: u32,
        at_ns: u64,
        sampler: &Sampler,
        max_age_ns: u64,
        out: &mut Vec<(u32, SpanRecord)>,
    ) {
        let Some(traces) = self.by_thread.remove(&tid) else {
            return;
        };
        for trace in traces {
            let Some(p) = self.pending.get_mut(&trace) else {
                continue;
            };
            p.alive.retain(|&t| t != tid);
            p.last_exit_ns = p.last_exit_ns.max(at_ns);
            if p.alive.is_empty() {
                let in_time = p
                    .request_end_ns
                    .is_none_or(|end| p.last_exit_ns <= end + EXIT_GRACE_NS);
                self.settle(trace, in_time, sampler, at_ns + max_age_ns, out);
            }
        }
    }

    pub fn request_ended(&mut self, request: RequestKey, at_ns: u64) {
        for trace in self.by_request.remove(&request).unwrap_or_default() {
            if let Some(p) = self.pending.get_mut(&trace) {
                p.request_end_ns = Some(at_ns);
            }
        }
    }

    /// Releases what can no longer link (its request ended longer ago than the grace, or it is
    /// older than the transaction time) and forgets old outcomes.
    pub fn sweep(
        &mut self,
        now_ns: u64,
        sampler: &Sampler,
        max_age_ns: u64,
        out: &mut Vec<(u32, SpanRecord)>,
    ) {
        let expired: Vec<[u8; 16]> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                now_ns > p.deadline_ns
                    || p.request_end_ns
                        .is_some_and(|end| now_ns > end + EXIT_GRACE_NS)
            })
            .map(|(&t, _)| t)
            .collect();
        for trace in expired {
            self.settle(trace, false, sampler, now_ns + max_age_ns, out);
        }
        self.settled.retain(|_, o| o.expires_ns >= now_ns);
        self.by_thread.retain(|_, v| {
            v.retain(|t| self.pending.contains_key(t));
            !v.is_empty()
        });
    }

    fn settle(
        &mut self,
        trace: [u8; 16],
        linked: bool,
        sampler: &Sampler,
        expires_ns: u64,
        out: &mut Vec<(u32, SpanRecord)>,
    ) {
        let Some(p) = self.pending.remove(&trace) else {
            return;
        };
        if let Some(v) = self.by_request.get_mut(&p.request) {
            v.retain(|t| *t != trace);
            if v.is_empty() {
                self.by_request.remove(&p.request);
            }
        }
        let outcome = if linked {
            self.counters.linked += 1;
            Outcome {
                flags: p.parent.flags,
                linked: Some((p.parent, p.call_span)),
                expires_ns,
            }
        } else {
            self.counters.unlinked += 1;
            // Its own trace after all: the sampler decides it as the root it is.
            let mut root = SpanCtx::root();
            root.trace_id = trace;
            sampler.apply(&mut root, None);
            Outcome {
                linked: None,
                flags: root.flags,
                expires_ns,
            }
        };
        for (pid, mut span) in p.held {
            outcome.apply(&mut span);
            out.push((pid, span));
        }
        self.settled.insert(trace, outcome);
    }

    pub fn undecided(&self) -> usize {
        self.pending.len()
    }
}

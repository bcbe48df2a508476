//! Trace context of a span: from an incoming header, a linked parent span, or a new trace.

use crate::traceparent::{self, TraceContext};

/// The W3C identity a span will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub flags: u8,
    pub tracestate: String,
    /// The parent is in another process (header or another process's span).
    pub parent_is_remote: bool,
}

/// Most list members a `tracestate` may carry (W3C Trace Context).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A valid incoming context: exactly one `traceparent` that parses, plus its `tracestate` — the
/// headers joined in order, or nothing when together they hold more than 32 list members.
pub fn from_headers(
    traceparent: &[Vec<u8>],
    tracestate: &[String],
) -> Option<(TraceContext, String)> {
    // More than one traceparent is invalid: start a new trace (and drop tracestate).
    let [tp] = traceparent else { return None };
    let ctx = traceparent::parse(tp)?;
    let joined = tracestate.join(",");
    let members = joined.split(',').filter(|m| !m.trim().is_empty()).count();
    let state = if members > MAX_TRACESTATE_MEMBERS {
        String::new()
    } else {
        joined
    };
    Some((ctx, state))
}

impl SpanCtx {
    /// The first span of a new trace (sampled until sampling lands).
    pub fn root() -> Self {
        Self {
            trace_id: traceparent::new_trace_id(),
            span_id: traceparent::new_span_id(),
            parent_span_id: None,
            flags: 0x01,
            tracestate: String::new(),
            parent_is_remote: false,
        }
    }

    /// A span whose parent is `parent`; `remote` when the parent belongs to another process.
    pub fn child_of(parent: &SpanCtx, remote: bool) -> Self {
        Self {
            trace_id: parent.trace_id,
            span_id: traceparent::new_span_id(),
            parent_span_id: Some(parent.span_id),
            flags: parent.flags,
            tracestate: parent.tracestate.clone(),
            parent_is_remote: remote,
        }
    }

    /// A server span continuing the caller's header.
    pub fn continuing(header: &TraceContext, tracestate: String) -> Self {
        Self {
            trace_id: header.trace_id,
            span_id: traceparent::new_span_id(),
            parent_span_id: Some(header.parent_id),
            flags: header.flags,
            tracestate,
            parent_is_remote: true,
        }
    }

    /// A client span whose request already carries a header (set by the app or its SDK): seam
    /// keeps the app's trace, sampling and tracestate and hangs its span under the app's span.
    /// It never reuses the header's span id: the app's SDK may export a span with that id, or the
    /// app may just be forwarding the header it received, and two spans must never share an id.
    pub fn adopting(header: &TraceContext, tracestate: String) -> Self {
        Self {
            // the header's span is in this very process
            parent_is_remote: false,
            ..Self::continuing(header, tracestate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn headers_valid_only_alone() {
        assert!(from_headers(&[TP.to_vec()], &[]).is_some());
        assert!(from_headers(&[TP.to_vec(), TP.to_vec()], &[]).is_none());
        assert!(from_headers(&[], &[]).is_none());
        let (_, state) =
            from_headers(&[TP.to_vec()], &["a=1".into(), "b=2".into()]).expect("valid");
        assert_eq!(state, "a=1,b=2");
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let (_, state) = from_headers(&[TP.to_vec()], &[members(32)]).expect("valid");
        assert_eq!(state.split(',').count(), 32);
        let (_, state) =
            from_headers(&[TP.to_vec()], &[members(20), members(13)]).expect("still valid");
        assert_eq!(
            state, "",
            "33 members across two headers: tracestate dropped"
        );
    }

    #[test]
    fn an_apps_own_header_is_kept_but_its_span_id_never_reused() {
        let (h, state) = from_headers(&[TP.to_vec()], &["k=v".into()]).expect("valid");
        let c = SpanCtx::adopting(&h, state);
        assert_eq!(c.trace_id, h.trace_id);
        assert_eq!(c.parent_span_id, Some(h.parent_id));
        assert_ne!(c.span_id, h.parent_id);
        assert_eq!((c.flags, c.tracestate.as_str()), (h.flags, "k=v"));
    }

    #[test]
    fn children_share_the_trace() {
        let root = SpanCtx::root();
        let child = SpanCtx::child_of(&root, true);
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.parent_span_id, Some(root.span_id));
        assert_ne!(child.span_id, root.span_id);
        assert!(child.parent_is_remote);
    }
}

pub use seam_proto::sampling::{RootSampler, Sampler, SamplerError, SAMPLED};

/// Sampling applied to a span's context (the decision itself is `Sampler::decide`).
pub trait ApplySampling {
    /// Applies the decision to a context that starts or enters a trace here; other flag bits
    /// (the Level 2 random flag) are kept as received.
    fn apply(&self, ctx: &mut SpanCtx, parent_flags: Option<u8>);
}

impl ApplySampling for Sampler {
    fn apply(&self, ctx: &mut SpanCtx, parent_flags: Option<u8>) {
        let keep = self.decide(&ctx.trace_id, parent_flags);
        ctx.flags = if keep {
            ctx.flags | SAMPLED
        } else {
            ctx.flags & !SAMPLED
        };
    }
}

#[cfg(test)]
mod sampler_tests {
    use super::*;

    #[test]
    fn reads_the_standard_variables() {
        assert_eq!(
            Sampler::from_env(None, None).expect("default"),
            Sampler::default()
        );
        assert_eq!(
            Sampler::from_env(Some("parentbased_traceidratio"), Some("0.25")).expect("valid"),
            Sampler::ParentBased(RootSampler::TraceIdRatio(0.25))
        );
        assert_eq!(
            Sampler::from_env(Some("ALWAYS_OFF"), None).expect("valid"),
            Sampler::AlwaysOff
        );
        assert!(Sampler::from_env(Some("sometimes"), None).is_err());
        assert!(Sampler::from_env(Some("traceidratio"), Some("2")).is_err());
    }

    #[test]
    fn parent_based_follows_the_remote_flag_and_ratio_splits_roots() {
        let s = Sampler::ParentBased(RootSampler::TraceIdRatio(0.5));
        for (flags, want) in [(0x03u8, 0x03u8), (0x02, 0x02), (0x01, 0x01), (0x00, 0x00)] {
            let tp = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags:02x}");
            let h = traceparent::parse(tp.as_bytes()).expect("valid");
            let mut ctx = SpanCtx::continuing(&h, String::new());
            s.apply(&mut ctx, Some(h.flags));
            assert_eq!(
                ctx.flags, want,
                "remote flags {flags:02x}: sampled followed, random kept"
            );
        }
        let mut off = SpanCtx::root();
        Sampler::AlwaysOff.apply(&mut off, Some(0x01));
        assert_eq!(
            off.flags & SAMPLED,
            0,
            "a non-parent-based sampler ignores the parent"
        );
        let kept = (0..4000)
            .filter(|_| {
                let mut c = SpanCtx::root();
                s.apply(&mut c, None);
                c.flags & SAMPLED != 0
            })
            .count();
        // binomial(4000, 0.5): sd ≈ 32; six of them either side
        assert!((1808..=2192).contains(&kept), "{kept}");
        let mut a = SpanCtx::root();
        let mut b = a.clone();
        s.apply(&mut a, None);
        s.apply(&mut b, None);
        assert_eq!(a.flags, b.flags, "one decision per trace id");
    }
}

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

/// A valid incoming context: exactly one `traceparent` that parses, plus its `tracestate`.
pub fn from_headers(
    traceparent: &[Vec<u8>],
    tracestate: &[String],
) -> Option<(TraceContext, String)> {
    // More than one traceparent is invalid: start a new trace (and drop tracestate).
    let [tp] = traceparent else { return None };
    let ctx = traceparent::parse(tp)?;
    Some((ctx, tracestate.join(",")))
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

    /// A client span whose request already carries a header (set by the app or its SDK): seam's
    /// span is that context, so the callee's parent is exactly this span.
    pub fn adopting(header: &TraceContext, tracestate: String) -> Self {
        Self {
            trace_id: header.trace_id,
            span_id: header.parent_id,
            parent_span_id: None,
            flags: header.flags,
            tracestate,
            parent_is_remote: false,
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

//! Captured HTTP/1 bytes through the correlator's head parser, chunk walker and traceparent reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seam_correlator::http::{ends_chunked, parse_head, scan_chunked, ChunkScan, Head};
use seam_correlator::traceparent;

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Some(Head::Request(req)) => {
            let _ = req.body_len();
            let _ = req.path();
            let _ = req.query();
        }
        Some(Head::Response(resp)) => {
            let _ = resp.is_interim();
            let _ = resp.body_len("GET");
            let _ = resp.body_len("HEAD");
        }
        None => {}
    }
    if let ChunkScan::Complete(end) = scan_chunked(data) {
        assert!(end <= data.len(), "chunked body ends past the bytes seen");
        // The walk ends where the body ends, whatever follows it.
        assert_eq!(scan_chunked(&data[..end]), ChunkScan::Complete(end));
    }
    let _ = ends_chunked(data);
    if let Some(ctx) = traceparent::parse(data) {
        let text = traceparent::format(&ctx.trace_id, &ctx.parent_id, ctx.flags);
        let again = traceparent::parse(text.as_bytes()).expect("a formatted traceparent parses");
        assert_eq!(again.trace_id, ctx.trace_id);
        assert_eq!(again.parent_id, ctx.parent_id);
        assert_eq!(again.flags, ctx.flags);
    }
});

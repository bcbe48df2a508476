//! What a span batch costs the exporter to read: decoded into owned spans, or checked as it
//! arrives (all the exporter does when nothing reads the spans) and then viewed in place.
//!
//! 512 spans shaped like the nginx benchmark's server spans, framed as the correlator sends them;
//! each way of reading is timed over the same bytes, alternately, with heap allocations counted
//! (their number per span does not drift with the machine's load as the time does).
//!   cargo run --release -p seam-proto --example span_codec [batches per run]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use seam_proto::codec;
use seam_proto::msg::{
    AttrKey, AttrValue, ExporterFrame, ExporterRequest, Known, ServiceIdentity, SpanBatch,
    SpanKind, SpanRecord, SpanStatus,
};

/// The system allocator, counting allocations and reallocations.
#[derive(Debug)]
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above; ptr came from this allocator, which is the system's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SPANS: usize = 512;

fn span(i: usize) -> SpanRecord {
    let peer: std::net::IpAddr = [127, 0, 0, 1].into();
    SpanRecord {
        trace_id: [i as u8; 16],
        span_id: [i as u8 ^ 0x5a; 8],
        parent_span_id: i.is_multiple_of(2).then_some([7; 8]),
        trace_flags: 1,
        tracestate: String::new(),
        parent_is_remote: false,
        name: "GET".into(),
        kind: SpanKind::Server,
        start_unix_nanos: 1_700_000_000_000_000_000 + i as u64 * 1000,
        end_unix_nanos: 1_700_000_000_000_000_000 + i as u64 * 1000 + 45_000,
        status: SpanStatus::Unset,
        attributes: vec![
            (AttrKey::HttpRequestMethod, AttrValue::Known(Known::Get)),
            (AttrKey::HttpResponseStatusCode, AttrValue::Int(200)),
            (AttrKey::UrlPath, AttrValue::Str("/index.html".into())),
            (AttrKey::UrlScheme, AttrValue::Known(Known::Http)),
            (
                AttrKey::NetworkProtocolVersion,
                AttrValue::Known(Known::Http11),
            ),
            (AttrKey::NetworkPeerAddress, AttrValue::Ip(peer)),
            (AttrKey::NetworkPeerPort, AttrValue::Int(40_000 + i as i64)),
            (AttrKey::HttpResponseBodySize, AttrValue::Int(612)),
            (AttrKey::ServerAddress, AttrValue::Str("127.0.0.1".into())),
            (AttrKey::ServerPort, AttrValue::Int(18480)),
            (AttrKey::ClientAddress, AttrValue::Ip(peer)),
            (AttrKey::ThreadId, AttrValue::Int(4242)),
        ],
    }
}

/// Nanoseconds and allocations per span of `read` over `batches` readings of `body`.
fn measure(batches: usize, body: &[u8], read: impl Fn(&[u8]) -> usize) -> (f64, f64) {
    let allocs = ALLOCATIONS.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut spans = 0;
    for _ in 0..batches {
        spans += read(black_box(body));
    }
    let ns = t.elapsed().as_nanos() as f64 / spans as f64;
    let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - allocs) as f64 / spans as f64;
    (ns, allocs)
}

#[expect(clippy::print_stdout, reason = "a benchmark's output is its figure")]
fn main() {
    let batches: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let request = ExporterRequest::Spans(SpanBatch {
        service: ServiceIdentity {
            service_name: "nginx".into(),
            instance_id: "host-1234".into(),
            pid: 1234,
            executable_name: "nginx".into(),
            executable_path: "/usr/sbin/nginx".into(),
            host_name: "host".into(),
            ..ServiceIdentity::default()
        },
        spans: (0..SPANS).map(span).collect(),
    });
    let body = codec::encode(&request, 4 << 20).expect("a batch encodes");
    let owned = |b: &[u8]| {
        let ExporterRequest::Spans(batch) = codec::decode::<ExporterRequest>(b).expect("decodes");
        batch.spans.len()
    };
    let checked = |b: &[u8]| ExporterFrame::check(b).expect("checks").spans();
    let viewed = |b: &[u8]| {
        let frame = ExporterFrame::check(b).expect("checks");
        let batch = frame.view().expect("a checked frame reads");
        batch.spans.len()
    };
    let ExporterRequest::Spans(sent) = &request;
    let frame = ExporterFrame::check(&body).expect("checks");
    assert_eq!(
        &frame.view().expect("reads").to_owned_batch(),
        sent,
        "the view reads what was sent"
    );
    println!(
        "{SPANS}-span batches of {} bytes, {batches} per run",
        body.len()
    );
    for run in 1..=3 {
        let (a, aa) = measure(batches, &body, owned);
        let (b, ba) = measure(batches, &body, checked);
        let (c, ca) = measure(batches, &body, viewed);
        println!(
            "run {run}: decoded owned {a:.0} ns/span ({aa:.2} allocations); checked {b:.0} ({ba:.3}); checked and viewed {c:.0} ({ca:.3})"
        );
    }
}

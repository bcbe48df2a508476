//! How many spans one core of the correlator turns out: a three-hop chain's records replayed.
//!
//! The records are what the kernel reports for client → front → middle → back over keep-alive
//! connections, 16 requests in flight, every span linked (black-box and in-process). The loop
//! does what the correlator's consumer thread does per record and per batch — the span engine,
//! then bincode framing of 512-span batches — without the ring buffer's reads or the socket write.
//! Heap allocations are counted too: unlike the time, their number per span does not drift with
//! the machine's load.
//!   cargo run --release -p seam-correlator --example engine_throughput [requests]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use seam_abi::{Event, AF_INET, DATA_HTTP_START, DIR_EGRESS, DIR_INGRESS, EV_DATA};
use seam_correlator::batches::{frame_batches, SPANS_PER_BATCH};
use seam_correlator::engine::Engine;
use seam_proto::msg::{ServiceIdentity, SpanRecord};

const LANES: u64 = 16;

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

/// One socket event: (connection, pid, tid, direction, local port, remote port, payload).
struct Step {
    conn: u64,
    pid: u32,
    tid: u32,
    dir: u8,
    local: u16,
    remote: u16,
    payload: Vec<u8>,
}

fn request(path: &str, host: u16) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{host}\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

fn response() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        .to_vec()
}

/// The twelve events of one request through the chain on lane `lane`.
fn chain(lane: u64, n: u64) -> Vec<Step> {
    let lane16 = lane as u16;
    let path = format!("/r/{n}");
    // connections per lane: 0 client→front, 1 front→middle, 2 middle→back (each seen from both ends)
    let id = |hop: u64, side: u64| 1 + lane * 6 + hop * 2 + side;
    let (client, front, middle, back) = (1, 2, 3, 4);
    let (pf, pm, pb) = (8001, 8002, 8003);
    let (c0, c1, c2) = (40000 + lane16, 41000 + lane16, 42000 + lane16);
    let tid = |pid: u32| pid * 100 + lane as u32;
    let s = |conn, pid, dir, local, remote, payload: &Vec<u8>| Step {
        conn,
        pid,
        tid: tid(pid),
        dir,
        local,
        remote,
        payload: payload.clone(),
    };
    let (req_f, req_m, req_b, resp) = (
        request(&path, pf),
        request(&path, pm),
        request(&path, pb),
        response(),
    );
    vec![
        s(id(0, 0), client, DIR_EGRESS, c0, pf, &req_f),
        s(id(0, 1), front, DIR_INGRESS, pf, c0, &req_f),
        s(id(1, 0), front, DIR_EGRESS, c1, pm, &req_m),
        s(id(1, 1), middle, DIR_INGRESS, pm, c1, &req_m),
        s(id(2, 0), middle, DIR_EGRESS, c2, pb, &req_b),
        s(id(2, 1), back, DIR_INGRESS, pb, c2, &req_b),
        s(id(2, 1), back, DIR_EGRESS, pb, c2, &resp),
        s(id(2, 0), middle, DIR_INGRESS, c2, pb, &resp),
        s(id(1, 1), middle, DIR_EGRESS, pm, c1, &resp),
        s(id(1, 0), front, DIR_INGRESS, c1, pm, &resp),
        s(id(0, 1), front, DIR_EGRESS, pf, c0, &resp),
        s(id(0, 0), client, DIR_INGRESS, c0, pf, &resp),
    ]
}

fn event(step: &Step, t: u64) -> Event {
    let mut e = Event {
        conn_id: step.conn,
        start_ns: t,
        end_ns: t,
        pid: step.pid,
        tid: step.tid,
        fd: 3,
        bytes: step.payload.len() as u32,
        captured: step.payload.len() as u32,
        kind: EV_DATA,
        direction: step.dir,
        flags: DATA_HTTP_START,
        ..Event::default()
    };
    e.tuple.family = AF_INET;
    e.tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.tuple.local_port = step.local;
    e.tuple.remote_port = step.remote;
    e
}

#[expect(clippy::print_stdout, reason = "a benchmark's output is its figure")]
fn main() {
    let requests: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    // Interleave LANES requests: each lane's twelve events in order, lanes round-robin, so the
    // engine always has 16 requests in flight per hop.
    let mut steps: Vec<(Event, Vec<u8>)> = Vec::with_capacity(requests as usize * 12);
    let mut t = 1_000_000_000u64;
    for round in 0..requests.div_ceil(LANES) {
        let lanes: Vec<Vec<Step>> = (0..LANES).map(|l| chain(l, round * LANES + l)).collect();
        for i in 0..12 {
            for lane in &lanes {
                t += 1_000;
                steps.push((event(&lane[i], t), lane[i].payload.clone()));
            }
        }
    }
    // as the daemon runs: batch memory kept for the next batch
    seam_proto::heap::keep_batch_memory();
    let mut engine = Engine::default();
    let mut out: Vec<(u32, SpanRecord)> = Vec::new();
    let mut spans = 0usize;
    let mut with_parent = 0usize;
    let mut bytes = 0usize;
    let service = ServiceIdentity::default();
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut ship = |out: &mut Vec<(u32, SpanRecord)>| {
        spans += out.len();
        with_parent += out
            .iter()
            .filter(|(_, s)| s.parent_span_id.is_some())
            .count();
        frame_batches(
            out,
            |_| service.clone(),
            |batch| bytes += batch.expect("frames").frame.len(),
        );
    };
    for (ev, payload) in &steps {
        engine.on_event(ev, payload, &mut out);
        if out.len() >= SPANS_PER_BATCH {
            ship(&mut out);
        }
    }
    if !out.is_empty() {
        ship(&mut out);
    }
    let elapsed = start.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    println!(
        "{} records, {spans} spans ({with_parent} with a parent: every one but the client's) in \
         {:.3} s on one core: {:.0} spans/s, {:.2} µs per span, {:.2} allocations per span ({} MB \
         of frames)",
        steps.len(),
        elapsed.as_secs_f64(),
        spans as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / spans.max(1) as f64,
        allocations as f64 / spans.max(1) as f64,
        bytes / 1_000_000,
    );
    assert_eq!(
        with_parent * 6,
        spans * 5,
        "the replay links as the chain does"
    );
}

//! Ring-buffer records through the correlator's engine: raw records as the kernel could write them,
//! and structured ones that keep a few connections talking so the HTTP state machine is reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seam_abi::{
    Async, Event, Injected, DIR_EGRESS, EV_CLOSE, EV_DATA, EV_EXEC, EV_EXIT, EV_NODE_ACCEPT,
    EV_NODE_SOCKET, EV_SPAWN, TAIL_LEN,
};
use seam_correlator::engine::{Engine, LinkConfig};

const KINDS: [u8; 10] = [
    EV_DATA,
    EV_DATA,
    EV_DATA,
    EV_DATA,
    EV_CLOSE,
    EV_EXEC,
    EV_SPAWN,
    EV_EXIT,
    EV_NODE_ACCEPT,
    EV_NODE_SOCKET,
];

fn structured(mut rest: &[u8], engine: &mut Engine) {
    let mut out = Vec::new();
    let mut now = 1_000_000u64;
    while rest.len() >= 4 {
        let (head, after) = rest.split_at(4);
        let len = (usize::from(u16::from_le_bytes([head[2], head[3]])) % 1024).min(after.len());
        let (payload, next) = after.split_at(len);
        rest = next;
        let (a, b) = (head[0], head[1]);
        let mut ev = Event {
            kind: KINDS[usize::from(a) % KINDS.len()],
            conn_id: u64::from(b & 3) + 1,
            direction: (b >> 2) & DIR_EGRESS,
            role: (b >> 3) % 3,
            flags: b >> 5,
            pid: 100 + u32::from((a >> 4) & 1),
            ..Event::default()
        };
        ev.tid = ev.pid + u32::from(a >> 6);
        ev.fd = i32::from(b & 3);
        if b & 0x10 != 0 {
            // Node's async ids, small so that setups, reads and calls meet
            let id = |k: u8| f64::from(k).to_bits();
            ev.async_ctx = Async {
                exec_id: id(a),
                trigger_id: id(b & 0x1f),
                last_id: id(a / 2),
                read_seq: u32::from(a >> 5),
                valid: 1,
            };
        }
        now += 1_000 + u64::from(a & 0x0f) * 1_000_000;
        ev.start_ns = now;
        ev.end_ns = now + 500;
        // The syscall may have moved more than was captured.
        ev.bytes = payload.len() as u32 + if a & 0x08 != 0 { 4096 } else { 0 };
        ev.captured = payload.len() as u32;
        let tail = &payload[payload.len().saturating_sub(TAIL_LEN)..];
        ev.tail[..tail.len()].copy_from_slice(tail);
        ev.tail_len = if a & 0x08 != 0 { tail.len() as u32 } else { 0 };
        ev.tuple.family = 2;
        ev.tuple.local_port = 8000 + u16::from(b & 3);
        ev.tuple.remote_port = 40000 + u16::from(b & 3);
        if ev.kind == EV_DATA && a & 0x20 != 0 {
            // a context reported with the request (its kind says sent or received)
            if let Some(ctx) = Injected::parse(payload) {
                engine.on_context(ev.conn_id, ctx);
            }
        }
        engine.on_event(&ev, payload, &mut out);
        if a == 0xff {
            engine.sweep(now, 1_000_000_000, 5_000_000_000, &mut out);
        }
    }
    engine.sweep(now + 60_000_000_000, 1_000_000_000, 5_000_000_000, &mut out);
}

fn raw(mut rest: &[u8], engine: &mut Engine) {
    let mut out = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        engine.on_record(&rest[2..2 + len], &mut out);
        rest = &rest[2 + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut engine = Engine::new(LinkConfig::default());
    if mode & 1 == 0 {
        structured(rest, &mut engine);
    } else {
        raw(rest, &mut engine);
    }
});

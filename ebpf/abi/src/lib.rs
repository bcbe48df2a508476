//! The `#[repr(C)]` layouts seam's eBPF programs share with user space (mirror of `ebpf/include/seam_abi.h`).
#![no_std]

use core::mem::size_of;

/// Largest payload prefix one event can carry.
pub const MAX_CAPTURE: u32 = 4096;
/// Bytes from the end of each HTTP read/write kept on the event.
pub const TAIL_LEN: usize = 16;

pub const EV_DATA: u8 = 1;
pub const EV_CLOSE: u8 = 2;
pub const EV_EXEC: u8 = 3;
pub const EV_SPAWN: u8 = 4;
pub const EV_EXIT: u8 = 5;
/// A Node main thread set up the connection `conn_id` it accepted, or finished its TLS handshake
/// (payload: a [`NodeAccept`]).
pub const EV_NODE_ACCEPT: u8 = 8;
/// A Node main thread is making a TCP socket object, whose async id is `async_ctx.last_id + 1`;
/// `async_ctx` holds the ids of the callback making it.
pub const EV_NODE_SOCKET: u8 = 9;
pub const COMM_LEN: usize = 16;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

pub const ROLE_UNKNOWN: u8 = 0;
pub const ROLE_ACCEPTED: u8 = 1;
pub const ROLE_CONNECTED: u8 = 2;

pub const DATA_HTTP_START: u8 = 1;
/// The payload is plaintext read at the TLS library's boundary (SSL_read/SSL_write).
pub const DATA_TLS: u8 = 2;
/// An [`Injected`] follows the payload: the context the request went out with, or (kind
/// [`INJ_REMOTE`], span id = the caller's) came with in a TCP option. See [`Event::context`].
pub const DATA_CONTEXT: u8 = 4;

pub const TARGET_SELECTED: u32 = 1;
pub const TARGET_INHERITED: u32 = 2;
/// Bytes of `struct seam_node_rt`, the value of the capture's Node map (the loader only checks
/// that a process has one and clears it).
pub const NODE_RT_SIZE: usize = 24;

/// A Node process whose async id fields the capture reads (`seam_node_rt` holds where).
pub const TARGET_NODE: u32 = 4;
/// A target value's selector override of the carriers, stored as carriers + 1 in these bits.
pub const OVERRIDE_SHIFT: u32 = 8;

/// The targets-map value for a selected target with an optional carrier override.
pub fn target_value(override_carriers: Option<u32>) -> u32 {
    TARGET_SELECTED | override_carriers.map_or(0, |c| ((c & 0x7f) + 1) << OVERRIDE_SHIFT)
}

pub const CNT_RINGBUF_FULL: u32 = 0;
pub const CNT_EVENTS: u32 = 1;
pub const CNT_MAX: u32 = 2;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

pub const INJ_CHILD: u8 = 1;
pub const INJ_ROOT: u8 = 2;
pub const INJ_REMOTE: u8 = 3;

/// The compiled eBPF objects, embedded: daemons load only these, never bytecode they are sent.
pub mod objects {
    /// ELF parsers read the object in place, so it must be aligned like the data it holds.
    #[repr(C, align(32))]
    #[derive(Debug)]
    pub struct Aligned<B: ?Sized>(pub B);

    static CAPTURE_ALIGNED: &Aligned<[u8]> =
        &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/capture.bpf.o")));
    static CTXPROP_ALIGNED: &Aligned<[u8]> =
        &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/ctxprop.bpf.o")));

    /// Socket-layer capture and the sched hooks (loaded by the loader).
    pub static CAPTURE: &[u8] = &CAPTURE_ALIGNED.0;
    /// Header injection: connect marking, sockops, sk_msg (loaded by ctxprop).
    pub static CTXPROP: &[u8] = &CTXPROP_ALIGNED.0;
}

/// Names of the maps and programs inside the eBPF objects, as the C sources declare them.
pub mod names {
    /// Shared by both objects: created and pinned by the loader, opened by ctxprop.
    pub const SERVING: &str = "seam_serving";
    pub const PROP_ON: &str = "seam_prop_on";
    /// Per-socket propagation state (`struct seam_prop_sock`), in the socket's own storage.
    pub const PROP_SOCK: &str = "seam_prop_sock";
    pub const REMOTE_CTX: &str = "seam_remote_ctx";
    /// ctxprop's carriers and sampling rule, for the capture's TLS path (a [`PropRule`](crate::PropRule)).
    pub const PROP_RULE: &str = "seam_prop_rule";
    /// A TLS request's TCP-option context, from the capture to ctxprop's sockops.
    pub const TLS_OPTION: &str = "seam_tls_option";
    /// A Node main thread's send's request context, from the capture to ctxprop's sk_msg.
    pub const NODE_CHOICE: &str = "seam_node_choice";
    /// ctxprop's carriers, set at load (bit 0 header, bit 1 TCP option).
    pub const CARRIERS: &str = "carriers";
    pub const SAMPLE_THRESHOLD: &str = "sample_threshold";
    pub const SAMPLE_FOLLOW_PARENT: &str = "sample_follow_parent";
    /// ctxprop's own.
    pub const PROP_SOCKS: &str = "seam_prop_socks";
    /// Cookies of sockets the sk_msg program gave up on, for ctxprop to take out of the sockhash.
    pub const PROP_GIVEN_UP: &str = "seam_prop_given_up";
    pub const PROP_COUNTERS: &str = "seam_prop_counters";
    pub const TARGETS: &str = "seam_targets";
    pub const EVENTS: &str = "seam_events";
    pub const COUNTERS: &str = "seam_counters";
    pub const CONN_SEQ: &str = "seam_conn_seq";
    pub const CAPTURE_BYTES: &str = "capture_bytes";
    pub const WAKEUP_BYTES: &str = "wakeup_bytes";
    /// Per Node process: where its main thread's async id fields are (a
    /// [`NODE_RT_SIZE`](crate::NODE_RT_SIZE)-byte `struct seam_node_rt`).
    pub const NODE_RT: &str = "seam_node_rt";
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    pub conn_id: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub bytes: u32,
    pub captured: u32,
    pub kind: u8,
    pub direction: u8,
    pub role: u8,
    pub flags: u8,
    pub tuple: Tuple,
    pub tail_len: u32,
    pub tail: [u8; TAIL_LEN],
    pub pad: u32,
    pub async_ctx: Async,
}

/// Node's async context at a socket call on its main thread (mirror of `struct seam_async`):
/// the ids are doubles' bits, as Node keeps them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Async {
    pub exec_id: u64,
    pub trigger_id: u64,
    pub last_id: u64,
    pub read_seq: u32,
    pub valid: u32,
}

/// An async id from a double's bits: Node's ids are whole numbers from 1 up; anything else
/// (0 = no resource, -1 = unset, or bits that are no such number) is `None`.
pub fn async_id(bits: u64) -> Option<u64> {
    let v = f64::from_bits(bits);
    // Exact below 2^53; the bound also rejects NaN and infinities (no_std: no fract()).
    if !(1.0..9_007_199_254_740_992.0).contains(&v) {
        return None;
    }
    let whole = v as u64;
    (whole as f64 == v).then_some(whole)
}

/// Async ids a Node connection's setup allocated: those in (before, after], and `before` itself
/// when `learned` is 1 (mirror of `struct seam_node_accept`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAccept {
    pub before: u64,
    pub after: u64,
    /// 1: the async id fields were found in this connection's callback, and `before` is the
    /// connection's socket's own id.
    pub learned: u32,
    /// [`NODE_ACCEPTED`] or [`NODE_SECURED`]: which callback of the setup.
    pub phase: u32,
}

/// [`NodeAccept::phase`]: the accepted connection's own callback.
pub const NODE_ACCEPTED: u32 = 0;
/// [`NodeAccept::phase`]: the callback at the end of the connection's TLS handshake.
pub const NODE_SECURED: u32 = 1;

impl NodeAccept {
    pub fn parse(payload: &[u8]) -> Option<NodeAccept> {
        // SAFETY: NodeAccept is plain old data: any bit pattern is valid.
        unsafe { read_prefix(payload) }
    }
}

/// A record from the start of `bytes`, which need not be aligned; `None` when too short.
///
/// # Safety
/// Every bit pattern must be a valid `T` (a `#[repr(C)]` struct of integers and byte arrays).
unsafe fn read_prefix<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the caller vouches for T; read_unaligned needs no alignment.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// What ctxprop put on the wire for one outgoing request (mirror of `struct seam_injected`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    pub kind: u8,
    pub local_port: u16,
    pub epoch: u32,
}

impl Injected {
    pub fn parse(payload: &[u8]) -> Option<Injected> {
        // SAFETY: Injected is plain old data: any bit pattern is valid.
        unsafe { read_prefix(payload) }
    }
}

/// ctxprop's settings for the capture's TLS path (mirror of `struct seam_prop_rule`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PropRule {
    pub sample_threshold: u64,
    pub follow_parent: u32,
    pub carriers: u32,
}

impl PropRule {
    /// The map value's bytes (little-endian, as the eBPF side reads them).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.sample_threshold.to_le_bytes());
        b[8..12].copy_from_slice(&self.follow_parent.to_le_bytes());
        b[12..].copy_from_slice(&self.carriers.to_le_bytes());
        b
    }
}

/// Per-thread serving context (mirror of `struct seam_serving`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serving {
    pub trace_id: [u8; 16],
    pub flags: u8,
    pub state: u8,
    pub open: u16,
    pub epoch: u32,
}

const _: () = assert!(size_of::<Injected>() == 32);
const _: () = assert!(size_of::<PropRule>() == 16);
const _: () = assert!(size_of::<Serving>() == 24);
const _: () = assert!(size_of::<Tuple>() == 40);
const _: () = assert!(size_of::<Async>() == 32);
const _: () = assert!(size_of::<NodeAccept>() == 24);
const _: () = assert!(size_of::<Event>() == 144);

impl Event {
    /// Reads an event header from the start of a ring-buffer record; the payload follows it.
    pub fn parse(record: &[u8]) -> Option<(Event, &[u8])> {
        // SAFETY: Event is plain old data: any bit pattern is valid.
        let ev: Event = unsafe { read_prefix(record) }?;
        let rest = &record[size_of::<Event>()..];
        let captured = (ev.captured as usize).min(rest.len());
        Some((ev, &rest[..captured]))
    }

    /// The context a request's event carries after its payload ([`DATA_CONTEXT`]); `None` when
    /// it carries none or the record is cut short.
    pub fn context(&self, record: &[u8]) -> Option<Injected> {
        if self.flags & DATA_CONTEXT == 0 {
            return None;
        }
        let after = size_of::<Event>().checked_add(self.captured as usize)?;
        Injected::parse(record.get(after..)?)
    }

    pub fn tail(&self) -> &[u8] {
        &self.tail[..(self.tail_len as usize).min(TAIL_LEN)]
    }

    /// The last bytes the syscall moved: the kernel's tail, or the end of the payload when the
    /// payload is the whole of it (the kernel then skips the separate tail read).
    pub fn tail_of<'a>(&'a self, payload: &'a [u8]) -> &'a [u8] {
        if self.tail_len > 0 {
            self.tail()
        } else if payload.len() as u64 == u64::from(self.bytes) {
            &payload[payload.len().saturating_sub(TAIL_LEN)..]
        } else {
            &[]
        }
    }

    pub fn is_http_start(&self) -> bool {
        self.flags & DATA_HTTP_START != 0
    }

    pub fn is_tls(&self) -> bool {
        self.flags & DATA_TLS != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carrier_override_is_kept_beside_the_target_flags() {
        assert_eq!(target_value(None), TARGET_SELECTED);
        assert_eq!(
            target_value(Some(0)),
            TARGET_SELECTED | (1 << 8),
            "disabled is an override"
        );
        assert_eq!(target_value(Some(3)) >> OVERRIDE_SHIFT, 4);
    }

    #[test]
    fn tail_comes_from_the_kernel_or_a_whole_payload() {
        let mut ev = Event {
            bytes: 20,
            ..Event::default()
        };
        let payload = b"0123456789abcdefghij";
        assert_eq!(ev.tail_of(payload), b"456789abcdefghij");
        assert_eq!(ev.tail_of(&payload[..10]), b"");
        ev.tail_len = 3;
        ev.tail[..3].copy_from_slice(b"xyz");
        assert_eq!(ev.tail_of(&payload[..10]), b"xyz");
    }

    #[test]
    fn async_ids_are_whole_numbers_from_one() {
        assert_eq!(async_id(16f64.to_bits()), Some(16));
        assert_eq!(async_id(0f64.to_bits()), None);
        assert_eq!(async_id((-1f64).to_bits()), None);
        assert_eq!(async_id(1.5f64.to_bits()), None);
        assert_eq!(async_id(f64::NAN.to_bits()), None);
        assert_eq!(async_id(u64::MAX), None);
    }

    #[test]
    fn parse_rejects_short_records_and_bounds_payload() {
        assert!(Event::parse(&[0u8; 10]).is_none());
        let mut rec = [0u8; 144 + 8];
        rec[40..44].copy_from_slice(&100u32.to_ne_bytes()); // captured claims more than present
        rec[144..].copy_from_slice(b"GET / HT");
        let (ev, payload) = Event::parse(&rec).expect("full header");
        assert_eq!(ev.captured, 100);
        assert_eq!(payload, b"GET / HT");
    }

    #[test]
    fn a_context_is_read_after_the_payload_only_when_flagged_and_whole() {
        let ctx = Injected {
            trace_id: [3; 16],
            span_id: [4; 8],
            flags: 1,
            kind: INJ_CHILD,
            local_port: 8080,
            epoch: 0,
        };
        const HEAD: usize = size_of::<Event>();
        let mut rec = [0u8; HEAD + 3 + size_of::<Injected>()];
        rec[40..44].copy_from_slice(&3u32.to_ne_bytes()); // captured
        rec[HEAD..HEAD + 3].copy_from_slice(b"GET");
        // SAFETY: Injected is plain old data with every byte a field.
        rec[HEAD + 3..].copy_from_slice(unsafe {
            core::slice::from_raw_parts(
                (&ctx as *const Injected).cast::<u8>(),
                size_of::<Injected>(),
            )
        });
        let (ev, payload) = Event::parse(&rec).expect("header");
        assert_eq!(payload, b"GET", "the context is not payload");
        assert_eq!(ev.context(&rec), None, "not flagged");
        let flags_at = core::mem::offset_of!(Event, flags);
        rec[flags_at] = DATA_CONTEXT;
        let (ev, _) = Event::parse(&rec).expect("header");
        assert_eq!(ev.context(&rec), Some(ctx));
        assert_eq!(ev.context(&rec[..rec.len() - 1]), None, "cut short");
    }
}

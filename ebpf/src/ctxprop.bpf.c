// SPDX-License-Identifier: GPL-2.0
/* Context propagation for plaintext HTTP/1.x: a `traceparent` header and/or a TCP option. A TCP connection an instrumented process opens is
 * marked at connect() by the capture, put in a sockhash once established and taken out when it leaves
 * ESTABLISHED; an sk_msg program then adds `traceparent` after the request line of each outgoing
 * request that has none, carrying the client span's context, and tells the capture which ids it
 * used. Anything it cannot frame with certainty (non-HTTP bytes, headers split over sends,
 * chunked bodies, upgrades, pipelining) turns the connection opaque: passed on untouched, and
 * taken out of the sockhash by the daemon. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "seam_abi.h"
#include "seam_prop_maps.h"
#include "seam_prop_ctx.h"
#include "seam_http_head.h"

char LICENSE[] SEC("license") = "GPL";

/* Set only by a benchmark build (bench/floor.sh), to measure what each step of the sk_msg
 * program costs (ebpf/abi/build.rs names the stages); 0 everywhere else. */
#ifndef SEAM_BENCH_PROP_STAGE
#define SEAM_BENCH_PROP_STAGE 0
#endif
#define BENCH_PASS (SEAM_BENCH_PROP_STAGE == 1)
#define BENCH_STOP_AFTER_COPY (SEAM_BENCH_PROP_STAGE == 2)
#define BENCH_STOP_AFTER_SCAN (SEAM_BENCH_PROP_STAGE == 3)
#define BENCH_NO_HEADER (SEAM_BENCH_PROP_STAGE == 4)

#define SK_PASS 1
#define TCP_ESTABLISHED 1
#define TCPHDR_SYN 0x02

/* Which carriers ctxprop writes (set before load). */
#define CARRIER_HEADER SEAM_CARRIER_HEADER
#define CARRIER_TCP_OPTION SEAM_CARRIER_TCP_OPTION
/* The default; a target's selector may override it (carried in its socket's mark). */
const volatile __u32 carriers = CARRIER_HEADER;
/* OTEL_TRACES_SAMPLER as a rule on the trace id (the correlator's Sampler::kernel_rule): keep when
 * the low 8 bytes, big-endian, shifted right by one are below the threshold; a parent-based
 * sampler follows a header's sampled flag instead. */
const volatile __u64 sample_threshold = ~0ULL;
const volatile __u32 sample_follow_parent = 1;

/* Longest header block looked at; a longer one is passed on untouched. */
#define SCAN_MAX 4096
/* "traceparent: 00-<32>-<16>-<2>\r\n" */
#define TP_HEADER_LEN 70

/* Counters for the daemon's log (indexes into seam_prop_counters). */
enum prop_counter {
	PROP_CNT_SOCKETS = 0,    /* connections put in the sockhash */
	PROP_CNT_INJECTED = 1,   /* requests given a context (header and/or TCP option) */
	PROP_CNT_HAD_HEADER = 2, /* requests that already carried one */
	PROP_CNT_OPAQUE = 3,     /* connections given up (not framed with certainty) */
	PROP_CNT_FAILED = 4,     /* insertions the kernel refused */
	PROP_CNT_RELEASED = 5,   /* taken out on leaving ESTABLISHED (a close unlinks by itself) */
	PROP_CNT_OPTIONS_SENT = 6,     /* TCP options written */
	PROP_CNT_OPTIONS_RECEIVED = 7, /* TCP options read from peers */
	PROP_CNT_MAX = 8,
};

/* Keyed by the socket's cookie: unlike a connection's addresses and ports it is never reused, so
 * the daemon can take a socket out by its key without reaching a later connection's. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} seam_prop_socks SEC(".maps");

/* Cookies of sockets sk_msg gave up on, for the daemon to take out of the sockhash: their sends
 * then go the normal way, without the sockhash path's cost (a target's database or TLS
 * connection sends many). When it is full a socket just stays in, passed on untouched. */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 4096);
	__type(value, __u64);
} seam_prop_given_up SEC(".maps");

struct tcp_ctx_opt {
	__u8 kind;
	__u8 len;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 flags; /* only in the 27-byte form, for an unsampled context */
} __attribute__((packed));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PROP_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} seam_prop_counters SEC(".maps");

/* What the head of a request says about framing. Kept in the per-CPU buffer, not on the
 * stack: the verifier then does not track every combination of its values. */
struct head_scan {
	__u32 len;
	__u32 request_line;  /* bytes of the request line, CRLF included; 0 until seen */
	__u32 head_len;      /* bytes of the whole head, blank line included; 0 until seen */
	__u32 method_ok;     /* the line starts with an upper-case token and a space */
	__u32 traceparents;  /* traceparent headers seen */
	__u32 no_length;     /* Transfer-Encoding, Upgrade or a bad Content-Length: unframeable */
	__u32 length_at;     /* where the Content-Length value starts (0: no such header) */
	struct seam_length length;
};

struct scan_buf {
	struct seam_injected ctx; /* the request's context, off the 512-byte stack */
	struct seam_node_choice node_choice; /* a Node main thread's send's, likewise */
	struct head_scan t;
	__u64 last_word; /* the last eight bytes of what write_shifted gives again */
	__u8 head[SCAN_MAX + 16]; /* zeroes follow the copied bytes: a word read past them is safe */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_buf);
} seam_prop_scratch SEC(".maps");

/* The counters' keys, in .rodata for the reason seam_key_zero is. */
static const __u32 prop_counter_keys[PROP_CNT_MAX] = {0, 1, 2, 3, 4, 5, 6, 7};

static __always_inline void count(enum prop_counter which)
{
	__u64 *v = bpf_map_lookup_elem(&seam_prop_counters, &prop_counter_keys[which]);
	if (v)
		*v += 1;
}

/* The connection as the capture names it (struct seam_tuple), from a sockops context. */
static __always_inline void tuple_of_ops(struct bpf_sock_ops *ops, struct seam_tuple *t)
{
	t->family = ops->family;
	t->local_port = ops->local_port;
	/* network byte order, in the upper half on kernels that shift it there */
	__u32 rp = ops->remote_port;
	if (rp > 0xffff)
		rp >>= 16;
	t->remote_port = __builtin_bswap16((__u16)rp);
	if (ops->family == 2) {
		__u32 l = ops->local_ip4, r = ops->remote_ip4;
		__builtin_memcpy(t->local_addr, &l, 4);
		__builtin_memcpy(t->remote_addr, &r, 4);
	} else {
		/* one 4-byte load each: the context allows no wider access */
#define CTX32(f) (*(volatile __u32 *)&(f))
		__u32 l[4] = {CTX32(ops->local_ip6[0]), CTX32(ops->local_ip6[1]),
			      CTX32(ops->local_ip6[2]), CTX32(ops->local_ip6[3])};
		__u32 r[4] = {CTX32(ops->remote_ip6[0]), CTX32(ops->remote_ip6[1]),
			      CTX32(ops->remote_ip6[2]), CTX32(ops->remote_ip6[3])};
#undef CTX32
		__builtin_memcpy(t->local_addr, l, 16);
		__builtin_memcpy(t->remote_addr, r, 16);
	}
}

/* The socket's propagation state, if a target connected it while ctxprop ran. */
static __always_inline struct seam_prop_sock *prop_sock(struct bpf_sock *sk)
{
	return sk ? bpf_sk_storage_get(&seam_prop_sock, sk, 0, 0) : NULL;
}

/* The context the next data segment carries: the plaintext request's, set by sk_msg, else a TLS
 * request's, chosen by the capture at SSL_write (by tuple: a uprobe cannot name the socket). */
static __always_inline struct seam_injected *option_context(struct bpf_sock_ops *ops,
							     struct seam_prop_sock *ps,
							     struct seam_tuple *t)
{
	if (ps && (ps->pending & SEAM_PENDING_OPTION))
		return &ps->ctx;
	tuple_of_ops(ops, t);
	return bpf_map_lookup_elem(&seam_tls_option, t);
}

/* Kind 25 on the segment that takes a request's first bytes, then the context is dropped: a
 * later request without one must not lend it. */
static __always_inline void write_option(struct bpf_sock_ops *ops, struct seam_tuple *t)
{
	struct seam_prop_sock *ps = prop_sock(ops->sk);
	struct seam_injected *ctx = option_context(ops, ps, t);
	if (!ctx)
		return;
	struct tcp_ctx_opt opt = {.kind = SEAM_TCP_OPT_KIND};
	__builtin_memcpy(opt.trace_id, ctx->trace_id, 16);
	__builtin_memcpy(opt.span_id, ctx->span_id, 8);
	opt.flags = ctx->flags;
	opt.len = (ctx->flags & 1) ? SEAM_TCP_OPT_LEN : SEAM_TCP_OPT_LEN_FLAGS;
	if (bpf_store_hdr_opt(ops, &opt, opt.len, 0) == 0)
		count(PROP_CNT_OPTIONS_SENT);
	/* the source is asked again, not compared by pointer: without CAP_PERFMON the verifier
	 * refuses a comparison of two pointers ("pointer comparison prohibited") */
	if (ps && (ps->pending & SEAM_PENDING_OPTION))
		ps->pending &= ~SEAM_PENDING_OPTION;
	else
		bpf_map_delete_elem(&seam_tls_option, t);
}

/* A peer's kind-25 option becomes the incoming context of the request these bytes start; the
 * capture takes it (a header in the request wins). */
static __always_inline void read_option(struct bpf_sock_ops *ops)
{
	struct tcp_ctx_opt opt = {.kind = SEAM_TCP_OPT_KIND};
	long n = bpf_load_hdr_opt(ops, &opt, sizeof(opt), 0);
	__u32 epoch = seam_prop_epoch();
	if (!epoch || (n != SEAM_TCP_OPT_LEN && n != SEAM_TCP_OPT_LEN_FLAGS))
		return;
	struct seam_injected ctx = {.kind = SEAM_INJ_REMOTE, .epoch = epoch};
	__builtin_memcpy(ctx.trace_id, opt.trace_id, 16);
	__builtin_memcpy(ctx.span_id, opt.span_id, 8);
	ctx.flags = n == SEAM_TCP_OPT_LEN_FLAGS ? opt.flags : 0x01;
	struct seam_tuple t = {};
	tuple_of_ops(ops, &t);
	if (bpf_map_update_elem(&seam_remote_ctx, &t, &ctx, BPF_ANY) == 0)
		seam_note_option_run(epoch);
	count(PROP_CNT_OPTIONS_RECEIVED);
}

/* A marked connection joins the sockhash when established and leaves it as soon as it stops being
 * ESTABLISHED: after shutdown(SHUT_WR) a socket in a sockhash makes a blocking recv() return
 * EAGAIN when the FIN's ACK wakes it (tcp_bpf_recvmsg waits once), and a connection that is
 * closing sends no more requests. */
SEC("sockops")
int on_sockops(struct bpf_sock_ops *ops)
{
	struct seam_tuple t = {};
	switch (ops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		struct seam_prop_sock *ps = prop_sock(ops->sk);
		if (!ps)
			return 1;
		__u32 own = (ps->mark & SEAM_OVERRIDE_MASK) >> SEAM_OVERRIDE_SHIFT;
		__u32 use = own ? own - 1 : carriers;
		if (!use)
			return 1; /* its selector turned propagation off: the socket is never touched */
		ps->use = use;
		ps->opaque = 0;
		ps->skip = 0;
		ps->pending = 0;
		ps->cookie = bpf_get_socket_cookie(ops);
		if (bpf_sock_hash_update(ops, &seam_prop_socks, &ps->cookie, BPF_NOEXIST) == 0) {
			count(PROP_CNT_SOCKETS);
			__u32 flags = BPF_SOCK_OPS_STATE_CB_FLAG;
			if (use & CARRIER_TCP_OPTION)
				flags |= BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
			bpf_sock_ops_cb_flags_set(ops, flags);
		} else {
			ps->use = 0;
			count(PROP_CNT_FAILED);
		}
		return 1;
	}
	case BPF_SOCK_OPS_STATE_CB: {
		if (ops->args[1] == TCP_ESTABLISHED)
			return 1;
		/* only sockets put in the sockhash have this callback, and every one has its state */
		struct seam_prop_sock *ps = prop_sock(ops->sk);
		if (ps) {
			if (bpf_map_delete_elem(&seam_prop_socks, &ps->cookie) == 0)
				count(PROP_CNT_RELEASED);
			ps->use = 0;
			ps->pending = 0;
		}
		tuple_of_ops(ops, &t);
		bpf_map_delete_elem(&seam_tls_option, &t);
		return 1;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* Reading options touches nothing, and any peer may send one whatever this host writes:
		 * every accepted connection may bring a context. Only segments with an option the kernel
		 * does not know run the program. */
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags |
						   BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		/* Room for the option: always when the kernel sizes the MSS (so a segment with it still
		 * fits), else only on a data segment that has a context to carry. */
		if (!(ops->args[0] & BPF_WRITE_HDR_TCP_CURRENT_MSS)) {
			if (ops->skb_len == 0 || (ops->skb_tcp_flags & TCPHDR_SYN))
				return 1;
			if (!option_context(ops, prop_sock(ops->sk), &t))
				return 1;
		}
		bpf_reserve_hdr_opt(ops, SEAM_TCP_OPT_LEN_FLAGS, 0);
		return 1;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		if (ops->skb_len == 0 || (ops->skb_tcp_flags & TCPHDR_SYN))
			return 1;
		write_option(ops, &t);
		return 1;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		read_option(ops);
		return 1;
	}
	return 1;
}

#define HB(b, o) ((b)->head[(o) & (SCAN_MAX - 1)])
/* Eight head bytes from o, the first in the lowest byte. */
#define HW(b, o) seam_load8(&(b)->head[(o) & (SCAN_MAX - 1)])

/* A request line: TOKEN SP target SP HTTP/1.x CRLF, with CONNECT left alone (a tunnel follows). */
static __always_inline int request_line_ok(struct scan_buf *t, __u32 end)
{
	if (end < 16 || !t->t.method_ok)
		return 0;
	__u32 v = end - 10; /* " HTTP/1.x\r\n" ends the line */
	if (HB(t, v - 1) != ' ' || HB(t, v) != 'H' || HB(t, v + 1) != 'T' || HB(t, v + 2) != 'T' ||
	    HB(t, v + 3) != 'P' || HB(t, v + 4) != '/' || HB(t, v + 5) != '1' || HB(t, v + 6) != '.' ||
	    HB(t, v + 8) != '\r')
		return 0;
	return !(HB(t, 0) == 'C' && HB(t, 1) == 'O' && HB(t, 2) == 'N' && HB(t, 3) == 'N');
}

/* Whether the head starts with 1-15 upper-case letters and a space, a word at a time: the first
 * byte that is no letter must be the space. */
static __always_inline int method_ok(struct scan_buf *b)
{
#pragma unroll
	for (int k = 0; k < 2; k++) {
		__u64 w = HW(b, 8 * k);
		__u64 other = ~seam_bytes_in(w, 'A', 'Z') & SEAM_HIGHS;
		if (!other)
			continue;
		__u64 first = other & -other;
		return (first & seam_bytes_in(w, ' ', ' ')) && !(k == 0 && first == 0x80);
	}
	return 0;
}

/* The '\n' at i: the request line when it is the first, and the line that starts after it: the
 * blank line that ends the head, or a header line whose name says something about framing or is
 * traceparent (the first header line too). Returns 1 when the scan is over. A
 * global function, verified once on its own: inlined for each byte of a word, the compiler
 * shares its reads between those paths, and the verifier refuses a pointer sum reached with
 * different offsets without CAP_PERFMON. */
__attribute__((noinline)) int line_end(__u32 i)
{
	struct scan_buf *b = bpf_map_lookup_elem(&seam_prop_scratch, &seam_key_zero);
	if (!b)
		return 1;
	struct head_scan *t = &b->t;
	__u64 o = i + 1;
	if (t->request_line == 0) {
		if (!request_line_ok(b, o))
			return 1;
		t->request_line = o;
	}
	if (HB(b, o) == '\r') {
		if (HB(b, o + 1) == '\n')
			t->head_len = o + 2;
		return 1;
	}
	switch (seam_header_of(HW(b, o), HW(b, o + 8), HW(b, o + 16))) {
	case SEAM_HDR_TRACEPARENT:
		t->traceparents++;
		break;
	case SEAM_HDR_CONTENT_LENGTH:
		if (t->length_at)
			t->no_length = 1; /* two Content-Length headers: leave it alone */
		t->length_at = o + SEAM_CONTENT_LENGTH_VALUE;
		break;
	case SEAM_HDR_TRANSFER_ENCODING:
	case SEAM_HDR_UPGRADE:
		t->no_length = 1;
		break;
	}
	return 0;
}

struct scan_ctx {
	struct scan_buf *buf;
};

#define SCAN_STEP 32

/* Bytes [32 s, 32 s + 32) of the head: only a word holding a '\n' is looked at byte by byte. Four
 * words a step, from one pointer: each variable offset into the buffer costs a speculation fence
 * without CAP_PERFMON, and each step a call. */
static long head_scan_step(__u64 s, void *ctx)
{
	struct scan_buf *b = ((struct scan_ctx *)ctx)->buf;
	if (!b)
		return 1;
	struct head_scan *t = &b->t;
	__u64 base = s * SCAN_STEP;
	if (base >= t->len)
		return 1;
	const __u8 *p = &b->head[base & (SCAN_MAX - SCAN_STEP)];
#pragma unroll
	for (int k = 0; k < SCAN_STEP; k += 8) {
		/* past len only zeroes are read (on_msg clears 16 bytes there), not a stale head */
		if (base + k >= t->len)
			return 1;
		if (!seam_has_byte(seam_load8(p + k), '\n'))
			continue;
#pragma unroll
		for (int j = 0; j < 8; j++)
			if (p[k + j] == '\n' && line_end(base + k + j))
				return 1;
	}
	return 0;
}

/* Byte k of the Content-Length value. */
static long length_step(__u64 k, void *ctx)
{
	struct scan_buf *b = ((struct scan_ctx *)ctx)->buf;
	if (!b)
		return 1;
	struct head_scan *t = &b->t;
	__u64 at = t->length_at + k;
	if (at >= t->len)
		return 1;
	return seam_length_feed(&t->length, HB(b, at));
}

/* Eight text bytes from little-endian x: each of its four bytes as two lower-case hex digits,
 * its first byte first. Worked a whole word at a time: written a digit at a time, the compiler
 * spills to the stack, and without CAP_PERFMON the verifier fences every spill (Spectre v4). */
static __always_inline __u64 hex8(__u32 x)
{
	__u64 y = x;
	y = (y | (y << 16)) & 0x0000ffff0000ffffULL;
	y = (y | (y << 8)) & 0x00ff00ff00ff00ffULL; /* byte 2i holds byte i of x */
	__u64 n = ((y >> 4) & 0x000f000f000f000fULL) | ((y & 0x000f000f000f000fULL) << 8);
	__u64 letters = ((n + SEAM_ONES * 6) >> 4) & SEAM_ONES; /* 1 in each byte that is 10..15 */
	return n + SEAM_ONES * '0' + letters * ('a' - '0' - 10);
}

#define WORD8(a, b, c, d, e, f, g, h)                                                         \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 | (__u64)(e) << 32 | \
	 (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)

/* Words [k0, k1) of write_shifted; 0 once the message ends. */
static __always_inline int write_shifted_words(__u8 *data, __u8 *end, struct scan_buf *buf,
					       __u64 at, const int k0, const int k1)
{
#pragma unroll
	for (int k = k0; k < k1; k++) {
		const int d = 8 * k;
		if (data + d + 8 > end)
			return 0;
		__u64 w;
		if (d < TP_HEADER_LEN) {
			w = seam_load8(&buf->head[d]);
		} else if (d > SCAN_MAX + 8) {
			w = seam_load8(&buf->head[d - TP_HEADER_LEN]);
		} else {
			__u64 before_at = (__u64)((__s64)(d - at) >> 63); /* all ones while d < at */
			w = (seam_load8(&buf->head[d]) & before_at) |
			    (seam_load8(&buf->head[d - TP_HEADER_LEN]) & ~before_at);
		}
		seam_store8(data + d, w);
	}
	return 1;
}

/* Writes the first n bytes of the send (copied in the scratch head) again at the start of the
 * message, TP_HEADER_LEN bytes apart after the request line (at): every whole word of the n + 70
 * bytes is the head's word at the same place before at and the one 70 bytes back after it
 * (chosen by a mask: a branch on at in each of the unrolled words multiplies the verifier's
 * paths). The words that overlap the header's place are written again with it; the last,
 * partial, word is left in buf->last_word for the caller (a variable offset into the packet
 * needs a pull). Packet offsets are constants, as ctxprop has no CAP_PERFMON; the words go in
 * four runs, each short enough for the compiler to unroll. A global function, verified once on
 * its own: inlined, its 520 words were verified again for each way on_msg reaches them. It calls
 * no helper, so the caller's packet pointers stay as they were. Returns 0 when it wrote nothing. */
__attribute__((noinline)) int write_shifted(struct sk_msg_md *msg, __u32 at, __u32 n)
{
	struct scan_buf *buf = bpf_map_lookup_elem(&seam_prop_scratch, &seam_key_zero);
	__u64 last = n - 8;
	asm volatile("" : "+r"(last)); /* the bound is checked on the register that is used */
	if (!buf || last > SCAN_MAX + 8)
		return 0;
	buf->last_word = seam_load8(&buf->head[last]);
	__u8 *data = msg->data; /* a global function's context argument is never NULL */
	__u8 *end = msg->data_end;
#define SHIFT_RUN ((SCAN_MAX + TP_HEADER_LEN) / 8 / 4)
	_Static_assert(4 * SHIFT_RUN == (SCAN_MAX + TP_HEADER_LEN) / 8, "four runs cover the words");
	if (write_shifted_words(data, end, buf, at, 0, SHIFT_RUN) &&
	    write_shifted_words(data, end, buf, at, SHIFT_RUN, 2 * SHIFT_RUN) &&
	    write_shifted_words(data, end, buf, at, 2 * SHIFT_RUN, 3 * SHIFT_RUN))
		write_shifted_words(data, end, buf, at, 3 * SHIFT_RUN, 4 * SHIFT_RUN);
#undef SHIFT_RUN
	return 1;
}

/* Adds the header right after the request line (at), the send's first n bytes (its head, or
 * all of it when it was copied whole) given again with it as one new scatterlist element in
 * front, and the old ones then dropped. tcp_bpf sends each element with a tcp_sendmsg of its
 * own: with TCP_NODELAY a header pushed into the head would split it into three segments, and
 * joining them again costs a second page and a copy of the whole element. */
static __always_inline int insert_header(struct sk_msg_md *msg, struct scan_buf *buf, __u32 at,
					 __u32 n)
{
	struct seam_injected *inj = &buf->ctx;
	__u32 len = n + TP_HEADER_LEN;
	if (bpf_msg_push_data(msg, 0, len, 0) != 0)
		return 0;
	if (bpf_msg_pull_data(msg, 0, len, 0) != 0)
		goto undo;
	if (!write_shifted(msg, at, n) || bpf_msg_pull_data(msg, len - 8, len, 0) != 0)
		goto undo;
	__u8 *data = msg->data;
	__u8 *end = msg->data_end;
	if (data + 8 > end)
		goto undo;
	seam_store8(data, buf->last_word);
	if (bpf_msg_pull_data(msg, at, at + TP_HEADER_LEN, 0) != 0)
		goto undo;
	data = msg->data;
	end = msg->data_end;
	if (data + TP_HEADER_LEN > end)
		goto undo;
	/* "traceparent: 00-" <trace id> "-" <span id> "-" <flags> "\r\n" */
	seam_store8(data, WORD8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r'));
	seam_store8(data + 8, WORD8('e', 'n', 't', ':', ' ', '0', '0', '-'));
#pragma unroll
	for (int i = 0; i < 4; i++)
		seam_store8(data + 16 + 8 * i, hex8(seam_load4(inj->trace_id + 4 * i)));
	data[48] = '-';
	seam_store8(data + 49, hex8(seam_load4(inj->span_id)));
	seam_store8(data + 57, hex8(seam_load4(inj->span_id + 4)));
	seam_store4(data + 65, '-' | (__u32)(hex8(inj->flags) & 0xffff) << 8 | (__u32)'\r' << 24);
	data[69] = '\n';
	/* the old bytes start where the new element ends: dropping them splits nothing */
	if (bpf_msg_pop_data(msg, len, n, 0) != 0)
		goto undo;
	return 1;
undo:
	bpf_msg_pop_data(msg, 0, len, 0);
	return 0;
}

/* Gives the request a context on every configured carrier and tells the capture which. */
static __always_inline int carry(struct sk_msg_md *msg, struct scan_buf *buf,
				 struct seam_prop_sock *ps, __u32 at, __u32 rewritten)
{
	struct seam_injected *inj = &buf->ctx;
	__builtin_memset(inj, 0, sizeof(*inj));
	inj->local_port = (__u16)msg->local_port;
	__u32 epoch = seam_prop_epoch();
	struct seam_node_choice *nc = &buf->node_choice;
	if (!seam_take_node_choice(nc, inj->local_port, epoch))
		nc = NULL;
	seam_choose_context(inj, sample_threshold, sample_follow_parent, epoch, nc);
	__u32 use = ps->use;
	__u32 pending = 0;
	if (BENCH_NO_HEADER)
		pending = SEAM_PENDING_REPORT;
	else if ((use & CARRIER_HEADER) && insert_header(msg, buf, at, rewritten))
		pending = SEAM_PENDING_REPORT;
	if (use & CARRIER_TCP_OPTION)
		pending = SEAM_PENDING_REPORT | SEAM_PENDING_OPTION;
	if (!pending)
		return 0;
	ps->ctx = *inj;
	ps->pending = pending;
	return 1;
}

/* Ends a copy of len bytes of the head: its last eight bytes (word, from last = len - 8) and
 * zeroes for sixteen bytes after it, which a word read past the end then finds. A global
 * function is verified once, on its own: inlined, the stores would be reached on many paths,
 * which the verifier refuses for a variable offset without CAP_PERFMON. */
__attribute__((noinline)) int finish_copy(__u32 last, __u64 word, __u32 len)
{
	struct scan_buf *buf = bpf_map_lookup_elem(&seam_prop_scratch, &seam_key_zero);
	__u64 at = last, end = len;
	asm volatile("" : "+r"(at)); /* the bound is checked on the register that is used */
	asm volatile("" : "+r"(end));
	if (!buf || at > SCAN_MAX - 8 || end > SCAN_MAX)
		return 0;
	seam_store8(&buf->head[at], word);
	seam_store8(&buf->head[end], 0);
	seam_store8(&buf->head[end + 8], 0);
	return 1;
}

/* Copies the first len (≤ SCAN_MAX) bytes of the message into buf->head. Packet pointers take
 * only constant offsets without CAP_PERFMON, which ctxprop does not hold: whole words at
 * unrolled offsets, then the last eight bytes through a second pull that starts there. */
static __always_inline int copy_head(struct sk_msg_md *msg, struct scan_buf *buf, __u32 len)
{
	if (bpf_msg_pull_data(msg, 0, len, 0) != 0)
		return 0;
	__u8 *data = msg->data;
	__u8 *end = msg->data_end;
#pragma unroll
	for (int i = 0; i < SCAN_MAX / 8; i++) {
		if (data + (i + 1) * 8 > end || (i + 1) * 8 > len)
			break;
		seam_store8(&buf->head[i * 8], seam_load8(data + i * 8));
	}
	if (len < 8) {
#pragma unroll
		for (int k = 0; k < 8; k++) {
			if (data + k + 1 > end || k >= len)
				break;
			buf->head[k] = data[k];
		}
		return finish_copy(0, seam_load8(buf->head), len);
	}
	__u32 last = len - 8;
	if (bpf_msg_pull_data(msg, last, len, 0) != 0)
		return 0;
	data = msg->data;
	end = msg->data_end;
	if (data + 8 > end)
		return 0;
	return finish_copy(last, *(__u64 *)data, len);
}

/* The connection is never touched again, and leaves the sockhash once the daemon takes its
 * cookie. */
static __always_inline void give_up(struct seam_prop_sock *ps)
{
	ps->opaque = 1;
	count(PROP_CNT_OPAQUE);
	bpf_map_push_elem(&seam_prop_given_up, &ps->cookie, BPF_ANY);
}

SEC("sk_msg")
int on_msg(struct sk_msg_md *msg)
{
	if (BENCH_PASS)
		return SK_PASS;
	struct seam_prop_sock *ps = prop_sock(msg->sk);
	if (!ps || ps->opaque || !ps->use)
		return SK_PASS;
	__u32 size = msg->size;
	if (ps->skip >= size) {
		ps->skip -= size;
		return SK_PASS;
	}
	if (ps->skip != 0) {
		/* a request would start inside this send, right after a body: pipelining */
		give_up(ps);
		return SK_PASS;
	}
	/* what an earlier request carried was reported at its send's end, or that send failed:
	 * either way it must not lend this one its ids (an option still waiting for its segment
	 * stays until this request's context replaces it) */
	ps->pending &= ~SEAM_PENDING_REPORT;
	struct scan_buf *buf = bpf_map_lookup_elem(&seam_prop_scratch, &seam_key_zero);
	if (!buf)
		return SK_PASS;
	__u32 len = size < SCAN_MAX ? size : SCAN_MAX;
	if (!copy_head(msg, buf, len)) {
		give_up(ps);
		return SK_PASS;
	}
	if (BENCH_STOP_AFTER_COPY)
		return SK_PASS;
	struct head_scan *t = &buf->t;
	__builtin_memset(t, 0, sizeof(*t));
	t->len = len;
	t->method_ok = method_ok(buf);
	struct scan_ctx sc = {.buf = buf};
	bpf_loop((len + SCAN_STEP - 1) / SCAN_STEP, head_scan_step, &sc, 0);
	if (t->length_at) {
		bpf_loop(SEAM_LENGTH_MAX_BYTES, length_step, &sc, 0);
		if (t->length.state != SEAM_LEN_DONE)
			t->no_length = 1;
	}
	if (t->request_line == 0 || t->head_len == 0) {
		/* not HTTP/1.x, or a head split over sends or longer than SCAN_MAX */
		give_up(ps);
		return SK_PASS;
	}
	__u64 body_here = size - t->head_len;
	if (t->no_length || body_here > t->length.value) {
		/* after this request the stream cannot be followed */
		give_up(ps);
	} else {
		ps->skip = t->length.value - body_here;
	}
	if (BENCH_STOP_AFTER_SCAN)
		return SK_PASS;
	if (t->traceparents) {
		count(PROP_CNT_HAD_HEADER);
		ps->pending = 0; /* nor an earlier request's option */
		return SK_PASS;
	}
	/* a send copied whole is given again whole: one segment, as it was */
	if (carry(msg, buf, ps, t->request_line, size <= SCAN_MAX ? size : t->head_len))
		count(PROP_CNT_INJECTED);
	return SK_PASS;
}

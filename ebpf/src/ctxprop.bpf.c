// SPDX-License-Identifier: GPL-2.0
/* Context propagation for plaintext HTTP/1.x: a `traceparent` header and/or a TCP option. A TCP connection an instrumented process opens is
 * marked at connect() by the capture, put in a sockhash once established and taken out when it leaves
 * ESTABLISHED; an sk_msg program then adds `traceparent` after the request line of each outgoing
 * request that has none, carrying the client span's context, and tells the capture which ids it
 * used. Anything it cannot frame with certainty (non-HTTP bytes, headers split over sends,
 * chunked bodies, upgrades, pipelining) turns the connection opaque: passed on untouched. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "seam_abi.h"
#include "seam_prop_maps.h"
#include "seam_prop_ctx.h"

char LICENSE[] SEC("license") = "GPL";

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

struct flow_key {
	__u32 family;
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;
	__u32 remote_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, __u32);
} seam_prop_socks SEC(".maps");

/* Where the next outgoing bytes of a connection are in its request stream. */
struct framing {
	__u64 skip;    /* body bytes of the current request still to pass */
	__u32 opaque;  /* never touch this connection again */
	__u32 use;     /* the carriers this connection's requests get */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct framing);
} seam_prop_framing SEC(".maps");

/* The context the next data segment of a connection carries in its TCP option: set per request
 * by sk_msg, written once (on the segment that takes the request's first bytes) and dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct seam_injected);
} seam_prop_option SEC(".maps");

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

/* What the head of a request says about framing, filled byte by byte. Kept in the per-CPU
 * buffer, not on the stack: the verifier then does not track every combination of its values. */
struct head_scan {
	__u32 len;
	__u32 line_start;    /* where the current line starts */
	__u32 request_line;  /* bytes of the request line, CRLF included; 0 until seen */
	__u32 head_len;      /* bytes of the whole head, blank line included; 0 until seen */
	__u32 method_ok;     /* 1: the line starts with an upper-case token and a space; 2: it does not */
	__u32 traceparents;  /* traceparent headers seen */
	__u32 no_length;     /* Transfer-Encoding, Upgrade or a bad Content-Length: unframeable */
	__u32 in_length;     /* reading Content-Length digits */
	__u64 content_length;
};

struct scan_buf {
	struct seam_injected ctx; /* the request's context, off the 512-byte stack */
	struct head_scan t;
	__u8 head[SCAN_MAX];
	__u8 header[TP_HEADER_LEN + 2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_buf);
} seam_prop_scratch SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&seam_prop_counters, &which);
	if (v)
		*v += 1;
}

/* sockops and sk_msg contexts name a connection's fields alike: one body for both. */
#define FLOW_KEY_OF(ctx, k)                                                                        \
	do {                                                                                       \
		(k)->family = (ctx)->family;                                                       \
		(k)->local_port = (ctx)->local_port;                                               \
		(k)->remote_port = (ctx)->remote_port;                                             \
		if ((ctx)->family == 2) {                                                          \
			(k)->local_ip[0] = (ctx)->local_ip4;                                       \
			(k)->remote_ip[0] = (ctx)->remote_ip4;                                     \
		} else {                                                                           \
			for (int i_ = 0; i_ < 4; i_++) {                                           \
				(k)->local_ip[i_] = (ctx)->local_ip6[i_];                          \
				(k)->remote_ip[i_] = (ctx)->remote_ip6[i_];                        \
			}                                                                          \
		}                                                                                  \
	} while (0)

static __always_inline void key_of_ops(struct bpf_sock_ops *ops, struct flow_key *k)
{
	FLOW_KEY_OF(ops, k);
}

static __always_inline void key_of_msg(struct sk_msg_md *msg, struct flow_key *k)
{
	FLOW_KEY_OF(msg, k);
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

/* Kind 25 on the segment that takes a request's first bytes, then the context is dropped: a
 * later request without one must not lend it. */
static __always_inline void write_option(struct bpf_sock_ops *ops, struct flow_key *k,
					 struct seam_tuple *t)
{
	struct seam_injected *ctx = bpf_map_lookup_elem(&seam_prop_option, k);
	int tls = 0;
	if (!ctx) {
		/* a TLS request's context, chosen by the capture at SSL_write */
		tuple_of_ops(ops, t);
		ctx = bpf_map_lookup_elem(&seam_tls_option, t);
		tls = 1;
	}
	if (!ctx)
		return;
	struct tcp_ctx_opt opt = {.kind = SEAM_TCP_OPT_KIND};
	__builtin_memcpy(opt.trace_id, ctx->trace_id, 16);
	__builtin_memcpy(opt.span_id, ctx->span_id, 8);
	opt.flags = ctx->flags;
	opt.len = (ctx->flags & 1) ? SEAM_TCP_OPT_LEN : SEAM_TCP_OPT_LEN_FLAGS;
	if (bpf_store_hdr_opt(ops, &opt, opt.len, 0) == 0)
		count(PROP_CNT_OPTIONS_SENT);
	if (tls)
		bpf_map_delete_elem(&seam_tls_option, t);
	else
		bpf_map_delete_elem(&seam_prop_option, k);
}

/* A peer's kind-25 option becomes the incoming context of the request these bytes start; the
 * capture takes it (a header in the request wins). */
static __always_inline void read_option(struct bpf_sock_ops *ops)
{
	struct tcp_ctx_opt opt = {.kind = SEAM_TCP_OPT_KIND};
	long n = bpf_load_hdr_opt(ops, &opt, sizeof(opt), 0);
	if (n != SEAM_TCP_OPT_LEN && n != SEAM_TCP_OPT_LEN_FLAGS)
		return;
	struct seam_injected ctx = {.kind = SEAM_INJ_REMOTE};
	__builtin_memcpy(ctx.trace_id, opt.trace_id, 16);
	__builtin_memcpy(ctx.span_id, opt.span_id, 8);
	ctx.flags = n == SEAM_TCP_OPT_LEN_FLAGS ? opt.flags : 0x01;
	struct seam_tuple t = {};
	tuple_of_ops(ops, &t);
	bpf_map_update_elem(&seam_remote_ctx, &t, &ctx, BPF_ANY);
	count(PROP_CNT_OPTIONS_RECEIVED);
}

/* A marked connection joins the sockhash when established and leaves it as soon as it stops being
 * ESTABLISHED: after shutdown(SHUT_WR) a socket in a sockhash makes a blocking recv() return
 * EAGAIN when the FIN's ACK wakes it (tcp_bpf_recvmsg waits once), and a connection that is
 * closing sends no more requests. */
SEC("sockops")
int on_sockops(struct bpf_sock_ops *ops)
{
	struct flow_key k = {};
	struct seam_tuple t = {};
	switch (ops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		struct bpf_sock *sk = ops->sk;
		if (!sk)
			return 1;
		__u32 *mark = bpf_sk_storage_get(&seam_prop_marked, sk, 0, 0);
		if (!mark)
			return 1;
		__u32 own = (*mark & SEAM_OVERRIDE_MASK) >> SEAM_OVERRIDE_SHIFT;
		__u32 use = own ? own - 1 : carriers;
		if (!use)
			return 1; /* its selector turned propagation off: the socket is never touched */
		key_of_ops(ops, &k);
		struct framing fresh = {.use = use};
		bpf_map_update_elem(&seam_prop_framing, &k, &fresh, BPF_ANY);
		if (bpf_sock_hash_update(ops, &seam_prop_socks, &k, BPF_NOEXIST) == 0) {
			count(PROP_CNT_SOCKETS);
			__u32 flags = BPF_SOCK_OPS_STATE_CB_FLAG;
			if (use & CARRIER_TCP_OPTION)
				flags |= BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
			bpf_sock_ops_cb_flags_set(ops, flags);
		} else {
			count(PROP_CNT_FAILED);
		}
		return 1;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == TCP_ESTABLISHED)
			return 1;
		key_of_ops(ops, &k);
		if (bpf_map_delete_elem(&seam_prop_socks, &k) == 0)
			count(PROP_CNT_RELEASED);
		bpf_map_delete_elem(&seam_prop_framing, &k);
		bpf_map_delete_elem(&seam_prop_option, &k);
		tuple_of_ops(ops, &t);
		bpf_map_delete_elem(&seam_tls_option, &t);
		return 1;
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
			key_of_ops(ops, &k);
			if (!bpf_map_lookup_elem(&seam_prop_option, &k)) {
				tuple_of_ops(ops, &t);
				if (!bpf_map_lookup_elem(&seam_tls_option, &t))
					return 1;
			}
		}
		bpf_reserve_hdr_opt(ops, SEAM_TCP_OPT_LEN_FLAGS, 0);
		return 1;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		if (ops->skb_len == 0 || (ops->skb_tcp_flags & TCPHDR_SYN))
			return 1;
		key_of_ops(ops, &k);
		write_option(ops, &k, &t);
		return 1;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		read_option(ops);
		return 1;
	}
	return 1;
}

#define HB(b, o) ((b)->head[(o) & (SCAN_MAX - 1)])
#define HL(b, o) (HB(b, o) | 0x20)

static __always_inline int name_is(struct scan_buf *t, __u32 at, __u32 colon, __u32 which)
{
	__u32 n = colon - at;
	switch (which) {
	case 0: /* traceparent */
		return n == 11 && HL(t, at) == 't' && HL(t, at + 1) == 'r' && HL(t, at + 2) == 'a' &&
		       HL(t, at + 3) == 'c' && HL(t, at + 4) == 'e' && HL(t, at + 5) == 'p' &&
		       HL(t, at + 6) == 'a' && HL(t, at + 7) == 'r' && HL(t, at + 8) == 'e' &&
		       HL(t, at + 9) == 'n' && HL(t, at + 10) == 't';
	case 1: /* content-length */
		return n == 14 && HL(t, at) == 'c' && HL(t, at + 1) == 'o' && HL(t, at + 2) == 'n' &&
		       HL(t, at + 3) == 't' && HL(t, at + 4) == 'e' && HL(t, at + 5) == 'n' &&
		       HL(t, at + 6) == 't' && HB(t, at + 7) == '-' && HL(t, at + 8) == 'l' &&
		       HL(t, at + 9) == 'e' && HL(t, at + 10) == 'n' && HL(t, at + 11) == 'g' &&
		       HL(t, at + 12) == 't' && HL(t, at + 13) == 'h';
	case 2: /* transfer-encoding */
		return n == 17 && HL(t, at) == 't' && HL(t, at + 1) == 'r' && HL(t, at + 2) == 'a' &&
		       HL(t, at + 3) == 'n' && HL(t, at + 4) == 's' && HL(t, at + 5) == 'f' &&
		       HL(t, at + 6) == 'e' && HL(t, at + 7) == 'r' && HB(t, at + 8) == '-';
	case 3: /* upgrade */
		return n == 7 && HL(t, at) == 'u' && HL(t, at + 1) == 'p' && HL(t, at + 2) == 'g' &&
		       HL(t, at + 3) == 'r' && HL(t, at + 4) == 'a' && HL(t, at + 5) == 'd' &&
		       HL(t, at + 6) == 'e';
	}
	return 0;
}

/* A request line: TOKEN SP target SP HTTP/1.x CRLF, with CONNECT left alone (a tunnel follows). */
static __always_inline int request_line_ok(struct scan_buf *t, __u32 end)
{
	if (end < 16 || t->t.method_ok != 1)
		return 0;
	__u32 v = end - 10; /* " HTTP/1.x\r\n" ends the line */
	if (HB(t, v - 1) != ' ' || HB(t, v) != 'H' || HB(t, v + 1) != 'T' || HB(t, v + 2) != 'T' ||
	    HB(t, v + 3) != 'P' || HB(t, v + 4) != '/' || HB(t, v + 5) != '1' || HB(t, v + 6) != '.' ||
	    HB(t, v + 8) != '\r')
		return 0;
	return !(HB(t, 0) == 'C' && HB(t, 1) == 'O' && HB(t, 2) == 'N' && HB(t, 3) == 'N');
}

struct scan_ctx {
	struct scan_buf *buf;
};

static long head_scan_step(__u64 i, void *ctx)
{
	struct scan_buf *b = ((struct scan_ctx *)ctx)->buf;
	if (!b)
		return 1;
	struct head_scan *t = &b->t;
	if (i >= t->len)
		return 1;
	__u8 c = HB(b, i);
	if (t->request_line == 0) {
		if (i < 16 && t->method_ok == 0) {
			if (c == ' ')
				t->method_ok = i > 0 ? 1 : 2;
			else if (c < 'A' || c > 'Z')
				t->method_ok = 2;
		}
		if (c == '\n') {
			if (!request_line_ok(b, i + 1))
				return 1;
			t->request_line = i + 1;
			t->line_start = i + 1;
		} else if (i >= 4096) {
			return 1; /* no request line this long */
		}
		return 0;
	}
	if (t->in_length) {
		if (c >= '0' && c <= '9') {
			t->content_length = t->content_length * 10 + (c - '0');
			if (t->content_length > (1ULL << 48))
				t->no_length = 1;
			return 0;
		}
		if (c == ' ' || c == '\t')
			return 0;
		if (c != '\r' && c != '\n')
			t->no_length = 1;
		t->in_length = 0;
	}
	if (c == ':' && t->line_start != 0) {
		__u32 at = t->line_start;
		t->line_start = 0; /* only the first colon ends a name */
		if (name_is(b, at, i, 0)) {
			t->traceparents++;
		} else if (name_is(b, at, i, 1)) {
			if (t->content_length)
				t->no_length = 1; /* two Content-Length headers: leave it alone */
			t->in_length = 1;
		} else if (name_is(b, at, i, 2) || name_is(b, at, i, 3)) {
			t->no_length = 1;
		}
		return 0;
	}
	if (c == '\n') {
		if (i >= 3 && HB(b, i - 1) == '\r' && HB(b, i - 2) == '\n' && HB(b, i - 3) == '\r') {
			t->head_len = i + 1;
			return 1;
		}
		t->line_start = i + 1;
	}
	return 0;
}

static __always_inline char hex_digit(__u8 n)
{
	return n < 10 ? '0' + n : 'a' + (n - 10);
}

/* Adds the header right after the request line. */
static __always_inline int insert_header(struct sk_msg_md *msg, struct scan_buf *buf, __u32 at,
					 __u32 head_len)
{
	struct seam_injected *inj = &buf->ctx;
	__u8 *h = buf->header;
	h[0] = 't', h[1] = 'r', h[2] = 'a', h[3] = 'c', h[4] = 'e', h[5] = 'p', h[6] = 'a', h[7] = 'r';
	h[8] = 'e', h[9] = 'n', h[10] = 't', h[11] = ':', h[12] = ' ', h[13] = '0', h[14] = '0';
	h[15] = '-';
#pragma unroll
	for (int i = 0; i < 16; i++) {
		h[16 + 2 * i] = hex_digit(inj->trace_id[i] >> 4);
		h[17 + 2 * i] = hex_digit(inj->trace_id[i] & 15);
	}
	h[48] = '-';
#pragma unroll
	for (int i = 0; i < 8; i++) {
		h[49 + 2 * i] = hex_digit(inj->span_id[i] >> 4);
		h[50 + 2 * i] = hex_digit(inj->span_id[i] & 15);
	}
	h[65] = '-';
	h[66] = hex_digit(inj->flags >> 4);
	h[67] = hex_digit(inj->flags & 15);
	h[68] = '\r';
	h[69] = '\n';
	if (bpf_msg_push_data(msg, at, TP_HEADER_LEN, 0) != 0)
		return 0;
	if (bpf_msg_pull_data(msg, at, at + TP_HEADER_LEN, 0) != 0) {
		bpf_msg_pop_data(msg, at, TP_HEADER_LEN, 0);
		return 0;
	}
	__u8 *data = msg->data;
	__u8 *end = msg->data_end;
	if (data + TP_HEADER_LEN > end) {
		bpf_msg_pop_data(msg, at, TP_HEADER_LEN, 0);
		return 0;
	}
#pragma unroll
	for (int i = 0; i < TP_HEADER_LEN; i++)
		data[i] = h[i];
	/* The insertion is a scatterlist element of its own, and tcp_bpf sends each element with a
	 * separate tcp_sendmsg: with TCP_NODELAY the head would leave as three segments, and a server
	 * could read the request line alone. One element for the whole head keeps it one segment. */
	bpf_msg_pull_data(msg, 0, head_len + TP_HEADER_LEN, 0);
	return 1;
}

/* Gives the request a context on every configured carrier and tells the capture which. */
static __always_inline int carry(struct sk_msg_md *msg, struct scan_buf *buf, struct flow_key *k,
				 __u32 at, __u32 head_len, __u32 use)
{
	struct seam_injected *inj = &buf->ctx;
	__builtin_memset(inj, 0, sizeof(*inj));
	inj->local_port = (__u16)msg->local_port;
	seam_choose_context(inj, sample_threshold, sample_follow_parent, inj->local_port);
	int carried = 0;
	if (use & CARRIER_HEADER)
		carried = insert_header(msg, buf, at, head_len);
	if (use & CARRIER_TCP_OPTION)
		carried |= bpf_map_update_elem(&seam_prop_option, k, inj, BPF_ANY) == 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	if (!carried) {
		bpf_map_delete_elem(&seam_injected, &tid);
		return 0;
	}
	bpf_map_update_elem(&seam_injected, &tid, inj, BPF_ANY);
	return 1;
}

/* Stores eight bytes at a variable offset of the head. A global function is verified once, on
 * its own: inlined, the store would be reached on many paths, which the verifier refuses for a
 * variable offset without CAP_PERFMON. */
__attribute__((noinline)) int put_word(__u32 at, __u64 word)
{
	__u32 zero = 0;
	struct scan_buf *buf = bpf_map_lookup_elem(&seam_prop_scratch, &zero);
	__u64 off = at;
	asm volatile("" : "+r"(off)); /* the bound is checked on the register that is used */
	if (!buf || off > SCAN_MAX - 8)
		return 0;
	__builtin_memcpy(&buf->head[off], &word, 8);
	return 1;
}

/* What this thread injected before is reported with its next request: drop it when this send
 * carries a request seam leaves alone. */
static __always_inline void forget_injection(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&seam_injected, &tid);
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
		*(__u64 *)&buf->head[i * 8] = *(__u64 *)(data + i * 8);
	}
	if (len < 8) {
#pragma unroll
		for (int k = 0; k < 8; k++) {
			if (data + k + 1 > end || k >= len)
				break;
			buf->head[k] = data[k];
		}
		return 1;
	}
	__u32 last = len - 8;
	if (bpf_msg_pull_data(msg, last, len, 0) != 0)
		return 0;
	data = msg->data;
	end = msg->data_end;
	if (data + 8 > end)
		return 0;
	return put_word(last, *(__u64 *)data);
}

SEC("sk_msg")
int on_msg(struct sk_msg_md *msg)
{
	struct flow_key k = {};
	key_of_msg(msg, &k);
	struct framing *f = bpf_map_lookup_elem(&seam_prop_framing, &k);
	if (!f || f->opaque || !f->use)
		return SK_PASS;
	__u32 use = f->use;
	__u32 size = msg->size;
	if (f->skip >= size) {
		f->skip -= size;
		return SK_PASS;
	}
	if (f->skip != 0) {
		/* a request would start inside this send, right after a body: pipelining */
		f->opaque = 1;
		count(PROP_CNT_OPAQUE);
		return SK_PASS;
	}
	__u32 zero = 0;
	struct scan_buf *buf = bpf_map_lookup_elem(&seam_prop_scratch, &zero);
	if (!buf)
		return SK_PASS;
	__u32 len = size < SCAN_MAX ? size : SCAN_MAX;
	if (!copy_head(msg, buf, len)) {
		f->opaque = 1;
		count(PROP_CNT_OPAQUE);
		return SK_PASS;
	}
	struct head_scan *t = &buf->t;
	__builtin_memset(t, 0, sizeof(*t));
	t->len = len;
	struct scan_ctx sc = {.buf = buf};
	bpf_loop(len, head_scan_step, &sc, 0);
	if (t->request_line == 0 || t->head_len == 0) {
		/* not HTTP/1.x, or a head split over sends or longer than SCAN_MAX */
		f->opaque = 1;
		count(PROP_CNT_OPAQUE);
		forget_injection();
		return SK_PASS;
	}
	__u64 body_here = size - t->head_len;
	if (t->no_length || body_here > t->content_length) {
		/* after this request the stream cannot be followed */
		f->opaque = 1;
		count(PROP_CNT_OPAQUE);
	} else {
		f->skip = t->content_length - body_here;
	}
	if (t->traceparents) {
		count(PROP_CNT_HAD_HEADER);
		forget_injection(); /* an earlier send that failed must not lend this request its ids */
		bpf_map_delete_elem(&seam_prop_option, &k);
		return SK_PASS;
	}
	if (carry(msg, buf, &k, t->request_line, t->head_len, use))
		count(PROP_CNT_INJECTED);
	return SK_PASS;
}

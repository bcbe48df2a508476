// SPDX-License-Identifier: GPL-2.0
/* Capture of TCP traffic of instrumented processes at the socket layer: the sock_send_length and
 * sock_recv_length tracepoints fire inside sock_sendmsg/sock_recvmsg, in the caller's context,
 * for socket I/O only. No kprobes, and no syscall tracepoints (those put every syscall of every
 * task on the slow path). x86_64 syscall numbers identify the caller's buffers. On TLS
 * connections the plaintext comes from uprobes on OpenSSL's SSL_read/SSL_write instead. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "seam_abi.h"
#include "seam_prop_maps.h"
#include "seam_prop_ctx.h"
#include "seam_http_head.h"

char LICENSE[] SEC("license") = "GPL";

/* Set only by benchmark builds (bench/floor.sh), where the socket programs stop part way so that
 * what each step costs can be measured; 0 everywhere else: the whole capture. */
#ifndef SEAM_BENCH_CAPTURE_STAGE
#define SEAM_BENCH_CAPTURE_STAGE 0
#endif
#define BENCH_STOP_AT_HOOK (SEAM_BENCH_CAPTURE_STAGE == 1)
#define BENCH_STOP_AFTER_LOOKUP (SEAM_BENCH_CAPTURE_STAGE == 2)
#define BENCH_NO_RECORD (SEAM_BENCH_CAPTURE_STAGE == 3)

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define MSG_PEEK 2
#define TCP_CLOSE 7
#define TCP_SYN_SENT 2
#define MAX_IOV 4

/* x86_64 syscall numbers whose arguments describe the bytes moved. */
#define NR_read 0
#define NR_write 1
#define NR_readv 19
#define NR_writev 20
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47

/* Only the kernel fields seam reads; CO-RE relocates them against the running kernel's BTF. */
struct in6_addr {
	__u8 s6_addr[16];
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned char skc_state;
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	__s32 pid;
	__s32 tgid;
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

#define S_IFMT 0170000
#define S_IFSOCK 0140000

struct tcp_sock {
	__u32 write_seq;
} __attribute__((preserve_access_index));

struct sk_buff {
	struct sock *sk;
	unsigned int len;
	unsigned char *head;
	unsigned char *data;
	__u16 transport_header;
} __attribute__((preserve_access_index));

struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long cx;
	unsigned long ax;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

struct iovec {
	void *iov_base;
	__u64 iov_len;
};

struct user_msghdr {
	void *msg_name;
	int msg_namelen;
	struct iovec *msg_iov;
	__u64 msg_iovlen;
};

/* Set by the loader before load. */
const volatile __u32 capture_bytes = 512;
/* Wake the consumer once this much is waiting; below it the consumer's timed poll picks events up. */
const volatile __u64 wakeup_bytes = 64 * 1024;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} seam_targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} seam_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SEAM_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} seam_counters SEC(".maps");

enum conn_flags {
	CONN_NOT_TCP = 1,
	CONN_HTTP = 2,
	CONN_OPAQUE = 4, /* several chunks and never an HTTP start: stop looking */
	CONN_TLS = 8,    /* TLS records: the socket's bytes are ciphertext, never parsed */
	CONN_MARKED = 16, /* marked for ctxprop when it was connected (see mark_for_injection) */
	CONN_NODE_REQS = 32, /* a Node server connection: its requests are in seam_node_reqs */
};

/* on_payload's data_flags bit (never sent): TLS plaintext seen before its ciphertext is sent. */
#define TLS_BEFORE_SEND 0x80

/* Chunks without an HTTP start before a connection is judged opaque. More than one, so a
 * keep-alive connection first seen mid-message is still recognised at its next request. */
#define OPAQUE_AFTER 4

struct conn_info {
	__u64 conn_id;
	struct seam_tuple tuple;
	__u8 flags;
	__u8 misses;
	__u8 open_reqs;   /* requests received here and not answered yet (while ctxprop injects) */
	__u8 pad;
	__u32 serving_tid; /* the thread that received the last of them */
	__u32 epoch;       /* the ctxprop run open_reqs was counted in */
	__u32 pad2;
};

/* Keyed by the kernel's struct sock address; an entry ends when the socket reaches TCP_CLOSE. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn_info);
} seam_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seam_conn_seq SEC(".maps");

/* Twice the capture so masked offsets plus bounded lengths always fit (keeps the verifier sure). */
struct scratch {
	struct seam_event ev;
	__u8 payload[SEAM_MAX_CAPTURE * 2];
	/* traceparent headers in the payload, and where the first one's value starts: kept here,
	 * not on the stack, so the verifier does not track each value the scan may leave */
	__u32 tp_found;
	__u32 tp_value;
	__u32 tp_ids[7]; /* its trace id, parent id and flags, decoded */
	struct seam_injected context; /* sent after the payload when ev.flags has SEAM_DATA_CONTEXT */
	struct seam_node_choice node_choice; /* a Node TLS request's, off the stack */
	/* the same scan's view of the request's framing: where its header block ends (0: not in
	 * the captured bytes), where its Content-Length value starts (0: none), whether a
	 * Transfer-Encoding is given; and that length, once read */
	__u32 head_end;
	__u32 length_at;
	__u32 body_unknown;
	struct seam_length length;
	/* a TLS write held in seam_tls_pending: its SSL object and when its call returned */
	__u64 held_ssl;
	__u64 held_ns;
	/* Node's async context for the event on_payload builds next (taken and cleared there):
	 * handed over here, not as an on_payload argument, because a flag threaded through
	 * on_payload doubles the verifier's paths (the loader's start took 0.5 s longer) */
	struct seam_async async_next;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} seam_scratch SEC(".maps");

/* A TLS library call in progress on a thread (SSL_read/SSL_write and their _ex forms, or
 * SSL_do_handshake, which only teaches which socket an SSL object uses). */
#define TLS_HANDSHAKE 2 /* tls_call.direction: neither data direction */
struct tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 num;     /* bytes asked for */
	__u64 len_out; /* the _ex forms' size_t * for the bytes moved; 0 for SSL_read/SSL_write */
	__u64 sk;      /* the socket the library used inside this call, if it used one */
	__u8 direction;
	__u8 reported; /* a write's plaintext went out with its first ciphertext */
	__u8 active;   /* between the call's entry and its return */
	__u8 pad[5];
};

/* Per thread, so a call costs no hash insert and delete (one each per probed call was a fifth
 * of the programs' time under HTTPS load); freed with the thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tls_call);
} seam_tls_calls SEC(".maps");

/* The thread's TLS call in progress, if any. */
static __always_inline struct tls_call *current_tls_call(void)
{
	struct tls_call *call =
		bpf_task_storage_get(&seam_tls_calls, bpf_get_current_task_btf(), 0, 0);
	return call && call->active ? call : NULL;
}

struct tls_key {
	__u64 ssl;
	__u32 pid;
	__u32 pad;
};

/* The connection an SSL object was last seen on: the kernel's struct sock address (as seam_conns
 * keys it; bit 0 set when the library did that socket I/O itself) and that connection's id, so a
 * mapping outlived by its connection (an SSL object freed and reallocated for another one) is
 * never taken for a live one. */
struct tls_sock {
	__u64 sk;
	__u64 conn_id;
};

/* Bit 0 of tls_sock.sk (socket addresses are aligned): learned from socket I/O inside the
 * library's own call, so the library reads and writes that socket itself. */
#define TLS_SOCK_OWN_IO 1ULL

/* Which socket each SSL object of a process reads and writes: learned from the socket I/O the
 * library does inside a call, or (for libraries on memory BIOs, like Node's) from the TLS socket
 * the thread read last before decrypting, or that it sent a held write on. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tls_key);
	__type(value, struct tls_sock);
} seam_tls_socks SEC(".maps");

/* SSL objects whose last write failed after its plaintext was reported: OpenSSL requires the
 * same write again, which must not be reported twice. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tls_key);
	__type(value, __u8);
} seam_tls_retry SEC(".maps");

/* A memory-BIO library's write (Node's) that returned before its connection was known, as the
 * event it will be (all but the connection) with its plaintext copied: Node frees the buffer
 * before it sends the ciphertext. The thread's next ciphertext send claims it, if that comes
 * within TLS_PENDING_NS. Allocated only while held. */
#define TLS_PENDING_NS (10 * 1000 * 1000ULL)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct scratch);
} seam_tls_pending SEC(".maps");

/* tid → the TLS socket it read ciphertext from last. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} seam_tls_last_read SEC(".maps");

/* When the TCP send in progress on this CPU began queueing bytes: its thread, its socket, and
 * (from the transmit hook) how far the socket's byte stream reached then. sock_send_length fires
 * only as the send returns, and on loopback the peer may have read, and timed, those bytes by
 * then: an outgoing message starts here instead. Per CPU, not per thread, because a send runs on
 * one CPU nearly always and the slot costs next to nothing to reach; a send that moved CPUs just
 * starts as it returns. Every thread's sends write it, so the target check waits for the send's
 * end, where on_sock_io makes it anyway. */
struct send_began {
	__u64 pid_tgid;
	__u64 sk;
	__u64 ns;
	__u32 write_seq;
	__u8 from_xmit; /* armed by the transmit hook: valid only past the stream's end before the send */
	__u8 pad[3];
};

/* A mark this old is not the send in progress: one that moved CPUs left it. */
#define SEND_MARK_MAX_NS (1000 * 1000 * 1000ULL)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct send_began);
} seam_send_began SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid */
	__type(value, struct seam_node_rt);
} seam_node_rt SEC(".maps");

/* The rule by which a Node main thread's call belongs to a server request (argued in
 * correlator/src/node.rs, which applies it to the events) is applied here too, for ctxprop:
 * a call's outgoing context is chosen as its send begins, before the correlator sees anything.
 * Node's async ids are doubles; compared as the whole numbers they are. */

/* Async ids a connection's setup allocated: those in (before, after] (its accepted callback)
 * and in (secured_before, secured_after] (its TLS handshake's end; empty without TLS). */
struct node_setup {
	__u64 before;
	__u64 after;
	__u64 secured_before;
	__u64 secured_after;
};

/* The setup of a connection a Node process accepted, by conn_id, until its first request is read. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct node_setup);
} seam_node_setups SEC(".maps");

/* A connection a Node process accepted, by its socket, until its first I/O gives it a conn_id:
 * the accept probe runs in user context, where the socket is only an address. */
struct node_accepted {
	struct seam_node_accept acc;
	__u32 pid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* struct sock address */
	__type(value, struct node_accepted);
} seam_node_accepted SEC(".maps");

/* A Node server connection's current request and the context its calls carry. */
struct node_req {
	__u8 trace_id[16];
	__u8 flags;
	__u8 state; /* SEAM_CTX_NONE until a call makes the trace, or HEADER / GENERATED */
	__u8 open;  /* not answered yet */
	__u8 has_setup;
	__u32 serial; /* requests read on the connection */
	struct node_setup setup;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* conn_id */
	__type(value, struct node_req);
} seam_node_reqs SEC(".maps");

/* Which request of which connection: a request is named by its connection and serial. */
struct node_req_ref {
	__u64 conn_id;
	__u32 serial;
	__u32 pad;
};

/* Per Node process: the request its main thread read last, if that read held it alone. */
struct node_turn {
	struct node_req_ref req;
	__u64 read_at; /* the id counter at the read: ids above it were made since */
	struct node_setup setup;
	__u32 read_seq;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid */
	__type(value, struct node_turn);
} seam_node_turn SEC(".maps");

struct node_made_key {
	__u32 pid;
	__u32 pad;
	__u64 id; /* the TCP socket object's async id */
};

/* Client sockets a Node main thread made for a request, until the first send on them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct node_made_key);
	__type(value, struct node_req_ref);
} seam_node_made SEC(".maps");

/* A Node async id (a double's bits) as the whole number it is; 0 for none (negative,
 * fractional, or past 2^53, where doubles skip integers). */
static __always_inline __u64 node_id(__u64 bits)
{
	__u64 exp = (bits >> 52) & 0x7ff;
	if ((bits >> 63) || exp < 1023 || exp > 1075)
		return 0;
	__u64 mantissa = (bits & ((1ULL << 52) - 1)) | (1ULL << 52);
	__u64 shift = (1075 - exp) & 63;
	if (mantissa & ((1ULL << shift) - 1))
		return 0;
	return mantissa >> shift;
}

static __always_inline int setup_holds(const struct node_setup *su, __u64 id)
{
	return (id > su->before && id <= su->after) ||
	       (id > su->secured_before && id <= su->secured_after);
}

/* Node's async ids as they stand now in the process rt describes, with its socket read count;
 * 0 when they could be read. */
static __always_inline int node_read_ids(const struct seam_node_rt *rt, struct seam_async *out)
{
	if (bpf_probe_read_user(out, 3 * sizeof(__u64), (const void *)rt->fields) != 0)
		return -1;
	out->read_seq = rt->read_seq;
	out->valid = 1;
	return 0;
}

/* The request a Node main thread's callback (ids a) works for by the turn rule. */
static __always_inline int node_turn_request(__u32 pid, const struct seam_async *a,
					     struct node_req_ref *out)
{
	struct node_turn *t = bpf_map_lookup_elem(&seam_node_turn, &pid);
	if (!t || t->read_seq != a->read_seq)
		return 0;
	__u64 exec = node_id(a->exec_id);
	__u64 trigger = node_id(a->trigger_id);
	if (!exec || !setup_holds(&t->setup, trigger))
		return 0;
	if (exec <= t->read_at && !setup_holds(&t->setup, exec))
		return 0;
	*out = t->req;
	return 1;
}

/* Which request a Node main thread's send of a request on the connection at local_port works
 * for, by its async ids a: the turn rule, or (first_request: no request went on that connection
 * before) the request its socket was made for. Returns 1 with that request's context in *choice
 * (for seam_choose_context), 0 when the ids prove none. */
static __always_inline int node_choose(__u32 pid, const struct seam_async *a, int first_request,
				       __u16 local_port, __u32 epoch, struct seam_node_choice *choice)
{
	struct node_req_ref ref;
	if (!node_turn_request(pid, a, &ref)) {
		if (!first_request)
			return 0; /* a pooled connection's later request: its trigger proves nothing */
		struct node_made_key mk = {.pid = pid, .id = node_id(a->trigger_id)};
		struct node_req_ref *made = bpf_map_lookup_elem(&seam_node_made, &mk);
		if (!made)
			return 0;
		ref = *made;
		bpf_map_delete_elem(&seam_node_made, &mk);
	}
	struct node_req *req = bpf_map_lookup_elem(&seam_node_reqs, &ref.conn_id);
	if (!req || !req->open || req->serial != ref.serial)
		return 0;
	if (req->state != SEAM_CTX_HEADER && req->state != SEAM_CTX_GENERATED) {
		/* the request's trace starts with its first call */
		__u32 zero = 0;
		struct seam_prop_rule *rule = bpf_map_lookup_elem(&seam_prop_rule, &zero);
		req->flags = seam_new_trace(req->trace_id, rule ? rule->sample_threshold : 0);
		req->state = SEAM_CTX_GENERATED;
	}
	choice->flags = req->flags;
	choice->state = req->state;
	choice->local_port = local_port;
	choice->epoch = epoch;
	__builtin_memcpy(choice->trace_id, req->trace_id, 16);
	return 1;
}

enum io_kind {
	IO_FLAT = 1,   /* read/write/recvfrom/sendto: one buffer */
	IO_IOV = 2,    /* readv/writev: an iovec array */
	IO_MSGHDR = 3, /* recvmsg/sendmsg: a msghdr */
	IO_NOBUF = 4,  /* sendfile, splice, io_uring…: bytes only */
};

struct io_args {
	__u64 ptr;
	__u64 len;
	/* the buffer holding the last byte moved, and how many of its bytes were moved: where
	 * the tail is read from (set by capture_payload; a flat buffer is its own) */
	__u64 tail_buf;
	__u64 tail_moved;
	__s32 fd;
	__u8 kind;
};

static __always_inline int is_target(__u32 pid)
{
	return bpf_map_lookup_elem(&seam_targets, &pid) != NULL;
}

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&seam_counters, &which);
	if (v)
		*v += 1;
}

static __always_inline __u64 next_conn_id(void)
{
	__u32 zero = 0;
	__u64 *seq = bpf_map_lookup_elem(&seam_conn_seq, &zero);
	if (!seq)
		return 0;
	return __sync_fetch_and_add(seq, 1) + 1;
}

/* Fills the tuple when sk is a TCP socket. sk is the tracepoint's own BTF pointer, so its scalar
 * fields are plain loads (a probe read each costs a helper call); the IPv6 arrays are copied. */
static __always_inline int tcp_tuple(struct sock *sk, struct seam_tuple *t)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	t->family = family;
	t->local_port = sk->__sk_common.skc_num;
	t->remote_port = __builtin_bswap16(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		__be32 l = sk->__sk_common.skc_rcv_saddr;
		__be32 r = sk->__sk_common.skc_daddr;
		__builtin_memcpy(t->local_addr, &l, 4);
		__builtin_memcpy(t->remote_addr, &r, 4);
		return 1;
	}
	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&t->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&t->remote_addr, sk, __sk_common.skc_v6_daddr);
		return 1;
	}
	return 0;
}

static __always_inline int looks_like_http_start(const __u8 *p)
{
	/* request methods by their first four bytes, or an HTTP/1.x status line */
	if (p[0] == 'G' && p[1] == 'E' && p[2] == 'T' && p[3] == ' ')
		return 1;
	if (p[0] == 'P' && p[1] == 'O' && p[2] == 'S' && p[3] == 'T')
		return 1;
	if (p[0] == 'P' && p[1] == 'U' && p[2] == 'T' && p[3] == ' ')
		return 1;
	if (p[0] == 'P' && p[1] == 'A' && p[2] == 'T' && p[3] == 'C')
		return 1;
	if (p[0] == 'H' && p[1] == 'E' && p[2] == 'A' && p[3] == 'D')
		return 1;
	if (p[0] == 'D' && p[1] == 'E' && p[2] == 'L' && p[3] == 'E')
		return 1;
	if (p[0] == 'O' && p[1] == 'P' && p[2] == 'T' && p[3] == 'I')
		return 1;
	if (p[0] == 'C' && p[1] == 'O' && p[2] == 'N' && p[3] == 'N')
		return 1;
	if (p[0] == 'T' && p[1] == 'R' && p[2] == 'A' && p[3] == 'C')
		return 1;
	if (p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/' && p[5] == '1' &&
	    p[6] == '.')
		return 1;
	return 0;
}

/* The consumer drains the ring before it sleeps, and its poll is level-triggered, so a record
 * needs to wake it only when the waiting bytes cross a multiple of wakeup_bytes: the first
 * crossing wakes a sleeping consumer, a later one makes up for a crossing two CPUs both missed.
 * (A wakeup for every record while the consumer lags behind costs an interrupt per record.) */
static __always_inline __u64 submit_flags(__u64 size)
{
	if (!wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	__u64 waiting = bpf_ringbuf_query(&seam_events, BPF_RB_AVAIL_DATA);
	return waiting / wakeup_bytes != (waiting + size) / wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP;
}

/* One record into the ring buffer, counted as written or lost. */
static __always_inline void output(void *record, __u64 size)
{
	if (bpf_ringbuf_output(&seam_events, record, size, submit_flags(size)) == 0)
		count(SEAM_CNT_EVENTS);
	else
		count(SEAM_CNT_RINGBUF_FULL);
}

struct node_accept_record {
	struct seam_event ev;
	struct seam_node_accept acc;
};

static __always_inline void report_node_accept(__u64 conn_id, const struct seam_node_accept *acc)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct node_accept_record r = {.acc = *acc};
	r.ev.kind = SEAM_EV_NODE_ACCEPT;
	r.ev.conn_id = conn_id;
	r.ev.pid = pid_tgid >> 32;
	r.ev.tid = (__u32)pid_tgid;
	r.ev.fd = -1;
	r.ev.start_ns = r.ev.end_ns = bpf_ktime_get_ns();
	r.ev.captured = sizeof(r.acc);
	output(&r, sizeof(r));
}

/* The ids of a setup callback as whole numbers; false when they hold none. */
static __always_inline int node_setup_range(const struct seam_node_accept *acc, __u64 *before,
					    __u64 *after)
{
	*before = node_id(acc->before);
	*after = node_id(acc->after);
	/* found in the connection's own callback: the counter then was its socket's id */
	if (*before && acc->learned)
		(*before)--;
	return *before && *after > *before;
}

/* A socket a Node process accepted got its conn_id (its first I/O): its setup is the
 * connection's from now on, for the correlator (reported) and the rule here. */
static __always_inline void node_adopt_accept(__u64 sk, __u64 conn_id)
{
	struct node_accepted *a = bpf_map_lookup_elem(&seam_node_accepted, &sk);
	if (!a)
		return;
	struct seam_node_accept acc = a->acc;
	int same_process = a->pid == bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&seam_node_accepted, &sk);
	struct node_setup su = {};
	if (!same_process || !node_setup_range(&acc, &su.before, &su.after))
		return;
	report_node_accept(conn_id, &acc);
	bpf_map_update_elem(&seam_node_setups, &conn_id, &su, BPF_ANY);
}

/* The connection for sk, classified on first sight. A socket past TCP_CLOSE (its last read after
 * the close, say) gets no entry: its port is gone from it, and the entry would outlive it and be
 * found by the next socket at the same address with the dead one's tuple and id. On a Node
 * target's main thread, a new connection takes the setup its accept probe left for the socket. */
static __always_inline struct conn_info *conn_of(struct sock *sk, int node_main_thread)
{
	__u64 key = (__u64)sk;
	struct conn_info *ci = bpf_map_lookup_elem(&seam_conns, &key);
	if (ci)
		return ci;
	if (sk->__sk_common.skc_state == TCP_CLOSE)
		return NULL;
	struct conn_info info = {};
	if (tcp_tuple(sk, &info.tuple)) {
		if (info.tuple.local_port == 0)
			return NULL;
		info.conn_id = next_conn_id();
		if (bpf_sk_storage_get(&seam_prop_sock, sk, 0, 0))
			info.flags = CONN_MARKED;
	} else {
		info.flags = CONN_NOT_TCP;
	}
	bpf_map_update_elem(&seam_conns, &key, &info, BPF_ANY);
	if (info.conn_id && node_main_thread)
		node_adopt_accept(key, info.conn_id);
	return bpf_map_lookup_elem(&seam_conns, &key);
}

static __always_inline void emit(struct scratch *s, __u32 captured)
{
	__u64 n = captured;
	asm volatile("" : "+r"(n));
	if (n > SEAM_MAX_CAPTURE)
		n = SEAM_MAX_CAPTURE;
	if (s->ev.flags & SEAM_DATA_CONTEXT) {
		const __u8 *ctx = (const __u8 *)&s->context;
#pragma unroll
		for (int i = 0; i < sizeof(s->context); i += 8)
			seam_store8(&s->payload[n + i], seam_load8(ctx + i));
		n += sizeof(s->context);
	}
	if (!BENCH_NO_RECORD)
		output(s, sizeof(struct seam_event) + n);
}

/* Copies up to `want` bytes from user memory into the scratch payload at `off`; returns bytes copied. */
static __always_inline __u32 copy_user(struct scratch *s, __u32 off, const void *src, __u64 want)
{
	__u64 n = want;
	asm volatile("" : "+r"(n));
	if (n > SEAM_MAX_CAPTURE)
		n = SEAM_MAX_CAPTURE;
	if (n == 0)
		return 0;
	if (bpf_probe_read_user(&s->payload[off & (SEAM_MAX_CAPTURE - 1)], n, src) != 0)
		return 0;
	return n;
}

static __always_inline void read_tail(struct scratch *s, const __u8 *buf, __u64 bytes)
{
	__u64 n = bytes < SEAM_TAIL_LEN ? bytes : SEAM_TAIL_LEN;
	asm volatile("" : "+r"(n));
	if (n > SEAM_TAIL_LEN)
		n = SEAM_TAIL_LEN;
	if (n == 0 || bpf_probe_read_user(s->ev.tail, n, buf + bytes - n) != 0)
		n = 0;
	s->ev.tail_len = n;
}

/* Whether the copy's first `off` bytes end with the blank line that ends an HTTP head (the high
 * half of the word before `off`, little-endian: "\r\n\r\n"). */
static __always_inline int ends_head(struct scratch *s, __u32 off)
{
	if (off < 8)
		return 0;
	return seam_load8(&s->payload[(off - 8) & (SEAM_MAX_CAPTURE - 1)]) >> 32 == 0x0a0d0a0d;
}

/* Copies the first bytes of the data the syscall moved, however it was described: one user
 * read for a flat buffer; for vectors, one read of the iovec array and one per buffer used.
 * A first buffer that ends a head is where a vectored copy stops: the buffers after it hold
 * that message's body (a server's head and its file, say), which user space finds the end of
 * from the head and the tail, never from the body's bytes. */
static __always_inline __u32 capture_payload(struct scratch *s, struct io_args *a, __u64 bytes)
{
	__u64 limit = capture_bytes;
	if (limit > SEAM_MAX_CAPTURE)
		limit = SEAM_MAX_CAPTURE;
	if (limit > bytes)
		limit = bytes;
	if (a->kind == IO_FLAT) {
		a->tail_buf = a->ptr;
		a->tail_moved = bytes;
		return copy_user(s, 0, (const void *)a->ptr, limit);
	}
	struct iovec *iov = (struct iovec *)a->ptr;
	__u64 iovcnt = a->len;
	if (a->kind == IO_MSGHDR) {
		struct user_msghdr mh = {};
		if (bpf_probe_read_user(&mh, sizeof(mh), (void *)a->ptr) != 0)
			return 0;
		iov = mh.msg_iov;
		iovcnt = mh.msg_iovlen;
	}
	struct iovec vs[MAX_IOV] = {};
	__u64 n = iovcnt < MAX_IOV ? iovcnt : MAX_IOV;
	__u64 size = n * sizeof(struct iovec);
	asm volatile("" : "+r"(size));
	if (size > sizeof(vs))
		size = sizeof(vs);
	if (size == 0 || bpf_probe_read_user(vs, size, iov) != 0)
		return 0;
	__u64 before = 0;
#pragma unroll
	for (int i = 0; i < MAX_IOV; i++) {
		if (i >= n)
			break;
		if (bytes <= before + vs[i].iov_len) {
			a->tail_buf = (__u64)vs[i].iov_base;
			a->tail_moved = bytes - before;
			break;
		}
		before += vs[i].iov_len;
	}
	__u64 first = vs[0].iov_len < limit ? vs[0].iov_len : limit;
	__u32 off = copy_user(s, 0, vs[0].iov_base, first);
	if (off == vs[0].iov_len && ends_head(s, off))
		return off;
#pragma unroll
	for (int i = 1; i < MAX_IOV; i++) {
		if (i >= n || off >= limit)
			break;
		__u64 want = limit - off;
		if (vs[i].iov_len < want)
			want = vs[i].iov_len;
		off += copy_user(s, off, vs[i].iov_base, want);
	}
	return off;
}

/* Where the calling syscall's bytes are, from its saved user registers. */
static __always_inline void caller_io(struct io_args *a)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	a->fd = -1;
	a->kind = IO_NOBUF;
	if (!regs)
		return;
	unsigned long nr = regs->orig_ax;
	a->ptr = regs->si;
	a->len = regs->dx;
	switch (nr) {
	case NR_read:
	case NR_write:
	case NR_recvfrom:
	case NR_sendto:
		a->kind = IO_FLAT;
		break;
	case NR_readv:
	case NR_writev:
		a->kind = IO_IOV;
		break;
	case NR_recvmsg:
	case NR_sendmsg:
		a->kind = IO_MSGHDR;
		break;
	default:
		return;
	}
	a->fd = (__s32)regs->di;
}

static __always_inline struct scratch *scratch_for(struct conn_info *ci, __u32 pid, __u64 pid_tgid,
						   __s32 fd, __u64 now)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	if (!s)
		return NULL;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->ev.conn_id = ci->conn_id;
	s->ev.start_ns = now;
	s->ev.end_ns = now;
	s->ev.pid = pid;
	s->ev.tid = (__u32)pid_tgid;
	s->ev.fd = fd;
	s->ev.role = SEAM_ROLE_UNKNOWN;
	s->ev.tuple = ci->tuple;
	return s;
}

static __always_inline void report_close(struct conn_info *ci, __u32 pid, __u64 pid_tgid)
{
	if (!(ci->flags & CONN_HTTP))
		return;
	struct scratch *s = scratch_for(ci, pid, pid_tgid, -1, bpf_ktime_get_ns());
	if (!s)
		return;
	s->ev.kind = SEAM_EV_CLOSE;
	emit(s, 0);
}


#define PMASK (SEAM_MAX_CAPTURE * 2 - 1)
#define PB(s, o) ((s)->payload[(o) & PMASK])
/* Eight payload bytes from o (the payload is followed by more of the scratch, so always in it). */
#define WORD(s, o) seam_load8(&(s)->payload[(o) & PMASK])

struct tp_scan {
	struct scratch *s;
	__u32 len;
	__u32 value;
};

/* The line after the '\n' at i of the header block: one starting with "traceparent:" (any case)
 * is counted, and the framing headers are noted. Returns 1 at the end of the headers (or of the
 * bytes). A global function, verified once on its own and called once per line: inlined, it
 * was eight copies per word scanned. */
__attribute__((noinline)) int tp_line(__u32 i, __u32 len)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	__u64 o = (__u64)i + 1;
	if (!s || (__u64)i + 3 > len)
		return 1;
	if (PB(s, o) == '\r') {
		/* the blank line: end of the headers */
		if (PB(s, o + 1) == '\n')
			s->head_end = o + 2;
		return 1;
	}
	if (o + 16 > len)
		return 0; /* too short for a header seam reads; the blank line may follow */
	switch (seam_header_of(WORD(s, o), WORD(s, o + 8), WORD(s, o + 16))) {
	case SEAM_HDR_TRACEPARENT:
		if (s->tp_found == 0)
			s->tp_value = o + SEAM_TRACEPARENT_VALUE;
		s->tp_found++;
		break;
	case SEAM_HDR_CONTENT_LENGTH:
		if (s->length_at)
			s->body_unknown = 1; /* two Content-Length headers */
		s->length_at = o + SEAM_CONTENT_LENGTH_VALUE;
		break;
	case SEAM_HDR_TRANSFER_ENCODING:
		s->body_unknown = 1;
		break;
	}
	return 0;
}

#define TP_SCAN_STEP 32

/* TP_SCAN_STEP bytes of the header block a word at a time: each '\n' in a word is found from the
 * word's match mask, not looked for byte by byte (this runs for every request a server receives
 * while ctxprop propagates). */
static long tp_scan_step(__u64 step, void *ctx)
{
	struct tp_scan *t = ctx;
	struct scratch *s = t->s;
	__u64 base = step * TP_SCAN_STEP;
	if (!s || base >= t->len)
		return 1;
#pragma unroll
	for (int k = 0; k < TP_SCAN_STEP; k += 8) {
		__u64 at = base + k;
		if (at >= t->len)
			return 1;
		__u64 nl = seam_bytes_eq(WORD(s, at), '\n');
		if (at + 8 > t->len)
			nl &= (1ULL << (8 * (t->len - at))) - 1; /* bytes past the read are stale */
#pragma clang loop unroll(disable)
		for (int j = 0; j < 8 && nl; j++) {
			if (tp_line(at + seam_first_marked(nl), t->len))
				return 1;
			nl &= nl - 1;
		}
	}
	return 0;
}

/* Eight characters of lowercase hex, as read (the first in the lowest byte), into four bytes in
 * order, in the low half; the high half is non-zero when any character is not [0-9a-f]. Whole
 * words, no branch per character: a per-pair loop cost more than the rest of a receive. A
 * global function: inlined eight times, its constants stay live across the copies and spill,
 * and the caller's frame then passes the 512 bytes a tracepoint's call chain may use on older
 * kernels. */
__attribute__((noinline)) __u64 hex8(__u64 w)
{
	__u64 bad = (seam_bytes_in(w, '0', '9') | seam_bytes_in(w, 'a', 'f')) ^ SEAM_HIGHS;
	/* '0'-'9' are 0x3N, 'a'-'f' 0x6N (bit 6 set, N = value - 9) */
	__u64 n = (w & SEAM_ONES * 0x0f) + ((w >> 6) & SEAM_ONES) * 9;
	__u64 t = ((n & 0x00ff00ff00ff00ffULL) << 4) | ((n >> 8) & 0x00ff00ff00ff00ffULL);
	t = (t | (t >> 8)) & 0x0000ffff0000ffffULL;
	return (__u32)(t | (t >> 16)) | ((__u64)(bad != 0) << 32);
}

/* Two hex characters at o as one byte, bad flag kept ('0' padding makes them a word). */
#define HEX2(s, o) (hex8((WORD(s, o) & 0xffff) | 0x3030303030300000ULL) & 0xffffffff000000ffULL)

/* Decodes the traceparent value at v of this CPU's scratch payload (its dashes checked) into
 * tp_ids: returns its version, or -1 when it is not lowercase hex, has an all-zero id, or is
 * version ff. A global function, verified once on its own: inlined, its registers would spill
 * past the stack the socket hooks have left, and its exact results would multiply the
 * verifier's states in the caller. */
__attribute__((noinline)) int tp_decode(__u32 v)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	if (!s)
		return -1;
	__u64 version = HEX2(s, v), flags = HEX2(s, v + 53), any = version | flags;
	__u32 *ids = s->tp_ids;
	ids[6] = (__u32)flags;
#pragma unroll
	for (int k = 0; k < 6; k++) {
		__u64 d = hex8(WORD(s, v + (k < 4 ? 3 + 8 * k : 36 + 8 * (k - 4))));
		ids[k] = (__u32)d;
		any |= d;
	}
	if ((any >> 32) || version == 0xff)
		return -1;
	if (!(ids[0] | ids[1] | ids[2] | ids[3]) || !(ids[4] | ids[5]))
		return -1;
	return (int)version;
}

/* The request's incoming context, by the same rules the correlator applies (W3C Trace Context
 * level 1): exactly one traceparent, lowercase hex, no all-zero ids, version ff invalid, version
 * 00 with nothing after the flags, a later version only with '-' after them. */
static __always_inline void incoming_context(struct scratch *s, __u32 len, struct seam_serving *out)
{
	struct tp_scan t = {.s = s, .len = len};
	s->tp_found = 0;
	s->tp_value = 0;
	s->head_end = 0;
	s->length_at = 0;
	s->body_unknown = 0;
	bpf_loop((len + TP_SCAN_STEP - 1) / TP_SCAN_STEP, tp_scan_step, &t, 0);
	if (s->tp_found != 1)
		return;
	__u32 v = s->tp_value;
	for (int k = 0; k < 8; k++) {
		if (v >= len || (PB(s, v) != ' ' && PB(s, v) != '\t'))
			break;
		v++;
	}
	if (v + 55 > len)
		return;
	if (PB(s, v + 2) != '-' || PB(s, v + 35) != '-' || PB(s, v + 52) != '-')
		return;
	int version = tp_decode(v);
	if (version < 0)
		return;
	int later_version = version != 0;
	__u32 p = v + 55;
	if (!(later_version && p < len && PB(s, p) == '-')) {
		for (int k = 0; k < 8; k++) {
			if (p >= len || (PB(s, p) != ' ' && PB(s, p) != '\t'))
				break;
			p++;
		}
		if (p < len && PB(s, p) != '\r' && PB(s, p) != '\n')
			return;
	}
	__builtin_memcpy(out->trace_id, s->tp_ids, 16);
	out->flags = (__u8)s->tp_ids[6];
	out->state = SEAM_CTX_HEADER;
}

/* The request's context rides on its own event, after the captured bytes: what went out with it
 * or what came with it in a TCP option (the context's kind says which). One record, not two. */
static __always_inline void report_context(struct scratch *s, const struct seam_injected *ctx)
{
	s->context = *ctx;
	s->ev.flags |= SEAM_DATA_CONTEXT;
}

/* Reports what ctxprop injected into the request being sent on ci, so user space gives the
 * client span exactly the ids on the wire. */
static __always_inline void report_injected(struct conn_info *ci, struct sock *sk,
					    struct scratch *s)
{
	if (!(ci->flags & CONN_MARKED))
		return;
	struct seam_prop_sock *ps = bpf_sk_storage_get(&seam_prop_sock, sk, 0, 0);
	if (!ps || !(ps->pending & SEAM_PENDING_REPORT))
		return;
	ps->pending &= ~SEAM_PENDING_REPORT;
	report_context(s, &ps->ctx);
}

/* Byte k of the Content-Length value. */
static long length_step(__u64 k, void *ctx)
{
	struct tp_scan *t = ctx;
	struct scratch *s = t->s;
	if (!s)
		return 1;
	__u64 at = t->value + k;
	if (at >= t->len)
		return 1;
	return seam_length_feed(&s->length, PB(s, at));
}

/* Whether a request's read held it alone: its whole head, and no byte past its body. */
static __always_inline int read_holds_request_alone(struct scratch *s, __u32 captured)
{
	s->length.value = 0;
	s->length.state = SEAM_LEN_BEFORE;
	if (s->length_at) {
		struct tp_scan t = {.s = s, .len = captured, .value = s->length_at};
		bpf_loop(SEAM_LENGTH_MAX_BYTES, length_step, &t, 0);
		if (s->length.state != SEAM_LEN_DONE)
			return 0;
	}
	__u32 bytes = s->ev.bytes;
	return s->head_end && !s->body_unknown && bytes >= s->head_end &&
	       bytes - s->head_end <= s->length.value;
}

/* A Node main thread read a server request on ci (its context in fresh): the connection's
 * request moves on, and the thread's turn is that request's when the read held it alone (its
 * whole head, and no byte past its body). */
static __always_inline void node_request_read(struct conn_info *ci, __u32 pid, struct scratch *s,
					      __u32 captured, const struct seam_serving *fresh)
{
	struct node_req *req = bpf_map_lookup_elem(&seam_node_reqs, &ci->conn_id);
	if (!req) {
		struct node_req first = {};
		struct node_setup *su = bpf_map_lookup_elem(&seam_node_setups, &ci->conn_id);
		if (su) {
			first.setup = *su;
			first.has_setup = 1;
			bpf_map_delete_elem(&seam_node_setups, &ci->conn_id);
		}
		bpf_map_update_elem(&seam_node_reqs, &ci->conn_id, &first, BPF_ANY);
		req = bpf_map_lookup_elem(&seam_node_reqs, &ci->conn_id);
		if (!req)
			return;
		ci->flags |= CONN_NODE_REQS;
	}
	__builtin_memcpy(req->trace_id, fresh->trace_id, 16);
	req->flags = fresh->flags;
	req->state = fresh->state;
	req->open = 1;
	req->serial++;
	int alone = read_holds_request_alone(s, captured);
	__u64 read_at = node_id(s->ev.async.last_id);
	/* otherwise nothing is kept: this read moved the thread's read count past the last turn */
	if (!alone || !req->has_setup || !read_at)
		return;
	struct node_turn t = {
		.req = {.conn_id = ci->conn_id, .serial = req->serial},
		.read_at = read_at,
		.setup = req->setup,
		.read_seq = s->ev.async.read_seq,
	};
	bpf_map_update_elem(&seam_node_turn, &pid, &t, BPF_ANY);
}

/* Thread tid received a request (its context in *fresh): it works for that one, or for several at
 * once when others are still open. An entry the thread has is rewritten where it is: an update
 * of the LRU map would take a new element from its lists for every request. A global function,
 * verified once on its own: inlined, its branches multiplied the states of on_recv past the
 * verifier's limit. */
__attribute__((noinline)) int serving_enter(__u32 tid, const struct seam_serving *fresh)
{
	if (!fresh)
		return 0;
	struct seam_serving *sv = bpf_map_lookup_elem(&seam_serving, &tid);
	if (!sv)
		return bpf_map_update_elem(&seam_serving, &tid, fresh, BPF_ANY) == 0;
	if (sv->epoch == fresh->epoch && sv->open > 0) {
		if (sv->open < 0xffff)
			sv->open++;
		sv->state = SEAM_CTX_AMBIGUOUS;
	} else {
		*sv = *fresh;
	}
	return 1;
}

/* A request arrived on ci for thread tid: the thread now works for it, alone or among others. */
static __always_inline void serving_begin(struct conn_info *ci, __u32 pid, __u32 tid,
					  struct scratch *s, __u32 captured, __u32 epoch)
{
	if (ci->epoch != epoch) {
		ci->epoch = epoch;
		ci->open_reqs = 0;
	}
	struct seam_serving fresh = {.open = 1, .epoch = epoch};
	incoming_context(s, captured, &fresh);
	/* The peer's TCP option, taken whether used or not: a later request without one must never
	 * find it. The header wins when both are there. One read in an earlier ctxprop run is never
	 * taken: it may be any earlier request's. */
	struct seam_injected *opt = seam_option_read_in(epoch)
					    ? bpf_map_lookup_elem(&seam_remote_ctx, &ci->tuple)
					    : NULL;

	if (opt && opt->kind == SEAM_INJ_REMOTE && opt->epoch == epoch) {
		if (fresh.state == SEAM_CTX_NONE) {
			__builtin_memcpy(fresh.trace_id, opt->trace_id, 16);
			fresh.flags = opt->flags;
			fresh.state = SEAM_CTX_HEADER;
			report_context(s, opt);
		}
		/* Taken where it is. A delete costs a trip through the LRU lists for every request, and
		 * could remove the next request's option had it replaced this one meanwhile. */
		opt->kind = SEAM_INJ_TAKEN;
	}
	serving_enter(tid, &fresh);
	if (ci->open_reqs < 0xff)
		ci->open_reqs++;
	ci->serving_tid = tid;
	if (s->ev.async.valid)
		node_request_read(ci, pid, s, captured, &fresh);
}

/* n requests on ci are answered or given up. */
static __always_inline void serving_end(struct conn_info *ci, __u8 n, __u32 epoch)
{
	if (epoch == 0 || ci->epoch != epoch)
		return;
	if (n > ci->open_reqs)
		n = ci->open_reqs;
	if (n == 0)
		return;
	ci->open_reqs -= n;
	struct node_req *req = (ci->flags & CONN_NODE_REQS)
				       ? bpf_map_lookup_elem(&seam_node_reqs, &ci->conn_id)
				       : NULL;
	if (req)
		req->open = 0; /* a Node connection serves its requests one at a time */
	struct seam_serving *sv = bpf_map_lookup_elem(&seam_serving, &ci->serving_tid);
	if (sv && sv->epoch == epoch)
		sv->open = sv->open > n ? sv->open - n : 0;
}

static __always_inline int is_status_line(const __u8 *p)
{
	return p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/';
}

/* A TLS record header: content type 20-23, protocol version 3.x. */
static __always_inline int looks_like_tls_record(const __u8 *p)
{
	return p[0] >= 20 && p[0] <= 23 && p[1] == 3 && p[2] <= 4;
}

static __always_inline void remember_tls_read(__u64 pid_tgid, struct sock *sk)
{
	__u32 tid = (__u32)pid_tgid;
	__u64 key = (__u64)sk;
	__u64 *last = bpf_map_lookup_elem(&seam_tls_last_read, &tid);
	if (!last || *last != key)
		bpf_map_update_elem(&seam_tls_last_read, &tid, &key, BPF_ANY);
}

/* A TLS request's context for the TCP-option carrier: chosen here, where its plaintext is seen
 * before encryption, as ctxprop's sk_msg chooses a plaintext one; ctxprop's sockops writes it on
 * the request's first segment. Only on connections ctxprop took (marked) with that carrier. */
static __always_inline void tls_option(struct conn_info *ci, struct scratch *s, __u32 pid,
				       const struct seam_async *node_ids, int first_request,
				       __u32 epoch)
{
	__u32 zero = 0;
	struct seam_prop_rule *rule = bpf_map_lookup_elem(&seam_prop_rule, &zero);
	__u32 *target = bpf_map_lookup_elem(&seam_targets, &pid);
	if (!rule || !target || !(ci->flags & CONN_MARKED))
		return;
	__u32 own = (*target & SEAM_OVERRIDE_MASK) >> SEAM_OVERRIDE_SHIFT;
	__u32 use = own ? own - 1 : rule->carriers;
	if (!(use & SEAM_CARRIER_TCP_OPTION))
		return;
	struct seam_injected inj = {};
	inj.local_port = ci->tuple.local_port;
	/* A Node main thread's request (its event carries Node's ids): they say which server
	 * request it works for, as at a plaintext send (whose probe leaves ciphertext alone). */
	struct seam_node_choice *nc = &s->node_choice;
	if (!node_ids->valid ||
	    !node_choose(pid, node_ids, first_request, ci->tuple.local_port, epoch, nc))
		nc = NULL;
	seam_choose_context(&inj, rule->sample_threshold, rule->follow_parent, epoch, nc);
	if (bpf_map_update_elem(&seam_tls_option, &ci->tuple, &inj, BPF_ANY) == 0)
		report_context(s, &inj);
}

/* Bytes a target moved on ci between began and now: parsed as an HTTP/1.x stream, whether they
 * came from the socket or (data_flags has SEAM_DATA_TLS) from the TLS library as plaintext. */
static __always_inline int on_payload(struct conn_info *ci, struct sock *sk, __u32 pid,
				      __u64 pid_tgid, struct io_args *args, __u64 ret,
				      __u8 direction, __u8 data_flags, __u64 began, __u64 now)
{
	struct scratch *s = scratch_for(ci, pid, pid_tgid, args->fd, now);
	if (!s)
		return 0;
	s->ev.async = s->async_next;
	s->async_next.valid = 0;
	s->ev.start_ns = began;
	/* The prefix is copied first and the start looked for in the copy: one user read, not two. */
	__u32 captured = args->kind == IO_NOBUF ? 0 : capture_payload(s, args, ret);
	int start = captured >= 8 && looks_like_http_start(s->payload);
	if (!start && !(ci->flags & CONN_HTTP)) {
		if (!data_flags && captured >= 3 && looks_like_tls_record(s->payload)) {
			/* ciphertext from here on: its plaintext comes from the TLS uprobes */
			ci->flags |= CONN_TLS;
			if (direction == SEAM_DIR_INGRESS)
				remember_tls_read(pid_tgid, sk);
		} else if (++ci->misses >= OPAQUE_AFTER) {
			ci->flags |= CONN_OPAQUE;
		}
		return 0;
	}
	s->ev.kind = SEAM_EV_DATA;
	s->ev.direction = direction;
	s->ev.bytes = (__u32)ret;
	s->ev.flags = data_flags & ~TLS_BEFORE_SEND;
	if (start) {
		int first_message = !(ci->flags & CONN_HTTP);
		ci->flags |= CONN_HTTP;
		s->ev.flags |= SEAM_DATA_HTTP_START;
		__u32 epoch = seam_prop_epoch();
		if (epoch) {
			int status = is_status_line(s->payload);
			if (direction == SEAM_DIR_INGRESS && !status)
				serving_begin(ci, pid, (__u32)pid_tgid, s, captured, epoch);
			else if (direction == SEAM_DIR_EGRESS && status && s->payload[9] != '1')
				serving_end(ci, 1, epoch); /* a final response, not "100 Continue" */
			else if (direction == SEAM_DIR_EGRESS && !status && (data_flags & TLS_BEFORE_SEND))
				tls_option(ci, s, pid, &s->ev.async, first_message, epoch);
			else if (direction == SEAM_DIR_EGRESS && !status && !data_flags)
				report_injected(ci, sk, s);
		}
	} else {
		captured = 0; /* a continuation ships counts and its tail only */
	}
	/* When the prefix holds every byte, user space takes the tail from it. */
	if (args->tail_buf && (!start || ret > captured))
		read_tail(s, (const __u8 *)args->tail_buf, args->tail_moved);
	s->ev.captured = captured;
	emit(s, captured);
	return 0;
}

/* Node's async ids now, for the event on_payload builds next. */
static __always_inline void node_snapshot(__u32 pid)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	struct seam_node_rt *rt = bpf_map_lookup_elem(&seam_node_rt, &pid);
	if (s && rt)
		node_read_ids(rt, &s->async_next);
}

/* A write's plaintext as one event of all the bytes asked for (partial writes are an opt-in
 * mode): at SSL_write's entry when its connection is known (before_send: nothing has left yet),
 * else when its first ciphertext is sent. Reported once, even when a failed write is retried. */
static __always_inline void report_tls_write(struct conn_info *ci, struct tls_call *call,
					     struct sock *sk, __u32 pid, __u64 pid_tgid,
					     __u8 before_send)
{
	call->reported = 1;
	struct tls_key key = {.ssl = call->ssl, .pid = pid};
	if (bpf_map_lookup_elem(&seam_tls_retry, &key)) {
		bpf_map_delete_elem(&seam_tls_retry, &key); /* the retried write was reported already */
		return;
	}
	__u64 num = call->num;
	if (num == 0 || num > 0x7fffffff || (ci->flags & CONN_OPAQUE))
		return;
	struct io_args args = {.ptr = call->buf, .len = num, .fd = -1, .kind = IO_FLAT};
	__u64 now = bpf_ktime_get_ns();
	if ((__u32)pid_tgid == pid)
		node_snapshot(pid);
	on_payload(ci, sk, pid, pid_tgid, &args, num, SEAM_DIR_EGRESS, SEAM_DATA_TLS | before_send,
		   now, now);
}

/* Socket I/O on a TLS connection: ciphertext, never parsed. It tells which socket the TLS call
 * in progress on this thread uses, or, outside calls, which TLS socket the thread read last. */
static __always_inline int on_ciphertext(struct conn_info *ci, struct tls_call *call,
					 struct sock *sk, __u32 pid, __u64 pid_tgid, int ret,
					 __u8 direction)
{
	if (call) {
		call->sk = (__u64)sk;
		if (!(ci->flags & CONN_TLS)) {
			ci->flags = (ci->flags | CONN_TLS) & ~CONN_OPAQUE;
			ci->misses = 0;
		}
		if (direction == SEAM_DIR_EGRESS && call->direction == SEAM_DIR_EGRESS && ret > 0 &&
		    !call->reported)
			report_tls_write(ci, call, sk, pid, pid_tgid, 0);
	}
	if (ret == 0) {
		if (direction == SEAM_DIR_INGRESS)
			report_close(ci, pid, pid_tgid);
		return 0;
	}
	/* only a library reading outside its own calls (a memory BIO) is placed by this */
	if (direction == SEAM_DIR_INGRESS && !call)
		remember_tls_read(pid_tgid, sk);
	return 0;
}

/* The ciphertext a thread sends outside any TLS call claims the write its memory-BIO library
 * (Node) returned just before on a connection not known yet. */
static __always_inline void claim_pending_write(struct conn_info *ci, struct sock *sk, __u32 pid,
						__u64 pid_tgid, __u64 now)
{
	struct scratch *held = bpf_map_lookup_elem(&seam_tls_pending, &pid_tgid);
	if (!held)
		return;
	if (now - held->held_ns <= TLS_PENDING_NS) {
		held->ev.conn_id = ci->conn_id;
		held->ev.tuple = ci->tuple;
		ci->flags |= CONN_HTTP;
		emit(held, held->ev.captured);
		struct tls_key key = {.ssl = held->held_ssl, .pid = pid};
		struct tls_sock value = {.sk = (__u64)sk, .conn_id = ci->conn_id};
		bpf_map_update_elem(&seam_tls_socks, &key, &value, BPF_ANY);
	}
	bpf_map_delete_elem(&seam_tls_pending, &pid_tgid);
}

/* Marks where this thread's send on sk began: the first call of a send wins. */
static __always_inline void arm_send(__u64 sk, __u32 write_seq, __u8 from_xmit)
{
	__u32 zero = 0;
	struct send_began *b = bpf_map_lookup_elem(&seam_send_began, &zero);
	if (!b)
		return;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();
	if (b->pid_tgid == pid_tgid && b->sk == sk && now - b->ns < SEND_MARK_MAX_NS)
		return;
	b->pid_tgid = pid_tgid;
	b->sk = sk;
	b->ns = now;
	b->write_seq = write_seq;
	b->from_xmit = from_xmit;
}

/* When the send that returned ret on sk began, else now. The send's end clears the mark, so one
 * it did not make (a transmit of older bytes between sends) is never taken. */
static __always_inline __u64 send_began_at(struct sock *sk, __u64 pid_tgid, int ret, __u64 now)
{
	__u32 zero = 0;
	struct send_began *b = bpf_map_lookup_elem(&seam_send_began, &zero);
	if (!b || b->pid_tgid != pid_tgid)
		return now;
	__u64 began = now;
	if (b->sk == (__u64)sk && b->ns <= now && now - b->ns < SEND_MARK_MAX_NS && ret > 0) {
		if (!b->from_xmit) {
			began = b->ns;
		} else {
			struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
			if (tp && (__s32)(b->write_seq - (tp->write_seq - (__u32)ret)) > 0)
				began = b->ns;
		}
	}
	b->pid_tgid = 0;
	return began;
}

static __always_inline void count_node_read(__u32 pid)
{
	struct seam_node_rt *rt = bpf_map_lookup_elem(&seam_node_rt, &pid);
	if (rt)
		rt->read_seq++;
}

static __always_inline int on_sock_io(struct sock *sk, int ret, int flags, __u8 direction)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	__u32 *target = bpf_map_lookup_elem(&seam_targets, &pid);
	if (!sk || !target)
		return 0;
	/* Before any other lookup: on loopback the peer may already be reading what this delivered. */
	__u64 now = bpf_ktime_get_ns();
	__u64 began = direction == SEAM_DIR_EGRESS ? send_began_at(sk, pid_tgid, ret, now) : now;
	if (ret < 0)
		return 0;
	int node = (*target & SEAM_TARGET_NODE) && (__u32)pid_tgid == pid;
	if (node && direction == SEAM_DIR_INGRESS && !(flags & MSG_PEEK))
		count_node_read(pid); /* every socket read, whatever the socket: each may start a callback */
	if (direction == SEAM_DIR_INGRESS && (flags & MSG_PEEK))
		return 0; /* the same bytes will be read again */
	struct conn_info *ci = conn_of(sk, node);
	if (!ci || (ci->flags & CONN_NOT_TCP) || BENCH_STOP_AFTER_LOOKUP)
		return 0;
	/* A connection that carried plaintext HTTP is no TLS library's: no lookup on that path. */
	struct tls_call *call = (ci->flags & (CONN_HTTP | CONN_TLS)) == CONN_HTTP
					? NULL
					: current_tls_call();
	if (!call && direction == SEAM_DIR_EGRESS && (ci->flags & CONN_TLS) && ret > 0)
		claim_pending_write(ci, sk, pid, pid_tgid, now);
	if (call || (ci->flags & CONN_TLS))
		return on_ciphertext(ci, call, sk, pid, pid_tgid, ret, direction);
	if (ci->flags & CONN_OPAQUE)
		return 0;
	if (ret == 0) {
		/* end of stream: the peer will send nothing more on this connection */
		if (direction == SEAM_DIR_INGRESS)
			report_close(ci, pid, pid_tgid);
		return 0;
	}
	struct io_args args = {};
	caller_io(&args);
	if (args.kind == IO_NOBUF && !(ci->flags & CONN_HTTP))
		return 0;
	if (node)
		node_snapshot(pid);
	return on_payload(ci, sk, pid, pid_tgid, &args, ret, direction, 0, began, now);
}

/* tp_btf arguments: (const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
 * int size_goal). Fires for each chunk tcp_sendmsg queues, the first before any byte leaves
 * (recent kernels: 6.18 has it, 6.12 not). */
SEC("tp_btf/tcp_sendmsg_locked")
int on_send_begin(__u64 *ctx)
{
	if (BENCH_STOP_AT_HOOK)
		return 0;
	arm_send(ctx[0], 0, 0);
	return 0;
}

/* Whether a TCP segment on its way to a device carries bytes past its headers (not a bare
 * SYN or ACK, which a thread also sends, connecting or reading). */
static __always_inline int carries_payload(struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	unsigned char *th = head + BPF_CORE_READ(skb, transport_header);
	__u8 doff = 0;
	if (bpf_probe_read_kernel(&doff, 1, th + 12))
		return 0;
	long headers = (long)(th - BPF_CORE_READ(skb, data)) + (doff >> 4) * 4;
	return (long)BPF_CORE_READ(skb, len) > headers;
}

/* tp_btf argument: (struct sk_buff *skb). Where tcp_sendmsg_locked has no tracepoint: a send's
 * first data segment queued to a device, still before a loopback peer can read it. A thread also
 * pushes out older bytes (from ACK processing in its reads, say), so the mark keeps how far the
 * stream reached and a send takes it only if that is past where the send started. */
SEC("tp_btf/net_dev_queue")
int on_xmit(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	struct sock *sk = BPF_CORE_READ(skb, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP || !carries_payload(skb))
		return 0;
	arm_send((__u64)sk, BPF_CORE_READ((struct tcp_sock *)sk, write_seq), 1);
	return 0;
}

/* tp_btf arguments: (struct sock *sk, int ret, int flags). */
SEC("tp_btf/sock_send_length")
int on_send(__u64 *ctx)
{
	if (BENCH_STOP_AT_HOOK)
		return 0;
	return on_sock_io((struct sock *)ctx[0], (int)ctx[1], (int)ctx[2], SEAM_DIR_EGRESS);
}

SEC("tp_btf/sock_recv_length")
int on_recv(__u64 *ctx)
{
	if (BENCH_STOP_AT_HOOK)
		return 0;
	return on_sock_io((struct sock *)ctx[0], (int)ctx[1], (int)ctx[2], SEAM_DIR_INGRESS);
}

/* connect() by a target, in its own context: while ctxprop injects, the socket is marked so
 * ctxprop's sockops takes it into the sockhash once established. */
static __always_inline void mark_for_injection(struct sock *sk)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u32 *target = bpf_map_lookup_elem(&seam_targets, &pid);
	if (!target || !seam_prop_epoch())
		return;
	struct seam_prop_sock *ps =
		bpf_sk_storage_get(&seam_prop_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (ps)
		ps->mark = 1 | (*target & SEAM_OVERRIDE_MASK); /* with its selector's override */
}

/* tp_btf arguments: (const struct sock *sk, int oldstate, int newstate). A socket reaching
 * TCP_CLOSE ends its connection; its address may be reused by the next one. */
SEC("tp_btf/inet_sock_set_state")
int on_state(__u64 *ctx)
{
	if ((int)ctx[2] == TCP_SYN_SENT) {
		mark_for_injection((struct sock *)ctx[0]);
		return 0;
	}
	if ((int)ctx[2] != TCP_CLOSE)
		return 0;
	__u64 key = ctx[0];
	struct conn_info *ci = bpf_map_lookup_elem(&seam_conns, &key);
	if (!ci)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	report_close(ci, pid_tgid >> 32, pid_tgid);
	serving_end(ci, ci->open_reqs, seam_prop_epoch());
	bpf_map_delete_elem(&seam_conns, &key);
	return 0;
}

/* The socket of a mapping, if its connection is still the one the mapping was learned on. */
static __always_inline __u64 live_socket(struct tls_sock *m)
{
	if (!m)
		return 0;
	__u64 sk = m->sk & ~TLS_SOCK_OWN_IO;
	struct conn_info *ci = bpf_map_lookup_elem(&seam_conns, &sk);
	return ci && ci->conn_id == m->conn_id ? sk : 0;
}

/* The connection an SSL object belongs to: the socket used inside this call; else, for a library
 * that does its own socket I/O, the one it used before (a record it buffered); else (a memory-BIO
 * library decrypting what the thread just read, like Node) the TLS socket the thread read last,
 * which also catches an SSL object reallocated for a new connection; else the one known, if its
 * connection lives on. 0 when none is sure. */
static __always_inline __u64 tls_socket(struct tls_call *call, __u32 pid, __u32 tid)
{
	struct tls_key key = {.ssl = call->ssl, .pid = pid};
	struct tls_sock *found = bpf_map_lookup_elem(&seam_tls_socks, &key);
	__u64 sk = call->sk;
	__u64 own = TLS_SOCK_OWN_IO;
	if (!sk) {
		if (found && (found->sk & TLS_SOCK_OWN_IO))
			return live_socket(found);
		__u64 *last = call->direction == SEAM_DIR_INGRESS
				      ? bpf_map_lookup_elem(&seam_tls_last_read, &tid)
				      : NULL;
		if (!last)
			return live_socket(found);
		sk = *last;
		own = 0;
	}
	struct conn_info *ci = bpf_map_lookup_elem(&seam_conns, &sk);
	if (!ci)
		return 0;
	struct tls_sock value = {.sk = sk | own, .conn_id = ci->conn_id};
	if (!found || found->sk != value.sk || found->conn_id != value.conn_id)
		bpf_map_update_elem(&seam_tls_socks, &key, &value, BPF_ANY);
	return sk;
}

/* The attach cookie says which function fired. These programs are attached with uprobe_multi
 * links (CAP_BPF + CAP_PERFMON; a perf-event uprobe needs CAP_SYS_ADMIN), so the loader loads
 * them apart from the rest of this object. */
#define TLS_COOKIE_EGRESS 1
#define TLS_COOKIE_EX 2
#define TLS_COOKIE_HANDSHAKE 4

/* OpenSSL's SSL_read(ssl, buf, num) and SSL_write(ssl, buf, num) return the bytes moved;
 * SSL_read_ex/SSL_write_ex(ssl, buf, num, size_t *moved) return 1 and store them. A write on a
 * known connection is reported here, before its bytes leave: a peer on this host may otherwise
 * read and answer it before the writer's later hooks run (it preempts the writer on wake-up). */
SEC("uprobe")
int tls_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if (!is_target(pid))
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct tls_call call = {
		.ssl = ctx->di,
		.buf = ctx->si,
		.num = ctx->dx,
		.len_out = (cookie & TLS_COOKIE_EX) ? ctx->cx : 0,
		.direction = (cookie & TLS_COOKIE_HANDSHAKE) ? TLS_HANDSHAKE
			     : (cookie & TLS_COOKIE_EGRESS) ? SEAM_DIR_EGRESS
							    : SEAM_DIR_INGRESS,
	};
	if (call.direction == SEAM_DIR_EGRESS) {
		struct tls_key key = {.ssl = call.ssl, .pid = pid};
		__u64 sk = live_socket(bpf_map_lookup_elem(&seam_tls_socks, &key));
		struct conn_info *ci = sk ? bpf_map_lookup_elem(&seam_conns, &sk) : NULL;
		if (ci && !(ci->flags & CONN_NOT_TCP))
			report_tls_write(ci, &call, (struct sock *)sk, pid, pid_tgid,
					 TLS_BEFORE_SEND);
	}
	call.active = 1;
	struct tls_call *slot = bpf_task_storage_get(&seam_tls_calls, bpf_get_current_task_btf(), 0,
						     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (slot)
		*slot = call;
	return 0;
}

/* Holds a request or response start written on a connection not known yet (see
 * seam_tls_pending); continuations of such a message cannot be placed and are dropped. */
static __always_inline void hold_write(struct tls_call *call, __u64 moved, __u32 pid,
				       __u64 pid_tgid)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	if (!s)
		return;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	struct io_args args = {.ptr = call->buf, .len = moved, .fd = -1, .kind = IO_FLAT};
	__u32 captured = capture_payload(s, &args, moved);
	if (captured < 8 || !looks_like_http_start(s->payload))
		return;
	__u64 now = bpf_ktime_get_ns();
	s->ev.kind = SEAM_EV_DATA;
	s->ev.direction = SEAM_DIR_EGRESS;
	s->ev.flags = SEAM_DATA_HTTP_START | SEAM_DATA_TLS;
	s->ev.start_ns = s->ev.end_ns = now;
	s->ev.pid = pid;
	s->ev.tid = (__u32)pid_tgid;
	s->ev.fd = -1;
	s->ev.bytes = (__u32)moved;
	s->ev.captured = captured;
	if (moved > captured)
		read_tail(s, (const __u8 *)call->buf, moved);
	s->held_ssl = call->ssl;
	s->held_ns = now;
	bpf_map_update_elem(&seam_tls_pending, &pid_tgid, s, BPF_ANY);
}

SEC("uretprobe")
int tls_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *found = current_tls_call();
	if (!found)
		return 0;
	struct tls_call call = *found;
	found->active = 0;
	__s64 ret = (int)ctx->ax;
	__u32 pid = pid_tgid >> 32;
	if (call.direction == TLS_HANDSHAKE) {
		if (call.sk)
			tls_socket(&call, pid, (__u32)pid_tgid);
		return 0;
	}
	int ok = call.len_out ? ret == 1 : ret > 0;
	if (call.reported) {
		tls_socket(&call, pid, (__u32)pid_tgid); /* learn the socket for later calls */
		if (!ok) {
			struct tls_key key = {.ssl = call.ssl, .pid = pid};
			__u8 one = 1;
			bpf_map_update_elem(&seam_tls_retry, &key, &one, BPF_ANY);
		}
		return 0;
	}
	__u64 moved = 0;
	if (!ok)
		return 0;
	if (call.len_out) {
		if (bpf_probe_read_user(&moved, sizeof(moved), (void *)call.len_out) != 0)
			return 0;
	} else {
		moved = ret;
	}
	if (moved == 0 || moved > 0x7fffffff)
		return 0;
	__u64 sk = tls_socket(&call, pid, (__u32)pid_tgid);
	if (!sk && call.direction == SEAM_DIR_EGRESS && !call.sk) {
		hold_write(&call, moved, pid, pid_tgid);
		return 0;
	}
	if (!sk)
		return 0;
	struct conn_info *ci = bpf_map_lookup_elem(&seam_conns, &sk);
	if (!ci || (ci->flags & (CONN_NOT_TCP | CONN_OPAQUE)))
		return 0;
	ci->flags |= CONN_TLS;
	struct io_args args = {.ptr = call.buf, .len = moved, .fd = -1, .kind = IO_FLAT};
	/* a write that sent nothing itself (a memory BIO: Node's) leaves after this */
	__u8 before = call.direction == SEAM_DIR_EGRESS && !call.sk ? TLS_BEFORE_SEND : 0;
	__u64 now = bpf_ktime_get_ns();
	if ((__u32)pid_tgid == pid)
		node_snapshot(pid); /* a Node main thread's plaintext: its ids place it, as a socket's */
	return on_payload(ci, (struct sock *)sk, pid, pid_tgid, &args, moved, call.direction,
			  SEAM_DATA_TLS | before, now, now);
}

/* Node keeps its async context in AsyncHooks, a C++ object of the main thread's Environment: three
 * AliasedBuffers of the same isolate in a row (the id stack, the hook counts, the id fields),
 * each { isolate, count, byte offset, data, ... }. The id fields are the one of 4 doubles
 * (execution id, trigger id, id counter, default trigger id), Node's layout since version 8;
 * the one found is checked against those meanings before it is used. */
#define NODE_HOOKS_WORDS 32
/* An AliasedBuffer's size in words: 7 since Node 18 (an index pointer), 6 before. */
#define NODE_BUFFER_WORDS 7
#define NODE_ID_FIELDS 4
#define NODE_MINUS_ONE 0xbff0000000000000ULL /* -1.0: no default trigger set */
#define NODE_SIGN 0x8000000000000000ULL

/* node::AsyncHooks::push_async_context(this, ...), attached for one process until it has been
 * seen once: finds the id fields from `this` and keeps their address for the capture. Only the
 * main thread's: worker threads have Environments of their own. */
SEC("uprobe")
int node_learn(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if ((__u32)pid_tgid != pid || bpf_map_lookup_elem(&seam_node_rt, &pid))
		return 0;
	__u64 w[NODE_HOOKS_WORDS];
	if (bpf_probe_read_user(w, sizeof(w), (const void *)ctx->di) != 0)
		return 0;
	__u64 fields = 0;
	/* unrolled: constant indices keep the verifier's work linear */
#pragma unroll
	for (int o = NODE_BUFFER_WORDS; o + 3 < NODE_HOOKS_WORDS; o++) {
		if (!fields && w[o + 1] == NODE_ID_FIELDS && w[o + 2] == 0 && w[o] != 0 &&
		    w[o + 3] != 0 && (w[o] == w[o - NODE_BUFFER_WORDS] || w[o] == w[o - NODE_BUFFER_WORDS + 1]))
			fields = w[o + 3];
	}
	__u64 f[NODE_ID_FIELDS];
	if (!fields || bpf_probe_read_user(f, sizeof(f), (const void *)fields) != 0)
		return 0;
	/* ids are non-negative, the counter has counted, the default trigger is -1 or an id */
	if ((f[0] | f[1] | f[2]) & NODE_SIGN || f[2] == 0 ||
	    (f[3] != NODE_MINUS_ONE && (f[3] & NODE_SIGN)))
		return 0;
	struct seam_node_rt rt = {.fields = fields, .learned_at = f[2]};
	__u32 *target = bpf_map_lookup_elem(&seam_targets, &pid);
	if (!target || bpf_map_update_elem(&seam_node_rt, &pid, &rt, BPF_NOEXIST) != 0)
		return 0;
	*target |= SEAM_TARGET_NODE; /* the capture reads the fields from now on */
	return 0;
}

/* libuv's uv_stream_t.accepted_fd (libuv 1.x's public layout on 64-bit Linux). */
#define UV_ACCEPTED_FD_OFFSET 0xec
/* uv_stream_t's io_watcher.fd (libuv's public ABI on x86_64, unix): the stream's socket. */
#define UV_STREAM_FD_OFFSET 0xb8

/* The kernel socket behind fd of the current process, if fd is a TCP socket. */
static __always_inline struct sock *tcp_sock_of_fd(int fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (fd < 0 || !fdt || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) != 0 || !f)
		return NULL;
	unsigned short mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *sock = (struct socket *)BPF_CORE_READ(f, private_data);
	struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : NULL;
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return NULL;
	return sk;
}

/* A setup callback in progress on a Node main thread: what it sets up (the accepted socket's
 * address, or the conn_id whose handshake ends), and the last async id before it ran. */
struct node_accepting {
	__u64 before;
	__u64 key;
	__u32 phase; /* enum seam_node_setup_phase */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid: main threads only */
	__type(value, struct node_accepting);
} seam_node_accepting SEC(".maps");

static __always_inline int node_last_id(struct seam_node_rt *rt, __u64 *out)
{
	return bpf_probe_read_user(out, sizeof(*out), (const void *)(rt->fields + 2 * sizeof(__u64)));
}

/* OpenSSL's SSL_CB_HANDSHAKE_DONE, in the `where` of an info callback. */
#define SSL_CB_HANDSHAKE_DONE 0x20

/* The socket an accepted connection's uv stream (OnConnection's server argument) holds. */
static __always_inline __u64 accepted_socket(__u64 server)
{
	__s32 fd = -1;
	if (bpf_probe_read_user(&fd, sizeof(fd), (const void *)(server + UV_ACCEPTED_FD_OFFSET)) != 0)
		return 0;
	return (__u64)tcp_sock_of_fd(fd);
}

/* The accepted connection whose TLS handshake a main thread finishes: Node decrypts what it just
 * read, so it is the TLS socket the thread read last, if its setup is still waiting for it. */
static __always_inline __u64 securing_conn(__u32 tid)
{
	__u64 *sk = bpf_map_lookup_elem(&seam_tls_last_read, &tid);
	struct conn_info *ci = sk ? bpf_map_lookup_elem(&seam_conns, sk) : NULL;
	if (!ci || !bpf_map_lookup_elem(&seam_node_setups, &ci->conn_id))
		return 0;
	return ci->conn_id;
}

/* Two callbacks set a connection up, and entry and return bound the async ids each allocated:
 * node::ConnectionWrap<TCPWrap>::OnConnection(server, status) (cookie SEAM_NODE_ACCEPTED), where
 * libuv accepted it and Node makes its socket (and TLS wrap, and a plain server's HTTP parser)
 * before the next accept; and, for TLS, node::crypto::TLSWrap::SSLInfoCallback(ssl, where, ret)
 * (cookie SEAM_NODE_SECURED) at the handshake's end, where an HTTPS server makes its parser. */
SEC("uprobe")
int node_accept_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if ((__u32)pid_tgid != pid)
		return 0;
	struct node_accepting a = {.phase = bpf_get_attach_cookie(ctx)};
	/* the info callback runs a score of times a handshake, and only its end matters */
	if (a.phase == SEAM_NODE_SECURED && !((int)ctx->si & SSL_CB_HANDSHAKE_DONE))
		return 0;
	struct seam_node_rt *rt = bpf_map_lookup_elem(&seam_node_rt, &pid);
	if (a.phase == SEAM_NODE_SECURED) {
		if (!rt)
			return 0;
		a.key = securing_conn(pid);
	} else {
		/* Not found yet: this connection's callback is what will find them (the process
		 * waited for it idle), so the return bounds its ids from there (before stays 0). */
		if ((int)ctx->si != 0 || (!rt && !is_target(pid)))
			return 0;
		a.key = accepted_socket(ctx->di);
	}
	if (!a.key || (rt && node_last_id(rt, &a.before) != 0))
		return 0;
	bpf_map_update_elem(&seam_node_accepting, &pid, &a, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int node_accept_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	struct node_accepting *a = bpf_map_lookup_elem(&seam_node_accepting, &pid);
	/* the info callback runs a score of times a handshake: only its own entry's slot is taken */
	if (!a || a->phase != bpf_get_attach_cookie(ctx))
		return 0;
	struct node_accepted v = {.acc = {.before = a->before, .phase = a->phase}, .pid = pid};
	__u64 key = a->key;
	bpf_map_delete_elem(&seam_node_accepting, &pid);
	struct seam_node_rt *rt = bpf_map_lookup_elem(&seam_node_rt, &pid);
	if (!rt || node_last_id(rt, &v.acc.after) != 0)
		return 0;
	/* found during this callback: the counter then was this connection's socket's id (made
	 * just before the callback), and the ids since are its setup's too */
	if (!v.acc.before) {
		v.acc.before = rt->learned_at;
		v.acc.learned = 1;
	}
	if (v.acc.phase != SEAM_NODE_SECURED) {
		bpf_map_update_elem(&seam_node_accepted, &key, &v, BPF_ANY);
		return 0;
	}
	struct node_setup *su = bpf_map_lookup_elem(&seam_node_setups, &key);
	__u64 before, after;
	if (!su || !node_setup_range(&v.acc, &before, &after))
		return 0;
	su->secured_before = before;
	su->secured_after = after;
	report_node_accept(key, &v.acc);
	return 0;
}

/* node::TCPWrap::New, JS's `new TCP()`: a TCP socket object is being made. Its async id will be
 * the counter's next value (the wrap's constructor allocates it first); the ids now say whose
 * callback makes it, so the correlator can tell which request a client socket was opened for.
 * Sockets made inside OnConnection (accepted ones) are that connection's setup: not reported. */
SEC("uprobe")
int node_socket_new(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if ((__u32)pid_tgid != pid || bpf_map_lookup_elem(&seam_node_accepting, &pid))
		return 0;
	struct seam_node_rt *rt = bpf_map_lookup_elem(&seam_node_rt, &pid);
	if (!rt)
		return 0;
	struct seam_event ev = {};
	if (node_read_ids(rt, &ev.async) != 0)
		return 0;
	ev.kind = SEAM_EV_NODE_SOCKET;
	ev.pid = pid;
	ev.tid = pid;
	ev.fd = -1;
	ev.start_ns = ev.end_ns = bpf_ktime_get_ns();
	output(&ev, sizeof(ev));
	struct node_req_ref req;
	__u64 last = node_id(ev.async.last_id);
	if (last && seam_prop_epoch() && node_turn_request(pid, &ev.async, &req)) {
		struct node_made_key key = {.pid = pid, .id = last + 1};
		bpf_map_update_elem(&seam_node_made, &key, &req, BPF_ANY);
	}
	return 0;
}

/* libuv's uv__try_write(stream, bufs, nbufs, send_handle), where every stream write of a Node
 * process makes its write/writev/sendmsg call: attached per Node target, only while ctxprop
 * injects. As a main thread's send begins, the request it works for (the turn rule, or the
 * request its socket was made for when this is the socket's first request) is put where ctxprop's
 * sk_msg, which runs inside the send, finds it; else that place is cleared. */
SEC("uprobe")
int node_send_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if ((__u32)pid_tgid != pid)
		return 0;
	struct seam_node_rt *rt = bpf_map_lookup_elem(&seam_node_rt, &pid);
	__u32 epoch = seam_prop_epoch();
	if (!rt || !epoch)
		return 0;
	int fd = -1;
	if (bpf_probe_read_user(&fd, sizeof(fd), (const void *)(ctx->di + UV_STREAM_FD_OFFSET)) != 0)
		goto none;
	struct sock *sk = tcp_sock_of_fd(fd);
	if (!sk)
		goto none;
	__u64 key = (__u64)sk;
	struct conn_info *ci = bpf_map_lookup_elem(&seam_conns, &key);
	/* ciphertext: its requests get their context at SSL_write; a connection that received
	 * requests is a server's, and what it writes are responses */
	if (ci && ((ci->flags & CONN_TLS) || (ci->open_reqs && ci->epoch == epoch)))
		goto none;
	struct seam_async a = {};
	if (node_read_ids(rt, &a) != 0)
		goto none;
	struct seam_node_choice choice;
	if (!node_choose(pid, &a, !ci || !(ci->flags & CONN_HTTP),
			 BPF_CORE_READ(sk, __sk_common.skc_num), epoch, &choice))
		goto none;
	bpf_map_update_elem(&seam_node_choice, &pid, &choice, BPF_ANY);
	return 0;
none:
	bpf_map_delete_elem(&seam_node_choice, &pid);
	return 0;
}

/* A new process forked by a target is a target from its first instruction: short-lived children
 * (a shell running curl) would otherwise be gone before discover's next scan. */
SEC("raw_tracepoint/sched_process_fork")
int on_process_fork(void *ctx)
{
	/* args: (struct task_struct *parent, struct task_struct *child); read as plain u64s because
	 * CO-RE on the context's flexible array rejects the whole object. */
	__u64 *args = ctx;
	struct task_struct *child = (struct task_struct *)args[1];
	__u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 *flags = bpf_map_lookup_elem(&seam_targets, &parent_tgid);
	if (!flags)
		return 0;
	__s32 pid = BPF_CORE_READ(child, pid);
	__s32 tgid = BPF_CORE_READ(child, tgid);
	if (pid == tgid) {
		/* a new process; a new thread is covered by its process already */
		__u32 child_tgid = tgid;
		__u32 inherited = *flags | SEAM_TARGET_INHERITED;
		bpf_map_update_elem(&seam_targets, &child_tgid, &inherited, BPF_NOEXIST);
	}
	/* Tell user space who created whom: work handed to a new thread stays with its request. */
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	if (!s)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->ev.kind = SEAM_EV_SPAWN;
	s->ev.pid = parent_tgid;
	s->ev.tid = (__u32)pid_tgid;
	s->ev.bytes = (__u32)pid;
	s->ev.start_ns = s->ev.end_ns = bpf_ktime_get_ns();
	emit(s, 0);
	return 0;
}

/* Names a target after exec, so a short-lived child (curl) is known even after it is gone. */
SEC("raw_tracepoint/sched_process_exec")
int on_process_exec(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if (!is_target(pid))
		return 0;
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	if (!s)
		return 0;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->ev.kind = SEAM_EV_EXEC;
	s->ev.pid = pid;
	s->ev.tid = (__u32)pid_tgid;
	s->ev.start_ns = s->ev.end_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(s->payload, SEAM_COMM_LEN);
	s->ev.captured = SEAM_COMM_LEN;
	emit(s, SEAM_COMM_LEN);
	return 0;
}

/* Every exiting thread of a target is reported (a thread created for one request proves it was
 * dedicated to it by ending with it); a target whose main thread exits leaves the target set. */
SEC("raw_tracepoint/sched_process_exit")
int on_process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if (!is_target(pid))
		return 0;
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	if (s) {
		__builtin_memset(&s->ev, 0, sizeof(s->ev));
		s->ev.kind = SEAM_EV_EXIT;
		s->ev.pid = pid;
		s->ev.tid = (__u32)pid_tgid;
		s->ev.start_ns = s->ev.end_ns = bpf_ktime_get_ns();
		emit(s, 0);
	}
	__u32 tid = (__u32)pid_tgid;
	bpf_map_delete_elem(&seam_serving, &tid);
	bpf_map_delete_elem(&seam_tls_pending, &pid_tgid);
	bpf_map_delete_elem(&seam_tls_last_read, &tid);
	if (tid == pid)
		bpf_map_delete_elem(&seam_targets, &pid);
	return 0;
}

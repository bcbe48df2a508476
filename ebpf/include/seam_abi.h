/* Layouts shared by seam's eBPF programs and its Rust daemons (mirrored in ebpf/abi/src/lib.rs). */
#ifndef SEAM_ABI_H
#define SEAM_ABI_H

#include <linux/types.h>

/* Largest payload prefix one event can carry; the configured prefix is at most this. */
#define SEAM_MAX_CAPTURE 4096
/* Bytes from the end of a write/read kept on every HTTP event (to see a chunked terminator). */
#define SEAM_TAIL_LEN 16
#define SEAM_COMM_LEN 16

enum seam_event_kind {
	SEAM_EV_DATA = 1,
	SEAM_EV_CLOSE = 2,
	SEAM_EV_EXEC = 3, /* a target exec'd; payload is its new comm (16 bytes) */
	SEAM_EV_SPAWN = 4, /* a target's thread (tid) created a thread or process; `bytes` is its tid */
	SEAM_EV_EXIT = 5,  /* a target's thread (tid) exited */
	SEAM_EV_NODE_ACCEPT = 8, /* a Node main thread set up the connection conn_id it accepted,
				  * or finished its TLS handshake (payload: struct seam_node_accept) */
	SEAM_EV_NODE_SOCKET = 9, /* a Node main thread is making a TCP socket object, whose async id
				  * is async.last_id + 1; async holds the ids of the callback making it */
};

enum seam_direction {
	SEAM_DIR_INGRESS = 0, /* the process read these bytes */
	SEAM_DIR_EGRESS = 1,  /* the process wrote these bytes */
};

enum seam_role {
	SEAM_ROLE_UNKNOWN = 0,   /* user space tells the side from who sends requests */
	SEAM_ROLE_ACCEPTED = 1,  /* came from accept(): this process is the server */
	SEAM_ROLE_CONNECTED = 2, /* came from connect(): this process is the client */
};

enum seam_data_flags {
	SEAM_DATA_HTTP_START = 1, /* payload begins with an HTTP/1.x request or status line */
	SEAM_DATA_TLS = 2,        /* plaintext read at the TLS library's boundary (SSL_read/SSL_write) */
	SEAM_DATA_CONTEXT = 4,    /* a struct seam_injected follows the captured bytes: the context
				   * this request went out with (kind CHILD or ROOT), or came with in
				   * a TCP option (kind REMOTE, span_id = the caller's) */
};

struct seam_tuple {
	__u8 local_addr[16]; /* IPv4: first 4 bytes */
	__u8 remote_addr[16];
	__u16 local_port; /* host byte order */
	__u16 remote_port;
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 pad;
};

/* Node's async context on its main thread at a socket call: the first three of AsyncHooks'
 * async_id_fields (doubles, as their bits) and how many socket reads the thread had made. */
struct seam_async {
	__u64 exec_id;    /* executionAsyncId: the resource whose callback runs */
	__u64 trigger_id; /* triggerAsyncId: the resource that caused that one */
	__u64 last_id;    /* the last async id allocated */
	__u32 read_seq;
	__u32 valid; /* 1 when the fields above were read */
};

/* seam_node_accept.phase: which callback of a connection's setup. */
enum seam_node_setup_phase {
	SEAM_NODE_ACCEPTED = 0, /* the accepted connection's callback (its socket, TLS wrap, parser) */
	SEAM_NODE_SECURED = 1,  /* its TLS handshake's end (an HTTPS server makes its parser there) */
};

/* Async ids a Node connection's setup allocated in one callback: those in (before, after], and
 * `before` itself when `learned` is 1. */
struct seam_node_accept {
	__u64 before; /* bits of the last async id before the callback */
	__u64 after;  /* bits of the last async id when that callback returned */
	__u32 learned; /* 1: the fields were found in this callback, and `before` is the counter then:
			* the connection's socket's own id (made just before the callback ran) */
	__u32 phase;   /* enum seam_node_setup_phase */
};

/* A Node process whose main thread's async context the capture reads: where AsyncHooks keeps
 * async_id_fields (found by node_learn), and how many socket reads that thread has made. A read
 * starts each libuv callback that reads a socket, so two calls with the same count ran in the
 * same turn: no socket read came between them. Kept by the capture, read by the loader. */
struct seam_node_rt {
	__u64 fields;
	__u64 learned_at; /* bits of the id counter when the fields were found */
	__u32 read_seq;
	__u32 pad;
};

struct seam_event {
	__u64 conn_id;  /* unique per connection seen, never reused while seam runs */
	__u64 start_ns; /* CLOCK_MONOTONIC when the bytes were sent or received */
	__u64 end_ns;   /* same as start_ns for socket-layer events */
	__u32 pid;      /* tgid */
	__u32 tid;
	__s32 fd;       /* -1 when the calling syscall has no fd argument seam knows */
	__u32 bytes;    /* bytes the syscall moved */
	__u32 captured; /* payload bytes that follow this header */
	__u8 kind;
	__u8 direction;
	__u8 role;
	__u8 flags;
	struct seam_tuple tuple;
	__u32 tail_len;
	__u8 tail[SEAM_TAIL_LEN];
	__u32 pad;
	struct seam_async async; /* Node targets' main thread only; zero elsewhere */
	/* followed by `captured` payload bytes */
};

/* Values in the targets map. */
enum seam_target_flags {
	SEAM_TARGET_SELECTED = 1,  /* chosen by discover */
	SEAM_TARGET_INHERITED = 2, /* forked by a target */
	SEAM_TARGET_NODE = 4,      /* a Node process whose async id fields are in seam_node_rt */
};

/* Context carriers (context_propagation). A target's value may carry its selector's override in
 * bits 8-15 as carriers + 1 (0: none, follow ctxprop's default); a forked child copies it, and
 * the capture copies it into the mark of each socket the target connects. */
#define SEAM_CARRIER_HEADER 1
#define SEAM_CARRIER_TCP_OPTION 2
#define SEAM_OVERRIDE_SHIFT 8
#define SEAM_OVERRIDE_MASK 0xff00

/* Per-CPU counters the correlator reads to report what the kernel side dropped. */
enum seam_counter {
	SEAM_CNT_RINGBUF_FULL = 0, /* events lost because the ring buffer was full */
	SEAM_CNT_EVENTS = 1,       /* events written */
	SEAM_CNT_MAX = 2,
};

/* What ctxprop's sk_msg program put on the wire for one outgoing request, handed through the
 * socket's storage to the capture's send hook, which reports it with the request's event. */
enum seam_injected_kind {
	SEAM_INJ_TAKEN = 0, /* a seam_remote_ctx entry the capture has taken: it holds nothing */
	SEAM_INJ_CHILD = 1, /* child of the one server request the sending thread works for, or of
			     * the request a Node main thread's call was found to work for */
	SEAM_INJ_ROOT = 2,  /* the thread works for no request, or for several: a new trace */
	SEAM_INJ_REMOTE = 3, /* read from a peer's TCP option */
};

/* The TCP-option carrier (the layout OBI uses): kind 25, then 16 bytes of trace id and 8 of span
 * id; sampled is implied, and a 27-byte form adds a flags byte for an unsampled context. */
#define SEAM_TCP_OPT_KIND 25
#define SEAM_TCP_OPT_LEN 26
#define SEAM_TCP_OPT_LEN_FLAGS 27

struct seam_injected {
	__u8 trace_id[16];
	__u8 span_id[8]; /* the client span's id: the callee's parent */
	__u8 flags;
	__u8 kind;
	__u16 local_port; /* host byte order: which of the thread's connections */
	__u32 epoch; /* SEAM_INJ_REMOTE: the ctxprop run that read it (see seam_prop_on) */
};

/* A connection a target opened, while ctxprop propagates, in the socket's own storage: the
 * capture creates it at connect() (its presence marks the socket for ctxprop), and each request's
 * handoffs (sk_msg to the capture's report, sk_msg to sockops' option) are fields here rather
 * than hash-map updates, which cost more than the rest of the request's work together. */
#define SEAM_PENDING_REPORT 1 /* ctx went out with the request being sent: the capture reports it */
#define SEAM_PENDING_OPTION 2 /* ctx goes in the TCP option of the next data segment */

struct seam_prop_sock {
	__u32 mark;     /* 1 | the target's selector override (SEAM_OVERRIDE_MASK) */
	__u32 use;      /* carriers ctxprop applies, set once established (0: none) */
	__u32 opaque;   /* never touch this connection again */
	__u32 pending;  /* SEAM_PENDING_* */
	__u64 skip;     /* body bytes of the current request still to pass */
	struct seam_injected ctx;
	__u64 cookie;   /* its key in ctxprop's sockhash (sk_msg cannot ask for it) */
};

/* Per thread: the server request it works for, kept by the capture for ctxprop's injection. */
enum seam_serving_state {
	SEAM_CTX_NONE = 0,      /* no valid incoming traceparent (yet): a trace is made at the first call */
	SEAM_CTX_HEADER = 1,    /* continues the request's valid traceparent */
	SEAM_CTX_GENERATED = 2, /* a trace made by the first injected call */
	SEAM_CTX_AMBIGUOUS = 3, /* several requests overlapped on the thread: calls are new traces */
};

struct seam_serving {
	__u8 trace_id[16];
	__u8 flags;
	__u8 state;
	__u16 open; /* requests this thread received and not answered yet */
	__u32 epoch; /* the ctxprop run that counted them (see seam_prop_on) */
};

/* Per Node main thread: the server request its next send works for, chosen by the capture as the
 * send's syscall begins (Node's async ids are in user memory, which ctxprop's sk_msg cannot read)
 * and taken by ctxprop's sk_msg for that send. */
struct seam_node_choice {
	__u8 trace_id[16];
	__u8 flags;
	__u8 state;       /* SEAM_CTX_HEADER or SEAM_CTX_GENERATED */
	__u16 local_port; /* host byte order: the socket being written */
	__u32 epoch;      /* the ctxprop run it was chosen under */
};

/* What ctxprop runs with, for the capture's TLS path (ctxprop writes it before each epoch). */
struct seam_prop_rule {
	__u64 sample_threshold; /* a new trace is sampled when its id's low 63 bits are below this */
	__u32 follow_parent;    /* a header's sampled flag is kept */
	__u32 carriers;         /* the default carriers (a target's override wins) */
};

_Static_assert(sizeof(struct seam_prop_rule) == 16, "seam_prop_rule layout");
_Static_assert(sizeof(struct seam_injected) == 32, "seam_injected layout");
_Static_assert(sizeof(struct seam_prop_sock) == 64, "seam_prop_sock layout");
_Static_assert(sizeof(struct seam_serving) == 24, "seam_serving layout");
_Static_assert(sizeof(struct seam_node_choice) == 24, "seam_node_choice layout");
_Static_assert(sizeof(struct seam_tuple) == 40, "seam_tuple layout");
_Static_assert(sizeof(struct seam_async) == 32, "seam_async layout");
_Static_assert(sizeof(struct seam_node_rt) == 24, "seam_node_rt layout");
_Static_assert(sizeof(struct seam_node_accept) == 24, "seam_node_accept layout");
_Static_assert(sizeof(struct seam_event) == 144, "seam_event layout");

#endif

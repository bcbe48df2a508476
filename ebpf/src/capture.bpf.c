// SPDX-License-Identifier: GPL-2.0
/* Syscall-tracepoint capture of TCP traffic of instrumented processes: no kprobes needed. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "seam_abi.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINPROGRESS 115
#define MAX_IOV 4

/* Only the kernel fields seam reads; CO-RE relocates them against the running kernel's BTF. */
struct in6_addr {
	__u8 s6_addr[16];
} __attribute__((preserve_access_index));

struct sock_common {
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
	__u16 sk_type;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	struct files_struct *files;
	__s32 pid;
	__s32 tgid;
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
	__uint(max_entries, 8 * 1024 * 1024);
} seam_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SEAM_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} seam_counters SEC(".maps");

struct conn_key {
	__u32 pid;
	__s32 fd;
};

enum conn_flags {
	CONN_NOT_TCP = 1,
	CONN_HTTP = 2,
};

struct conn_info {
	__u64 conn_id;
	struct seam_tuple tuple;
	__u8 role;
	__u8 flags;
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn_info);
} seam_conns SEC(".maps");

enum io_kind {
	IO_FLAT = 1,    /* read/write/recvfrom/sendto: one buffer */
	IO_IOV = 2,     /* readv/writev: an iovec array */
	IO_MSGHDR = 3,  /* recvmsg/sendmsg: a msghdr */
	IO_NOBUF = 4,   /* sendfile: bytes only */
	IO_ACCEPT = 5,
	IO_CONNECT = 6,
};

struct io_args {
	__u64 start_ns;
	__u64 ptr;
	__u64 len;
	__s32 fd;
	__u8 kind; /* 0: no syscall in flight */
	__u8 direction;
	__u8 pad[2];
};

/* The syscall in flight per thread, from entry to exit. Task storage, not a hash keyed by tid:
 * no bucket lock and no insert/delete on every hooked syscall. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct io_args);
} seam_active SEC(".maps");

static __always_inline struct io_args *active_slot(int create)
{
	return bpf_task_storage_get(&seam_active, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

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
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} seam_scratch SEC(".maps");

/* Syscall tracepoint contexts: 8 bytes of common fields, the syscall nr, then arguments or ret. */
struct sys_enter_ctx {
	__u64 common;
	__s64 nr;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 common;
	__s64 nr;
	__s64 ret;
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

/* Walks fd -> file -> socket -> sock; fills the tuple when fd is a TCP socket. */
static __always_inline int tcp_tuple_of_fd(__s32 fd, struct seam_tuple *t)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = BPF_CORE_READ(task, files);
	if (!files)
		return 0;
	struct fdtable *fdt = BPF_CORE_READ(files, fdt);
	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return 0;
	unsigned short mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return 0;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	t->family = family;
	t->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->remote_port = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		__be32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 r = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(t->local_addr, &l, 4);
		__builtin_memcpy(t->remote_addr, &r, 4);
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&t->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&t->remote_addr, sk, __sk_common.skc_v6_daddr);
	} else {
		return 0;
	}
	return 1;
}

/* Returns the cached connection for (pid, fd), classifying the fd on first sight. */
static __always_inline struct conn_info *conn_lookup(__u32 pid, __s32 fd, __u8 role, int fresh)
{
	struct conn_key key = {.pid = pid, .fd = fd};
	struct conn_info *ci;
	if (!fresh) {
		ci = bpf_map_lookup_elem(&seam_conns, &key);
		if (ci)
			return ci;
	}
	struct conn_info info = {};
	if (tcp_tuple_of_fd(fd, &info.tuple)) {
		info.conn_id = next_conn_id();
		info.role = role;
	} else {
		info.flags = CONN_NOT_TCP;
	}
	bpf_map_update_elem(&seam_conns, &key, &info, BPF_ANY);
	return bpf_map_lookup_elem(&seam_conns, &key);
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

static __always_inline __u64 submit_flags(void)
{
	return bpf_ringbuf_query(&seam_events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										   : BPF_RB_NO_WAKEUP;
}

static __always_inline void emit(struct scratch *s, __u32 captured)
{
	__u64 size = sizeof(struct seam_event) + captured;
	asm volatile("" : "+r"(size));
	if (size > sizeof(struct seam_event) + SEAM_MAX_CAPTURE)
		size = sizeof(struct seam_event) + SEAM_MAX_CAPTURE;
	if (bpf_ringbuf_output(&seam_events, s, size, submit_flags()) == 0)
		count(SEAM_CNT_EVENTS);
	else
		count(SEAM_CNT_RINGBUF_FULL);
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

/* Copies the first bytes of the data the syscall moved, however it was described. */
static __always_inline __u32 capture_payload(struct scratch *s, struct io_args *a, __u64 bytes)
{
	__u64 limit = capture_bytes;
	if (limit > SEAM_MAX_CAPTURE)
		limit = SEAM_MAX_CAPTURE;
	if (limit > bytes)
		limit = bytes;
	if (a->kind == IO_FLAT) {
		/* When the prefix holds every byte, user space takes the tail from it. */
		if (bytes > limit)
			read_tail(s, (const __u8 *)a->ptr, bytes);
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
	__u32 off = 0;
#pragma unroll
	for (int i = 0; i < MAX_IOV; i++) {
		if (i >= iovcnt || off >= limit)
			break;
		struct iovec v = {};
		if (bpf_probe_read_user(&v, sizeof(v), &iov[i]) != 0)
			break;
		__u64 want = limit - off;
		if (v.iov_len < want)
			want = v.iov_len;
		off += copy_user(s, off, v.iov_base, want);
	}
	s->ev.tail_len = 0;
	return off;
}

static __always_inline struct scratch *scratch_for(struct conn_info *ci, __u32 pid, __u64 pid_tgid,
						   struct io_args *a, __u64 end_ns)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&seam_scratch, &zero);
	if (!s)
		return NULL;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->ev.conn_id = ci->conn_id;
	s->ev.start_ns = a->start_ns;
	s->ev.end_ns = end_ns;
	s->ev.pid = pid;
	s->ev.tid = (__u32)pid_tgid;
	s->ev.fd = a->fd;
	s->ev.role = ci->role;
	s->ev.tuple = ci->tuple;
	return s;
}

static __always_inline int on_data_exit(__s64 ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if (!is_target(pid))
		return 0;
	struct io_args *a = active_slot(0);
	if (!a || !a->kind)
		return 0;
	struct io_args args = *a;
	a->kind = 0;
	if (ret <= 0)
		return 0;
	struct conn_info *ci = conn_lookup(pid, args.fd, SEAM_ROLE_UNKNOWN, 0);
	if (!ci || (ci->flags & CONN_NOT_TCP))
		return 0;
	__u64 end_ns = bpf_ktime_get_ns();
	__u8 head[8] = {};
	int start = 0;
	if (args.kind == IO_FLAT) {
		if (ret >= 8 && bpf_probe_read_user(head, sizeof(head), (void *)args.ptr) == 0)
			start = looks_like_http_start(head);
	} else if (args.kind != IO_NOBUF) {
		struct iovec *iov = (struct iovec *)args.ptr;
		if (args.kind == IO_MSGHDR) {
			struct user_msghdr mh = {};
			if (bpf_probe_read_user(&mh, sizeof(mh), (void *)args.ptr) != 0)
				return 0;
			iov = mh.msg_iov;
		}
		struct iovec v = {};
		if (ret >= 8 && bpf_probe_read_user(&v, sizeof(v), iov) == 0 && v.iov_len >= 8 &&
		    bpf_probe_read_user(head, sizeof(head), v.iov_base) == 0)
			start = looks_like_http_start(head);
	}
	if (!start && !(ci->flags & CONN_HTTP))
		return 0;
	if (start)
		ci->flags |= CONN_HTTP;
	struct scratch *s = scratch_for(ci, pid, pid_tgid, &args, end_ns);
	if (!s)
		return 0;
	s->ev.kind = SEAM_EV_DATA;
	s->ev.direction = args.direction;
	s->ev.bytes = (__u32)ret;
	__u32 captured = 0;
	if (start) {
		s->ev.flags = SEAM_DATA_HTTP_START;
		captured = capture_payload(s, &args, ret);
	} else if (args.kind == IO_FLAT) {
		read_tail(s, (const __u8 *)args.ptr, ret);
	}
	s->ev.captured = captured;
	emit(s, captured);
	return 0;
}

static __always_inline int remember(__s32 fd, __u64 ptr, __u64 len, __u8 kind, __u8 direction)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid >> 32))
		return 0;
	struct io_args *a = active_slot(1);
	if (!a)
		return 0;
	a->start_ns = bpf_ktime_get_ns();
	a->ptr = ptr;
	a->len = len;
	a->fd = fd;
	a->kind = kind;
	a->direction = direction;
	return 0;
}

#define DATA_PROBE(name, kind, dir)                                                                \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                                \
	int enter_##name(struct sys_enter_ctx *ctx)                                                \
	{                                                                                          \
		return remember((__s32)ctx->args[0], ctx->args[1], ctx->args[2], kind, dir);       \
	}                                                                                          \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                                 \
	int exit_##name(struct sys_exit_ctx *ctx)                                                  \
	{                                                                                          \
		return on_data_exit(ctx->ret);                                                     \
	}

DATA_PROBE(read, IO_FLAT, SEAM_DIR_INGRESS)
DATA_PROBE(write, IO_FLAT, SEAM_DIR_EGRESS)
DATA_PROBE(recvfrom, IO_FLAT, SEAM_DIR_INGRESS)
DATA_PROBE(sendto, IO_FLAT, SEAM_DIR_EGRESS)
DATA_PROBE(readv, IO_IOV, SEAM_DIR_INGRESS)
DATA_PROBE(writev, IO_IOV, SEAM_DIR_EGRESS)
DATA_PROBE(recvmsg, IO_MSGHDR, SEAM_DIR_INGRESS)
DATA_PROBE(sendmsg, IO_MSGHDR, SEAM_DIR_EGRESS)

/* sendfile(out_fd, in_fd, ...): only the byte count matters; the socket is out_fd. */
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int enter_sendfile64(struct sys_enter_ctx *ctx)
{
	return remember((__s32)ctx->args[0], 0, 0, IO_NOBUF, SEAM_DIR_EGRESS);
}

SEC("tracepoint/syscalls/sys_exit_sendfile64")
int exit_sendfile64(struct sys_exit_ctx *ctx)
{
	return on_data_exit(ctx->ret);
}

static __always_inline int on_open_exit(__s64 ret, __u8 want_kind)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid >> 32))
		return 0;
	struct io_args *a = active_slot(0);
	if (!a || !a->kind)
		return 0;
	__s32 fd = a->fd;
	__u8 kind = a->kind;
	a->kind = 0;
	if (kind != want_kind)
		return 0;
	if (kind == IO_ACCEPT) {
		if (ret < 0)
			return 0;
		conn_lookup(pid_tgid >> 32, (__s32)ret, SEAM_ROLE_ACCEPTED, 1);
	} else {
		if (ret != 0 && ret != -EINPROGRESS)
			return 0;
		conn_lookup(pid_tgid >> 32, fd, SEAM_ROLE_CONNECTED, 1);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_accept")
int enter_accept(struct sys_enter_ctx *ctx)
{
	return remember((__s32)ctx->args[0], 0, 0, IO_ACCEPT, 0);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx->ret, IO_ACCEPT);
}

SEC("tracepoint/syscalls/sys_enter_accept4")
int enter_accept4(struct sys_enter_ctx *ctx)
{
	return remember((__s32)ctx->args[0], 0, 0, IO_ACCEPT, 0);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx->ret, IO_ACCEPT);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct sys_enter_ctx *ctx)
{
	return remember((__s32)ctx->args[0], 0, 0, IO_CONNECT, 0);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx->ret, IO_CONNECT);
}

/* Forgets the fd; tells user space when an HTTP connection ends so open messages can finish. */
static __always_inline int forget_fd(__s32 fd, int report)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if (!is_target(pid))
		return 0;
	struct conn_key key = {.pid = pid, .fd = fd};
	struct conn_info *ci = bpf_map_lookup_elem(&seam_conns, &key);
	if (!ci)
		return 0;
	if (report && (ci->flags & CONN_HTTP)) {
		struct io_args a = {.start_ns = bpf_ktime_get_ns(), .fd = fd};
		struct scratch *s = scratch_for(ci, pid, pid_tgid, &a, a.start_ns);
		if (s) {
			s->ev.kind = SEAM_EV_CLOSE;
			s->ev.direction = 0;
			s->ev.bytes = 0;
			emit(s, 0);
		}
	}
	bpf_map_delete_elem(&seam_conns, &key);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct sys_enter_ctx *ctx)
{
	return forget_fd((__s32)ctx->args[0], 1);
}

/* dup2/dup3 silently close their target fd. */
SEC("tracepoint/syscalls/sys_enter_dup2")
int enter_dup2(struct sys_enter_ctx *ctx)
{
	return forget_fd((__s32)ctx->args[1], 1);
}

SEC("tracepoint/syscalls/sys_enter_dup3")
int enter_dup3(struct sys_enter_ctx *ctx)
{
	return forget_fd((__s32)ctx->args[1], 1);
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
	if (pid != tgid) /* a new thread, already covered by its process */
		return 0;
	__u32 child_tgid = tgid;
	__u32 inherited = *flags | SEAM_TARGET_INHERITED;
	bpf_map_update_elem(&seam_targets, &child_tgid, &inherited, BPF_NOEXIST);
	return 0;
}

/* Names a target after exec, so a short-lived child (curl) is known even after it is gone. */
SEC("tracepoint/sched/sched_process_exec")
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

/* A target whose last thread exits leaves the target set at once. */
SEC("tracepoint/sched/sched_process_exit")
int on_process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	if ((__u32)pid_tgid != pid)
		return 0;
	bpf_map_delete_elem(&seam_targets, &pid);
	return 0;
}

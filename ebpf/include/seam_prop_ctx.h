/* The context an outgoing request carries, chosen the same way by ctxprop's sk_msg (plaintext)
 * and the capture's SSL_write uprobe (TLS, whose plaintext only the library sees). */
#ifndef SEAM_PROP_CTX_H
#define SEAM_PROP_CTX_H

#include "seam_prop_maps.h"
#include "seam_http_head.h"

/* The key of a one-entry array, in .rodata: a key on the stack is a store that a verifier without
 * CAP_PERFMON (ctxprop's) fences against speculation on every run. */
static const __u32 seam_key_zero = 0;

/* The sampled flag of a trace this host starts: the trace id's low 63 bits against the
 * OTEL_TRACES_SAMPLER ratio's threshold (the correlator decides the same way). */
static __always_inline __u8 seam_sampled(const __u8 *trace_id, __u64 threshold)
{
	__u64 low;
	__builtin_memcpy(&low, trace_id + 8, 8);
	return (__builtin_bswap64(low) >> 1) < threshold ? 0x01 : 0x00;
}

/* A new trace id from this host (never all zero); returns its sampled flag. Written where it
 * goes, not through a stack copy (a fenced spill in ctxprop, as above). */
static __always_inline __u8 seam_new_trace(__u8 *trace_id, __u64 threshold)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		seam_store4(trace_id + 4 * i, bpf_get_prandom_u32() | (i == 3));
	return seam_sampled(trace_id, threshold);
}

/* inj is a child in a request's trace (trace_id, flags, state): sampled as the request was, or
 * decided here for a trace from a peer whose decision this host does not follow. */
static __always_inline void seam_continue(struct seam_injected *inj, const __u8 *trace_id,
					  __u8 flags, __u8 state, __u64 threshold,
					  __u32 follow_parent)
{
	__builtin_memcpy(inj->trace_id, trace_id, 16);
	inj->flags = flags;
	if (state == SEAM_CTX_HEADER && !follow_parent)
		inj->flags = (flags & ~0x01) | seam_sampled(inj->trace_id, threshold);
	inj->kind = SEAM_INJ_CHILD;
}

/* The current ctxprop run (seam_prop_on[0]), 0 while none propagates. */
static __always_inline __u32 seam_prop_epoch(void)
{
	__u32 *on = bpf_map_lookup_elem(&seam_prop_on, &seam_key_zero);
	return on ? *on : 0;
}

/* seam_prop_on[SEAM_PROP_ON_OPTION_RUN]'s key, in .rodata for the reason seam_key_zero is. */
static const __u32 seam_key_option_run = SEAM_PROP_ON_OPTION_RUN;

/* ctxprop run epoch has read a peer's TCP option: the capture starts looking for them. Written
 * only when it changes, so the line stays shared between CPUs. */
static __always_inline void seam_note_option_run(__u32 epoch)
{
	__u32 *run = bpf_map_lookup_elem(&seam_prop_on, &seam_key_option_run);
	if (run && *run != epoch)
		*run = epoch;
}

/* Whether ctxprop run epoch has read a peer's TCP option yet. */
static __always_inline int seam_option_read_in(__u32 epoch)
{
	__u32 *run = bpf_map_lookup_elem(&seam_prop_on, &seam_key_option_run);
	return run && *run == epoch;
}

/* Takes into *out the request the capture found this Node main thread's send on local_port to
 * work for in this ctxprop run (seam_node_choice); 0 when it left none for this send. */
static __always_inline int seam_take_node_choice(struct seam_node_choice *out, __u16 local_port,
						 __u32 epoch)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct seam_node_choice *nc = bpf_map_lookup_elem(&seam_node_choice, &tid);
	if (!nc || !epoch || nc->epoch != epoch || nc->local_port != local_port)
		return 0;
	*out = *nc;
	bpf_map_delete_elem(&seam_node_choice, &tid);
	return 1;
}

/* The request's trace for a send: the one a Node main thread's send was found to work for (nc,
 * NULL for any other send); else the thread's one server request's trace in this ctxprop run, or
 * a new trace (which the request joins when it had none). With several requests on the thread, a
 * call cannot be told apart: a new trace. */
static __always_inline void seam_choose_context(struct seam_injected *inj, __u64 threshold,
						__u32 follow_parent, __u32 epoch,
						const struct seam_node_choice *nc)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	seam_store4(inj->span_id, bpf_get_prandom_u32() | 1); /* never an all-zero span id */
	seam_store4(inj->span_id + 4, bpf_get_prandom_u32());
	if (nc) {
		seam_continue(inj, nc->trace_id, nc->flags, nc->state, threshold, follow_parent);
		return;
	}
	struct seam_serving *sv = bpf_map_lookup_elem(&seam_serving, &tid);
	if (sv && (!epoch || sv->epoch != epoch))
		sv = NULL; /* counted by an earlier run */
	if (sv && sv->open == 1 &&
	    (sv->state == SEAM_CTX_HEADER || sv->state == SEAM_CTX_GENERATED)) {
		seam_continue(inj, sv->trace_id, sv->flags, sv->state, threshold, follow_parent);
		return;
	}
	inj->flags = seam_new_trace(inj->trace_id, threshold);
	if (sv && sv->open == 1 && sv->state == SEAM_CTX_NONE) {
		/* the request's trace starts here: its later calls join it */
		__builtin_memcpy(sv->trace_id, inj->trace_id, 16);
		sv->flags = inj->flags;
		sv->state = SEAM_CTX_GENERATED;
		inj->kind = SEAM_INJ_CHILD;
		return;
	}
	inj->kind = SEAM_INJ_ROOT;
}

#endif

/* The context an outgoing request carries, chosen the same way by ctxprop's sk_msg (plaintext)
 * and the capture's SSL_write uprobe (TLS, whose plaintext only the library sees). */
#ifndef SEAM_PROP_CTX_H
#define SEAM_PROP_CTX_H

#include "seam_prop_maps.h"

/* The sampled flag of a trace this host starts: the trace id's low 63 bits against the
 * OTEL_TRACES_SAMPLER ratio's threshold (the correlator decides the same way). */
static __always_inline __u8 seam_sampled(const __u8 *trace_id, __u64 threshold)
{
	__u64 low;
	__builtin_memcpy(&low, trace_id + 8, 8);
	return (__builtin_bswap64(low) >> 1) < threshold ? 0x01 : 0x00;
}

/* The request's trace for a send on local_port: the one a Node main thread's send was found to
 * work for; else the thread's one server request's trace, or a new trace (which the request joins
 * when it had none). With several requests on the thread, a call cannot be told apart: a new
 * trace. */
static __always_inline void seam_choose_context(struct seam_injected *inj, __u64 threshold,
						__u32 follow_parent, __u16 local_port)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 zero = 0;
	__u32 *epoch = bpf_map_lookup_elem(&seam_prop_on, &zero);
	__u32 r[6];
#pragma unroll
	for (int i = 0; i < 6; i++)
		r[i] = bpf_get_prandom_u32();
	r[4] |= 1; /* never an all-zero span id */
	__builtin_memcpy(inj->span_id, &r[4], 8);
	struct seam_node_choice *nc = bpf_map_lookup_elem(&seam_node_choice, &tid);
	if (nc && epoch && nc->epoch == *epoch && nc->local_port == local_port) {
		__builtin_memcpy(inj->trace_id, nc->trace_id, 16);
		inj->flags = nc->flags;
		if (nc->state == SEAM_CTX_HEADER && !follow_parent)
			inj->flags = (nc->flags & ~0x01) | seam_sampled(inj->trace_id, threshold);
		inj->kind = SEAM_INJ_CHILD;
		bpf_map_delete_elem(&seam_node_choice, &tid);
		return;
	}
	struct seam_serving *sv = bpf_map_lookup_elem(&seam_serving, &tid);
	if (sv && (!epoch || sv->epoch != *epoch))
		sv = NULL; /* counted by an earlier run */
	if (sv && sv->open == 1 &&
	    (sv->state == SEAM_CTX_HEADER || sv->state == SEAM_CTX_GENERATED)) {
		__builtin_memcpy(inj->trace_id, sv->trace_id, 16);
		inj->flags = sv->flags;
		if (sv->state == SEAM_CTX_HEADER && !follow_parent)
			inj->flags = (sv->flags & ~0x01) | seam_sampled(inj->trace_id, threshold);
		inj->kind = SEAM_INJ_CHILD;
		return;
	}
	r[3] |= 1; /* never an all-zero trace id */
	__builtin_memcpy(inj->trace_id, r, 16);
	inj->flags = seam_sampled(inj->trace_id, threshold);
	if (sv && sv->open == 1 && sv->state == SEAM_CTX_NONE) {
		/* the request's trace starts here: its later calls join it */
		__builtin_memcpy(sv->trace_id, r, 16);
		sv->flags = inj->flags;
		sv->state = SEAM_CTX_GENERATED;
		inj->kind = SEAM_INJ_CHILD;
		return;
	}
	inj->kind = SEAM_INJ_ROOT;
}

#endif

/* Maps the capture object and ctxprop's object share: the loader creates and pins them, ctxprop
 * opens the pins. Both objects include this one definition so the two can never disagree. */
#ifndef SEAM_PROP_MAPS_H
#define SEAM_PROP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "seam_abi.h"

/* tid → the server request it works for. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct seam_serving);
} seam_serving SEC(".maps");

/* tid of a Node main thread → the request its send in progress works for (see
 * struct seam_node_choice); absent when Node's ids prove none. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct seam_node_choice);
} seam_node_choice SEC(".maps");

/* Connection (as the receiving host's capture names it) → the context the peer's last TCP
 * option carried; written by ctxprop's sockops, taken by the capture when a request starts (its
 * kind set to SEAM_INJ_TAKEN in place). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct seam_tuple);
	__type(value, struct seam_injected);
} seam_remote_ctx SEC(".maps");

/* A TCP socket an instrumented process connects, while ctxprop propagates (created by the capture,
 * which knows the target set and its forks); ctxprop's sockops puts only these in its sockhash. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct seam_prop_sock);
} seam_prop_sock SEC(".maps");

/* [0] is non-zero while ctxprop injects: the capture keeps serving contexts only then. Each ctxprop
 * run writes a new value (an epoch; [1] is the last one used): counts kept under an earlier run
 * are ignored, so a request that began or ended while no ctxprop ran never skews a thread's count.
 * [2] is the last run in which a peer's TCP option was read: until one is, the capture does not
 * look for one in seam_remote_ctx at every request a server receives. */
#define SEAM_PROP_ON_OPTION_RUN 2
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u32);
} seam_prop_on SEC(".maps");

/* ctxprop's settings the capture needs to choose a TLS request's context itself: [0] only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct seam_prop_rule);
} seam_prop_rule SEC(".maps");

/* Connection (as the sender's capture names it) → the context its next TLS request carries in a
 * TCP option: chosen by the capture at SSL_write, before the bytes are encrypted, and written
 * by ctxprop's sockops on the next data segment. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct seam_tuple);
	__type(value, struct seam_injected);
} seam_tls_option SEC(".maps");

#endif

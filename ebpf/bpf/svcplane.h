/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every struct shared between the BPF programs and userspace (ebpf/src/abi.rs mirrors them;
 * sizes are asserted on both sides). Explicit padding everywhere: the kernel hashes keys
 * byte by byte, so no byte may be left undefined.
 *
 * Addresses are 16 bytes in network order: an IPv4 address sits in addr[0] with the rest
 * zero and family 4. Ports are in network order.
 *
 * Map names carry a layout version (v1_): a daemon with a different layout creates new
 * pins instead of misreading old ones.
 */
#ifndef SVCPLANE_H
#define SVCPLANE_H

#include <linux/types.h>

#define SVC_FAMILY_V4 4
#define SVC_FAMILY_V6 6

#define SVC_MAX_SERVICES (1 << 20) /* services map entries (frontends + endpoint slots) */
#define SVC_MAX_FRONTENDS (1 << 18) /* round-robin counters, indexed by frontend id */
#define SVC_MAX_STICKY (1 << 16)    /* unconnected UDP: (socket, frontend) -> endpoint */
#define SVC_MAX_REV (1 << 16)       /* UDP: (socket, endpoint) -> frontend */
#define SVC_MAX_AFFINITY (1 << 16)  /* ClientIP affinity */

/* A frontend: (address, port, protocol). 20 bytes. */
struct svc_frontend {
	__u32 addr[4];
	__u16 port;  /* network order */
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family; /* SVC_FAMILY_V4 or SVC_FAMILY_V6 */
};

/* Key of v1_services. slot 0 = the frontend, slots 1..count = its endpoints. 24 bytes. */
struct svc_key {
	struct svc_frontend fe;
	__u16 slot;
	__u16 pad;
};

/* Value of v1_services. 32 bytes.
 * slot 0: count, fe_id, affinity_timeout (seconds, 0 = no affinity); addr/port unused.
 * slot n: addr/port of endpoint n (same family as the frontend); the rest unused. */
struct svc_value {
	__u32 addr[4];
	__u16 port; /* network order */
	__u16 count;
	__u32 fe_id;
	__u32 affinity_timeout;
	__u32 flags;
};

/* An endpoint as remembered by sticky, reverse and affinity entries: the slot it was
 * picked from lets a lookup check it is still there with one map lookup. 20 bytes. */
struct svc_backend {
	__u32 addr[4];
	__u16 port; /* network order */
	__u16 slot;
};

/* Value of v1_conns, keyed by svc_key (a frontend and slot >= 1): the new connections the
 * programs sent to `backend` while it held that slot (connect() of TCP and UDP, and the
 * first datagram of an unconnected UDP socket). A counter whose backend is not the slot's
 * endpoint any more starts anew at the next one. 32 bytes. */
struct svc_conns {
	__u64 connections;
	struct svc_backend backend;
	__u32 pad;
};

/* v1_udp_sticky key: one endpoint per (unconnected UDP socket, frontend). 32 bytes. */
struct svc_sticky_key {
	__u64 cookie;
	struct svc_frontend fe;
	__u32 pad;
};

/* v1_rev key: (UDP socket, endpoint) -> the frontend it replaces. 32 bytes. */
struct svc_rev_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 family;
	__u8 pad1;
	__u32 pad2;
};

/* v1_affinity key: ClientIP affinity. At socket level the client is its network
 * namespace (every socket of a pod has the pod's IP). 16 bytes. */
struct svc_affinity_key {
	__u64 netns_cookie;
	__u32 fe_id;
	__u32 pad;
};

/* v1_affinity value. 32 bytes. */
struct svc_affinity_value {
	struct svc_backend backend;
	__u32 pad;
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
};

/* v1_tcp_peer (socket storage): what a TCP socket connected to, for getpeername. Only
 * written when the loader enables it (cfg_tcp_peer_vip): it is a write per connect. 40 bytes. */
struct svc_peer {
	struct svc_frontend fe;
	struct svc_backend backend;
};

/* v1_stale key: an endpoint just removed from a UDP frontend; the udp iterator aborts
 * connected UDP sockets this program pointed at it. 20 bytes. */
struct svc_stale_key {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 family;
	__u8 pad;
};

/* Helper id the loader patches into a call of the kfunc bpf_sock_destroy. */
#define SVC_KFUNC_SOCK_DESTROY_MARKER 0x7ffffff1

/* The sizes ebpf/src/abi.rs asserts for its mirrors. */
_Static_assert(sizeof(struct svc_frontend) == 20, "svc_frontend");
_Static_assert(sizeof(struct svc_key) == 24, "svc_key");
_Static_assert(sizeof(struct svc_value) == 32, "svc_value");
_Static_assert(sizeof(struct svc_backend) == 20, "svc_backend");
_Static_assert(sizeof(struct svc_conns) == 32, "svc_conns");
_Static_assert(sizeof(struct svc_sticky_key) == 32, "svc_sticky_key");
_Static_assert(sizeof(struct svc_rev_key) == 32, "svc_rev_key");
_Static_assert(sizeof(struct svc_affinity_key) == 16, "svc_affinity_key");
_Static_assert(sizeof(struct svc_affinity_value) == 32, "svc_affinity_value");
_Static_assert(sizeof(struct svc_peer) == 40, "svc_peer");
_Static_assert(sizeof(struct svc_stale_key) == 20, "svc_stale_key");

#endif

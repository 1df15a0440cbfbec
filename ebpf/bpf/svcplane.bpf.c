// SPDX-License-Identifier: Apache-2.0
/*
 * Socket-level load balancing on cgroup sock_addr hooks.
 *
 * connect4/6 (TCP, connected UDP) and sendmsg4/6 (unconnected UDP) rewrite the destination
 * from a frontend (address, port, protocol) to an endpoint; recvmsg4/6 and getpeername4/6
 * show the frontend again to UDP sockets.
 *
 * TCP connect without session affinity performs no map write: one lookup of slot 0, one
 * atomic add on the frontend's round-robin counter, one lookup of the picked slot.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "svcplane.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SVC_MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} v1_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SVC_MAX_FRONTENDS);
	__type(key, __u32);
	__type(value, __u64);
} v1_rr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SVC_MAX_STICKY);
	__type(key, struct svc_sticky_key);
	__type(value, struct svc_backend);
} v1_udp_sticky SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SVC_MAX_REV);
	__type(key, struct svc_rev_key);
	__type(value, struct svc_frontend);
} v1_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SVC_MAX_AFFINITY);
	__type(key, struct svc_affinity_key);
	__type(value, struct svc_affinity_value);
} v1_affinity SEC(".maps");

#define NS_PER_SEC 1000000000ULL

/* The frontend a sock_addr context is addressed to (user_ip*, user_port). An IPv4-mapped
 * IPv6 destination is looked up as the IPv4 frontend. Returns 0 if the protocol is not
 * balanced. */
static __always_inline int frontend_of(struct bpf_sock_addr *ctx, int v6,
				       struct svc_frontend *fe, int *mapped)
{
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	__builtin_memset(fe, 0, sizeof(*fe));
	fe->port = (__u16)ctx->user_port;
	fe->proto = (__u8)proto;
	*mapped = 0;
	if (!v6) {
		fe->addr[0] = ctx->user_ip4;
		fe->family = SVC_FAMILY_V4;
		return 1;
	}
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
	__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff)) {
		fe->addr[0] = a3;
		fe->family = SVC_FAMILY_V4;
		*mapped = 1;
		return 1;
	}
	fe->addr[0] = a0;
	fe->addr[1] = a1;
	fe->addr[2] = a2;
	fe->addr[3] = a3;
	fe->family = SVC_FAMILY_V6;
	return 1;
}

static __always_inline struct svc_value *slot_lookup(const struct svc_frontend *fe, __u16 slot)
{
	struct svc_key key = {};

	key.fe = *fe;
	key.slot = slot;
	return bpf_map_lookup_elem(&v1_services, &key);
}

/* Whether `b` is still endpoint `b->slot` of a frontend with `count` endpoints. */
static __always_inline int backend_current(const struct svc_frontend *fe, __u16 count,
					   const struct svc_backend *b)
{
	if (b->slot == 0 || b->slot > count)
		return 0;
	struct svc_value *v = slot_lookup(fe, b->slot);
	if (!v)
		return 0;
	return v->port == b->port && v->addr[0] == b->addr[0] && v->addr[1] == b->addr[1] &&
	       v->addr[2] == b->addr[2] && v->addr[3] == b->addr[3];
}

/* Round robin: the frontend's counter, then the slot it names. */
static __always_inline int pick_rr(const struct svc_frontend *fe, const struct svc_value *front,
				   struct svc_backend *out)
{
	__u32 id = front->fe_id;
	__u64 n = 0;
	__u64 *ctr = bpf_map_lookup_elem(&v1_rr, &id);

	if (ctr)
		n = __sync_fetch_and_add(ctr, 1);
	__u16 slot = (__u16)(n % front->count) + 1;
	struct svc_value *v = slot_lookup(fe, slot);
	if (!v)
		return 0;
	out->addr[0] = v->addr[0];
	out->addr[1] = v->addr[1];
	out->addr[2] = v->addr[2];
	out->addr[3] = v->addr[3];
	out->port = v->port;
	out->slot = slot;
	return 1;
}

/* Picks an endpoint: the affinity entry if the frontend has affinity and the entry is fresh
 * and still valid, else round robin (recording it for affinity). */
static __always_inline int pick(const struct svc_frontend *fe, const struct svc_value *front,
				struct svc_backend *out)
{
	if (!front->affinity_timeout)
		return pick_rr(fe, front, out);

	struct svc_affinity_key ak = {};
	ak.netns_cookie = bpf_get_netns_cookie(NULL);
	ak.fe_id = front->fe_id;
	__u64 now = bpf_ktime_get_ns();
	struct svc_affinity_value *av = bpf_map_lookup_elem(&v1_affinity, &ak);
	if (av && now - av->last_used_ns < (__u64)front->affinity_timeout * NS_PER_SEC &&
	    backend_current(fe, front->count, &av->backend)) {
		*out = av->backend;
		av->last_used_ns = now;
		return 1;
	}
	if (!pick_rr(fe, front, out))
		return 0;
	struct svc_affinity_value nv = {};
	nv.backend = *out;
	nv.last_used_ns = now;
	bpf_map_update_elem(&v1_affinity, &ak, &nv, BPF_ANY);
	return 1;
}

static __always_inline void remember_rev(struct bpf_sock_addr *ctx, const struct svc_frontend *fe,
					 const struct svc_backend *b)
{
	struct svc_rev_key rk = {};

	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr[0] = b->addr[0];
	rk.addr[1] = b->addr[1];
	rk.addr[2] = b->addr[2];
	rk.addr[3] = b->addr[3];
	rk.port = b->port;
	rk.family = fe->family;
	bpf_map_update_elem(&v1_rev, &rk, fe, BPF_ANY);
}

static __always_inline void write_dest(struct bpf_sock_addr *ctx, int v6, int mapped,
				       const struct svc_frontend *fe, const struct svc_backend *b)
{
	ctx->user_port = b->port;
	if (!v6) {
		ctx->user_ip4 = b->addr[0];
		return;
	}
	if (mapped || fe->family == SVC_FAMILY_V4) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = b->addr[0];
		return;
	}
	ctx->user_ip6[0] = b->addr[0];
	ctx->user_ip6[1] = b->addr[1];
	ctx->user_ip6[2] = b->addr[2];
	ctx->user_ip6[3] = b->addr[3];
}

/* connect(): TCP and connected UDP. A frontend without endpoints refuses (EPERM) rather
 * than letting the connection wander off to an address nothing serves. */
static __always_inline int do_connect(struct bpf_sock_addr *ctx, int v6)
{
	struct svc_frontend fe;
	struct svc_backend b = {};
	int mapped;

	if (!frontend_of(ctx, v6, &fe, &mapped))
		return 1;
	struct svc_value *front = slot_lookup(&fe, 0);
	if (!front)
		return 1;
	if (front->count == 0)
		return 0;
	if (!pick(&fe, front, &b))
		return 1;
	if (fe.proto == IPPROTO_UDP)
		remember_rev(ctx, &fe, &b);
	write_dest(ctx, v6, mapped, &fe, &b);
	return 1;
}

/* sendmsg() with a destination (unconnected UDP): the socket keeps the endpoint it got for
 * this frontend while that endpoint stays in the frontend, so its datagrams don't spray;
 * when the endpoint leaves, the next datagram picks a current one. */
static __always_inline int do_sendmsg(struct bpf_sock_addr *ctx, int v6)
{
	struct svc_frontend fe;
	struct svc_backend b = {};
	int mapped;

	if (!frontend_of(ctx, v6, &fe, &mapped))
		return 1;
	struct svc_value *front = slot_lookup(&fe, 0);
	if (!front)
		return 1;
	if (front->count == 0)
		return 0;
	struct svc_sticky_key sk = {};
	sk.cookie = bpf_get_socket_cookie(ctx);
	sk.fe = fe;
	struct svc_backend *cur = bpf_map_lookup_elem(&v1_udp_sticky, &sk);
	if (cur && backend_current(&fe, front->count, cur)) {
		b = *cur;
	} else {
		if (!pick(&fe, front, &b))
			return 1;
		bpf_map_update_elem(&v1_udp_sticky, &sk, &b, BPF_ANY);
		remember_rev(ctx, &fe, &b);
	}
	write_dest(ctx, v6, mapped, &fe, &b);
	return 1;
}

/* recvmsg() source and getpeername(): an endpoint this UDP socket was sent to shows as
 * the frontend. */
static __always_inline int do_reverse(struct bpf_sock_addr *ctx, int v6)
{
	struct svc_rev_key rk = {};

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.port = (__u16)ctx->user_port;
	int mapped = 0;
	if (!v6) {
		rk.addr[0] = ctx->user_ip4;
		rk.family = SVC_FAMILY_V4;
	} else {
		__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
		__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
		if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff)) {
			rk.addr[0] = a3;
			rk.family = SVC_FAMILY_V4;
			mapped = 1;
		} else {
			rk.addr[0] = a0;
			rk.addr[1] = a1;
			rk.addr[2] = a2;
			rk.addr[3] = a3;
			rk.family = SVC_FAMILY_V6;
		}
	}
	struct svc_frontend *fe = bpf_map_lookup_elem(&v1_rev, &rk);
	if (!fe)
		return 1;
	ctx->user_port = fe->port;
	if (!v6) {
		ctx->user_ip4 = fe->addr[0];
	} else if (mapped) {
		ctx->user_ip6[3] = fe->addr[0];
	} else {
		ctx->user_ip6[0] = fe->addr[0];
		ctx->user_ip6[1] = fe->addr[1];
		ctx->user_ip6[2] = fe->addr[2];
		ctx->user_ip6[3] = fe->addr[3];
	}
	return 1;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return do_connect(ctx, 0);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return do_connect(ctx, 1);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return do_sendmsg(ctx, 0);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return do_sendmsg(ctx, 1);
}

SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	return do_reverse(ctx, 0);
}

SEC("cgroup/recvmsg6")
int recvmsg6(struct bpf_sock_addr *ctx)
{
	return do_reverse(ctx, 1);
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	return do_reverse(ctx, 0);
}

SEC("cgroup/getpeername6")
int getpeername6(struct bpf_sock_addr *ctx)
{
	return do_reverse(ctx, 1);
}

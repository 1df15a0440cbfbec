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

/* Per (frontend, slot): new connections to the slot's endpoint (see struct svc_conns). The
 * daemon deletes a slot's counter with the slot; entries exist only for slots that took a
 * connection. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SVC_MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_conns);
} v1_conns SEC(".maps");

/* Index 0: connects and datagrams refused because their frontend had no endpoint. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} v1_refused SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct svc_peer);
} v1_tcp_peer SEC(".maps");

/* Set by the loader: 1 = TCP getpeername shows the frontend (costs a socket-storage write
 * per balanced TCP connect). */
volatile const __u32 cfg_tcp_peer_vip = 0;

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

static __always_inline int same_backend(const struct svc_backend *a, const struct svc_backend *b)
{
	return a->port == b->port && a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] &&
	       a->addr[2] == b->addr[2] && a->addr[3] == b->addr[3];
}

/* One more new connection to `b`, counted on its slot. The first connection creates the
 * counter (of two racing creators, the loser adds to the winner's); a counter left by the
 * slot's previous endpoint is replaced. */
static __always_inline void count_conn(const struct svc_frontend *fe, const struct svc_backend *b)
{
	struct svc_key key = {};

	key.fe = *fe;
	key.slot = b->slot;
	struct svc_conns *c = bpf_map_lookup_elem(&v1_conns, &key);
	if (c && same_backend(&c->backend, b)) {
		__sync_fetch_and_add(&c->connections, 1);
		return;
	}
	struct svc_conns n = {};
	n.connections = 1;
	n.backend = *b;
	if (c) {
		bpf_map_update_elem(&v1_conns, &key, &n, BPF_EXIST);
		return;
	}
	if (bpf_map_update_elem(&v1_conns, &key, &n, BPF_NOEXIST) == 0)
		return;
	c = bpf_map_lookup_elem(&v1_conns, &key);
	if (c && same_backend(&c->backend, b))
		__sync_fetch_and_add(&c->connections, 1);
}

/* Refuses (EPERM) a connect or datagram to a frontend without endpoints, counting it. */
static __always_inline int refuse(void)
{
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&v1_refused, &k);

	if (n)
		*n += 1;
	return 0;
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
		return refuse();
	if (!pick(&fe, front, &b))
		return 1;
	count_conn(&fe, &b);
	if (fe.proto == IPPROTO_UDP) {
		remember_rev(ctx, &fe, &b);
	} else if (cfg_tcp_peer_vip) {
		struct bpf_sock *sk = ctx->sk;
		if (sk) {
			struct svc_peer *p = bpf_sk_storage_get(&v1_tcp_peer, sk, 0,
								BPF_SK_STORAGE_GET_F_CREATE);
			if (p) {
				p->fe = fe;
				p->backend = b;
			}
		}
	}
	write_dest(ctx, v6, mapped, &fe, &b);
	return 1;
}

/* getpeername() of a TCP socket this program connected: the frontend, if the peer is
 * still the endpoint it was sent to. */
static __always_inline int tcp_peer(struct bpf_sock_addr *ctx, int v6)
{
	if (!cfg_tcp_peer_vip)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct svc_peer *p = bpf_sk_storage_get(&v1_tcp_peer, sk, 0, 0);
	if (!p || p->backend.port != (__u16)ctx->user_port)
		return 1;
	if (!v6) {
		if (p->backend.addr[0] != ctx->user_ip4)
			return 1;
		ctx->user_ip4 = p->fe.addr[0];
	} else if (p->fe.family == SVC_FAMILY_V4) {
		/* An IPv4 frontend reached from an IPv6 socket: ::ffff:a.b.c.d. */
		if (p->backend.addr[0] != ctx->user_ip6[3])
			return 1;
		ctx->user_ip6[3] = p->fe.addr[0];
	} else {
		if (p->backend.addr[0] != ctx->user_ip6[0] || p->backend.addr[1] != ctx->user_ip6[1] ||
		    p->backend.addr[2] != ctx->user_ip6[2] || p->backend.addr[3] != ctx->user_ip6[3])
			return 1;
		ctx->user_ip6[0] = p->fe.addr[0];
		ctx->user_ip6[1] = p->fe.addr[1];
		ctx->user_ip6[2] = p->fe.addr[2];
		ctx->user_ip6[3] = p->fe.addr[3];
	}
	ctx->user_port = p->fe.port;
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
		return refuse();
	struct svc_sticky_key sk = {};
	sk.cookie = bpf_get_socket_cookie(ctx);
	sk.fe = fe;
	struct svc_backend *cur = bpf_map_lookup_elem(&v1_udp_sticky, &sk);
	if (cur && backend_current(&fe, front->count, cur)) {
		b = *cur;
	} else {
		if (!pick(&fe, front, &b))
			return 1;
		count_conn(&fe, &b);
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

	if (ctx->protocol == IPPROTO_TCP)
		return tcp_peer(ctx, v6);
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

/* === stale connected UDP === */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct svc_stale_key);
	__type(value, __u8);
} v1_stale SEC(".maps");

/* A call through this pointer compiles to `call SVC_KFUNC_SOCK_DESTROY_MARKER`; the loader
 * rewrites it into a kfunc call of bpf_sock_destroy (aya 0.14 does not relocate kfunc
 * calls). Without the rewrite the program is not loaded. */
static long (*svc_sock_destroy)(void *sk) = (void *)SVC_KFUNC_SOCK_DESTROY_MARKER;

/* The first two members of the kernel's struct bpf_iter__udp. */
struct svc_iter_udp {
	void *meta;
	void *udp_sk;
};

/* Offsets in struct sock_common, unchanged since Linux 2.6. */
#define SKC_DADDR 0
#define SKC_DPORT 12
#define SKC_FAMILY 16
#define SVC_AF_INET 2
#define SVC_AF_INET6 10

/* The IPv6 destination moves with the kernel's configuration: its offset is relocated
 * (CO-RE) against the running kernel's BTF by the loader. */
struct in6_addr___svc {
	union {
		__u32 u6_addr32[4];
	} in6_u;
};

struct sock_common___svc {
	struct in6_addr___svc skc_v6_daddr;
} __attribute__((preserve_access_index));

/* Aborts every connected UDP socket of the iterated network namespace that this program
 * balanced to an endpoint listed in v1_stale. */
SEC("iter/udp")
int udp_destroy(struct svc_iter_udp *ctx)
{
	void *sk = ctx->udp_sk;

	if (!sk)
		return 0;
	__u16 family = *(__u16 *)(sk + SKC_FAMILY);
	struct svc_stale_key key = {};
	key.port = *(__u16 *)(sk + SKC_DPORT);
	if (family == SVC_AF_INET) {
		key.addr[0] = *(__u32 *)(sk + SKC_DADDR);
		key.family = SVC_FAMILY_V4;
	} else if (family == SVC_AF_INET6) {
		struct sock_common___svc *skc = sk;
		key.addr[0] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
		key.addr[1] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
		key.addr[2] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
		key.addr[3] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
		key.family = SVC_FAMILY_V6;
		/* An IPv6 socket connected to an IPv4 endpoint (::ffff:a.b.c.d). */
		if (key.addr[0] == 0 && key.addr[1] == 0 && key.addr[2] == bpf_htonl(0xffff)) {
			key.addr[0] = key.addr[3];
			key.addr[2] = 0;
			key.addr[3] = 0;
			key.family = SVC_FAMILY_V4;
		}
	} else {
		return 0;
	}
	if (!key.port || !bpf_map_lookup_elem(&v1_stale, &key))
		return 0;
	struct svc_rev_key rk = {};
	rk.cookie = bpf_get_socket_cookie(sk);
	rk.addr[0] = key.addr[0];
	rk.addr[1] = key.addr[1];
	rk.addr[2] = key.addr[2];
	rk.addr[3] = key.addr[3];
	rk.port = key.port;
	rk.family = key.family;
	if (!bpf_map_lookup_elem(&v1_rev, &rk))
		return 0;
	svc_sock_destroy(sk);
	return 0;
}

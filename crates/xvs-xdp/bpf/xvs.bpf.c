// SPDX-License-Identifier: GPL-2.0
/*
 * xvs steering program: redirect to the AF_XDP socket of the receiving queue only the frames
 * xvs must see, pass everything else to the kernel.
 *
 * Redirected:
 *   - TCP/UDP/SCTP to (VIP, proto, port) of a service, or to (VIP, proto, 0) of a port-0 service;
 *   - ICMP/ICMPv6 errors addressed to a VIP;
 *   - TCP/UDP/SCTP from (real server, proto, port) of a NAT destination (or (rs, proto, 0))
 *     that are not addressed to one of the box's own addresses.
 * Passed: ARP, ND and all other ICMPv6 informational messages, echo requests, the box's own
 * traffic, fragments' later pieces, anything unparsable.
 * A frame that matches but finds no socket on its queue is dropped and counted (passing it
 * would make the kernel answer with a reset).
 * Packets that may open a connection (TCP SYNs, SCTP INITs, and UDP datagrams, whose first of a
 * flow cannot be told from the others) to a service pass a token bucket per socket whose rate xvsd
 * sets (0: no limit): while a flood overflows a socket's ring, xvsd lowers it, so that the ring
 * keeps room for the packets of established TCP connections and of handshakes under way; the
 * excess is dropped and counted here (clients retransmit).
 * A unicast frame not addressed to the receiving interface's MAC (nor to a MAC the operator
 * added, such as a VRRP virtual MAC) is passed untouched and counted: on a segment that floods
 * unicast, it is meant for another host, and the kernel drops it as such (PACKET_OTHERHOST).
 *
 * Fast path: a TCP segment without SYN, FIN or RST whose exact addresses and ports are in
 * `fast` (an established connection xvsd has offloaded, one entry per direction) is rewritten
 * here as xvsd would rewrite it (MACs, the NAT address and port, TTL, checksums by the
 * precomputed differences, or a tunnel's outer headers) and sent from the egress interface
 * without leaving the kernel
 * (XDP_TX or a redirect), counted in the entry. A SYN, FIN or RST, or an entry of an older
 * configuration generation, marks the entry dead (xvsd collects its counters and removes it)
 * and takes the slow path through xvsd; so does a segment too big for the egress MTU or with
 * TTL 1, for xvsd's ICMP error.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 64
#define MAX_IFACES 8
#define MAX_KEYS 65536

/* An address (IPv4 in the first 4 bytes, zero padded), a protocol and a port (network order). */
struct steer_key {
	__u8 addr[16];
	__u8 family;   /* 4 or 6 */
	__u8 proto;    /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_SCTP / 0 = any (VIP for ICMP) */
	__be16 port;
};

/* Sockets, keyed by interface slot × MAX_QUEUES + queue. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_IFACES * MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* Interface index → slot (0..MAX_IFACES-1). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} if_slots SEC(".maps");

/* Destinations of services: (VIP, proto, port) and (VIP, proto, 0); (VIP, 0, 0) marks a VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_KEYS);
	__type(key, struct steer_key);
	__type(value, __u8);
} services SEC(".maps");

/* Sources of NAT replies: (real server, proto, port) and (real server, proto, 0). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_KEYS);
	__type(key, struct steer_key);
	__type(value, __u8);
} nat_sources SEC(".maps");

/* The MACs each interface accepts unicast frames for: its own and the operator's additions. */
struct mac_key {
	__u32 ifindex;
	__u8 mac[6];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct mac_key);
	__type(value, __u8);
} own_macs SEC(".maps");

/* The box's own addresses (proto 0, port 0): traffic to them always goes to the kernel. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct steer_key);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* Admission of opening packets, per socket (interface slot × MAX_QUEUES + queue): the rate xvsd sets, in
 * packets per second (0: no limit), and the bucket with its counters, which only this program
 * writes (one CPU at a time runs a queue's receive path). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_IFACES * MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u64);
} admit_rates SEC(".maps");

struct admit_state {
	__u64 credit_ns; /* time credit: a packet costs 1e9 / rate ns */
	__u64 last_ns;
	__u64 seen;
	__u64 passed;
	__u64 dropped;
	__u64 others; /* the service's other packets (established TCP), which admission protects */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_IFACES * MAX_QUEUES);
	__type(key, __u32);
	__type(value, struct admit_state);
} admit_state SEC(".maps");

/* A burst of this many opening packets passes at once after a quiet spell. */
#define ADMIT_BURST 32

enum {
	CNT_PASSED = 0,
	CNT_REDIRECTED = 1,
	CNT_NO_SOCKET = 2,
	CNT_OTHER_HOST = 3,
	CNT_FAST = 4,
	CNT_MAX = 5,
};

/* A direction of an offloaded connection, as its segments arrive (IPv4 in the first 4 bytes
 * of each address, zero padded). */
struct fast_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
};

enum {
	FAST_ROUTE = 0, /* MACs and TTL only (direct routing) */
	FAST_DNAT = 1,  /* and the destination address and port (NAT, client to server) */
	FAST_SNAT = 2,  /* and the source address and port (NAT, server to client) */
	FAST_TUNNEL = 3, /* and the outer IP and tunnel headers in front (IPIP, GUE, GRE) */
};

struct fast_val {
	__u8 eth[12];      /* new destination and source MACs */
	__u8 addr[16];     /* the NAT address (IPv4 in the first 4 bytes) */
	__be16 port;       /* the NAT port */
	__u8 op;           /* FAST_* */
	__u8 flags;        /* FAST_F_* */
	__u32 ifindex;     /* egress interface */
	__u32 gen;         /* configuration generation it was made in */
	__u16 max_ip_len;  /* the egress MTU */
	__u16 ip_delta;    /* ones' complement difference for the IPv4 header checksum */
	__u16 l4_delta;    /* and for the TCP checksum */
	__u16 pad2;
	__u32 dead;        /* set here: xvsd collects and removes the entry */
	__u32 pad3;
	__u64 packets;
	__u64 bytes;       /* IP bytes, as xvsd counts */
	__u64 last_ns;     /* last segment, bpf_ktime_get_ns() */
	__u8 src[16];      /* tunnels: the outer source (`addr` is the outer destination) */
	__u8 outer_v6;     /* tunnels: the outer header is IPv6 */
	__u8 tun_len;      /* tunnels: bytes of `tun` (0 IPIP, 4 GRE, 12 GUE) */
	__u8 tun_proto;    /* tunnels: the outer header's protocol */
	__u8 pad4[5];
	__u8 tun[12];      /* tunnels: the tunnel header (GUE: its UDP length counts 12) */
	__u8 pad5[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fast_key);
	__type(value, struct fast_val);
} fast SEC(".maps");

/* The configuration generation (entry 0): xvsd bumps it when a change may end or redirect
 * offloaded connections, which makes every older entry dead. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fast_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
}

static __always_inline int pass(void)
{
	count(CNT_PASSED);
	return XDP_PASS;
}

/* The socket key of the receiving queue, or -1. */
static __always_inline long socket_key(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 q = ctx->rx_queue_index;
	__u32 *slot = bpf_map_lookup_elem(&if_slots, &ifindex);
	if (!slot || q >= MAX_QUEUES)
		return -1;
	return *slot * MAX_QUEUES + q;
}

static __always_inline int redirect(struct xdp_md *ctx)
{
	long k = socket_key(ctx);
	if (k >= 0) {
		__u32 key = k;
		if (bpf_map_lookup_elem(&xsks, &key)) {
			count(CNT_REDIRECTED);
			return bpf_redirect_map(&xsks, key, XDP_DROP);
		}
	}
	count(CNT_NO_SOCKET);
	return XDP_DROP;
}

/* Count a packet to a service that opens nothing: while none arrive, an overflowing ring
 * holds only opening packets, and there is nothing for admission to protect. */
static __always_inline void count_other(struct xdp_md *ctx)
{
	long k = socket_key(ctx);
	if (k < 0)
		return;
	__u32 key = k;
	struct admit_state *st = bpf_map_lookup_elem(&admit_state, &key);
	if (st)
		st->others++;
}

/* Whether an opening packet may go to its socket (the token bucket of the receiving queue). */
static __always_inline int admit(struct xdp_md *ctx)
{
	long k = socket_key(ctx);
	if (k < 0)
		return 1;
	__u32 key = k;
	__u64 *rate = bpf_map_lookup_elem(&admit_rates, &key);
	struct admit_state *st = bpf_map_lookup_elem(&admit_state, &key);
	if (!rate || !st)
		return 1;
	st->seen++;
	__u64 r = *rate;
	if (r == 0) {
		st->passed++;
		return 1;
	}
	__u64 now = bpf_ktime_get_ns();
	__u64 cost = 1000000000ULL / r;
	__u64 credit = st->credit_ns + (now - st->last_ns);
	if (credit > cost * ADMIT_BURST)
		credit = cost * ADMIT_BURST;
	st->last_ns = now;
	if (credit < cost) {
		st->credit_ns = credit;
		st->dropped++;
		return 0;
	}
	st->credit_ns = credit - cost;
	st->passed++;
	return 1;
}

static __always_inline int in_map(void *map, struct steer_key *k)
{
	return bpf_map_lookup_elem(map, k) != 0;
}

/* Is (addr, proto, port) a service, or (addr, proto, 0) a port-0 service? */
static __always_inline int is_service(struct steer_key *k)
{
	if (in_map(&services, k))
		return 1;
	__be16 port = k->port;
	k->port = 0;
	int r = in_map(&services, k);
	k->port = port;
	return r;
}

static __always_inline int is_nat_source(struct steer_key *k)
{
	if (in_map(&nat_sources, k))
		return 1;
	__be16 port = k->port;
	k->port = 0;
	int r = in_map(&nat_sources, k);
	k->port = port;
	return r;
}

/* ~(~csum + delta), folded: a checksum updated by a precomputed ones' complement difference
 * (RFC 1624, eqn. 3). */
static __always_inline __u16 csum_adjust(__u16 csum, __u16 delta)
{
	__u32 s = (__u32)(__u16)~csum + delta;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

static __always_inline void count_fast(struct fast_val *v, __u16 ip_len)
{
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, ip_len);
	v->last_ns = bpf_ktime_get_ns();
	count(CNT_FAST);
}

/* Send by a redirect even back out of the ingress interface: a veth wakes its peer's NAPI
 * after XDP_TX only when the peer has an XDP program, after a redirect whatever turned the
 * peer's NAPI on (drivers/net/veth.c, veth_xdp_flush and veth_ndo_xdp_xmit). */
#define FAST_F_REDIRECT 1

static __always_inline int fast_send(struct xdp_md *ctx, struct fast_val *v)
{
	if (v->ifindex == ctx->ingress_ifindex && !(v->flags & FAST_F_REDIRECT))
		return XDP_TX;
	return bpf_redirect(v->ifindex, 0);
}

/* ECN on encapsulation (RFC 6040, normal mode): ECT copied, CE outside becomes ECT(0). */
static __always_inline __u8 outer_tos(__u8 tos)
{
	__u8 ecn = tos & 3;
	return (tos & ~3) | (ecn == 3 ? 2 : ecn);
}

/* Tunnels: the inner packet's TTL decremented (and its checksum), then the outer header and
 * the tunnel's in front of it, as xvsd's `encapsulate` writes them (ID 0 under DF, else the
 * inner ID; TOS and TTL from the inner packet; a GUE header's UDP length grown by the inner
 * packet's). -1 (the slow path) only before the frame is touched. */
static __always_inline int fast_tunnel(struct xdp_md *ctx, struct fast_val *v, int v6,
				       __u16 ip_len)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 tos, ttl;
	__be16 id = 0, frag = 0;
	if (v6) {
		struct ipv6hdr *in6 = data + sizeof(struct ethhdr);
		if ((void *)(in6 + 1) > end)
			return -1;
		tos = (in6->priority << 4) | (in6->flow_lbl[0] >> 4);
		ttl = in6->hop_limit - 1;
		frag = bpf_htons(0x4000);
	} else {
		struct iphdr *in4 = data + sizeof(struct ethhdr);
		if ((void *)(in4 + 1) > end)
			return -1;
		tos = in4->tos;
		ttl = in4->ttl - 1;
		if (in4->frag_off & bpf_htons(0x4000))
			frag = bpf_htons(0x4000);
		else
			id = in4->id;
	}
	/* From here on the packet's pointers are the verifier's no more (a helper that moves the
	 * packet's bounds invalidates them, failed or not): no way back to the slow path. Room at
	 * the head is XDP's 256 bytes of headroom, so the move fails only on a broken driver. */
	int tlen = v->tun_len;
	if (tlen != 0 && tlen != 4 && tlen != 12)
		return -1;
	int over = (v->outer_v6 ? (int)sizeof(struct ipv6hdr) : (int)sizeof(struct iphdr)) + tlen;
	if (bpf_xdp_adjust_head(ctx, -over))
		return XDP_ABORTED;
	/* Ethernet padding after the IP packet goes (xvsd's `truncate`). */
	int extra = (int)bpf_xdp_get_buff_len(ctx) - (int)sizeof(struct ethhdr) - over - ip_len;
	if (extra > 0 && bpf_xdp_adjust_tail(ctx, -extra))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 proto = v->tun_proto;
	void *th;
	if (v->outer_v6) {
		struct ipv6hdr *o6 = (void *)(eth + 1);
		if ((void *)(o6 + 1) > end)
			return XDP_ABORTED;
		th = o6 + 1;
		__u8 t = outer_tos(tos);
		o6->version = 6;
		o6->priority = t >> 4;
		o6->flow_lbl[0] = (t & 0xf) << 4;
		o6->flow_lbl[1] = 0;
		o6->flow_lbl[2] = 0;
		o6->payload_len = bpf_htons(ip_len + tlen);
		o6->nexthdr = proto;
		o6->hop_limit = ttl;
		__builtin_memcpy(&o6->saddr, v->src, 16);
		__builtin_memcpy(&o6->daddr, v->addr, 16);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
	} else {
		struct iphdr *o4 = (void *)(eth + 1);
		if ((void *)(o4 + 1) > end)
			return XDP_ABORTED;
		th = o4 + 1;
		o4->version = 4;
		o4->ihl = 5;
		o4->tos = outer_tos(tos);
		o4->tot_len = bpf_htons(ip_len + sizeof(struct iphdr) + tlen);
		o4->id = id;
		o4->frag_off = frag;
		o4->ttl = ttl;
		o4->protocol = proto;
		o4->check = 0;
		__builtin_memcpy(&o4->saddr, v->src, 4);
		__builtin_memcpy(&o4->daddr, v->addr, 4);
		__u32 sum = 0;
		__u16 *w = (__u16 *)o4;
#pragma unroll
		for (int i = 0; i < 10; i++)
			sum += w[i];
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		o4->check = ~sum;
		eth->h_proto = bpf_htons(ETH_P_IP);
	}
	void *inner = th;
	if (tlen == 4) {
		if (th + 4 > end)
			return XDP_ABORTED;
		__builtin_memcpy(th, v->tun, 4);
		inner = th + 4;
	} else if (tlen == 12) {
		struct udphdr *u = th;
		if (th + 12 > end)
			return XDP_ABORTED;
		__builtin_memcpy(th, v->tun, 12);
		u->len = bpf_htons(12 + ip_len);
		inner = th + 12;
	}
	if (v6) {
		struct ipv6hdr *in6 = inner;
		if ((void *)(in6 + 1) > end)
			return XDP_ABORTED;
		in6->hop_limit = ttl;
	} else {
		struct iphdr *in4 = inner;
		if ((void *)(in4 + 1) > end)
			return XDP_ABORTED;
		in4->ttl = ttl;
		in4->check = csum_adjust(in4->check, v->ip_delta);
	}
	__builtin_memcpy(eth, v->eth, 12);
	count_fast(v, ip_len);
	int r = fast_send(ctx, v);
	return r < 0 ? XDP_ABORTED : r;
}

/* The fast path for a TCP segment (see the head of this file): an XDP verdict, or -1 for
 * the slow path. `ip` is the IPv4 or IPv6 header (checked in bounds), `l4` the TCP header. */
static __always_inline int fast_path(struct xdp_md *ctx, struct ethhdr *eth, void *ip,
				     void *l4, void *end, int v6)
{
	struct tcphdr *th = l4;
	if ((void *)(th + 1) > end)
		return -1;
	struct fast_key k = {};
	__u16 ip_len;
	if (v6) {
		struct ipv6hdr *ip6 = ip;
		__builtin_memcpy(k.saddr, &ip6->saddr, 16);
		__builtin_memcpy(k.daddr, &ip6->daddr, 16);
		k.family = 6;
		ip_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	} else {
		struct iphdr *ip4 = ip;
		__builtin_memcpy(k.saddr, &ip4->saddr, 4);
		__builtin_memcpy(k.daddr, &ip4->daddr, 4);
		k.family = 4;
		ip_len = bpf_ntohs(ip4->tot_len);
	}
	k.sport = th->source;
	k.dport = th->dest;
	struct fast_val *v = bpf_map_lookup_elem(&fast, &k);
	if (!v)
		return -1;
	__u32 zero = 0;
	__u32 *gen = bpf_map_lookup_elem(&fast_gen, &zero);
	if (th->syn || th->fin || th->rst || !gen || v->gen != *gen) {
		v->dead = 1;
		return -1;
	}
	if (v->dead || ip_len > v->max_ip_len)
		return -1;
	if (v->op == FAST_TUNNEL) {
		__u8 ttl = v6 ? ((struct ipv6hdr *)ip)->hop_limit : ((struct iphdr *)ip)->ttl;
		if (ttl <= 1)
			return -1;
		return fast_tunnel(ctx, v, v6, ip_len);
	}
	if (v6) {
		struct ipv6hdr *ip6 = ip;
		if (ip6->hop_limit <= 1)
			return -1;
		if (v->op == FAST_DNAT)
			__builtin_memcpy(&ip6->daddr, v->addr, 16);
		else if (v->op == FAST_SNAT)
			__builtin_memcpy(&ip6->saddr, v->addr, 16);
		ip6->hop_limit--;
	} else {
		struct iphdr *ip4 = ip;
		if (ip4->ttl <= 1)
			return -1;
		if (v->op == FAST_DNAT)
			__builtin_memcpy(&ip4->daddr, v->addr, 4);
		else if (v->op == FAST_SNAT)
			__builtin_memcpy(&ip4->saddr, v->addr, 4);
		ip4->ttl--;
		ip4->check = csum_adjust(ip4->check, v->ip_delta);
	}
	if (v->op == FAST_DNAT)
		th->dest = v->port;
	else if (v->op == FAST_SNAT)
		th->source = v->port;
	if (v->op != FAST_ROUTE)
		th->check = csum_adjust(th->check, v->l4_delta);
	__builtin_memcpy(eth, v->eth, 12);
	count_fast(v, ip_len);
	return fast_send(ctx, v);
}

/* "xdp.frags": frames larger than one buffer (jumbo MTUs) arrive as multi-buffer XDP frames;
 * the headers this program reads are always in the first buffer. */
SEC("xdp.frags")
int xvs_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct steer_key dst = {}, src = {};
	__u8 proto;
	void *l4;

	if ((void *)(eth + 1) > end)
		return pass();
	if (!(eth->h_dest[0] & 1)) {
		struct mac_key mk = { .ifindex = ctx->ingress_ifindex };
		__builtin_memcpy(mk.mac, eth->h_dest, 6);
		if (!bpf_map_lookup_elem(&own_macs, &mk)) {
			count(CNT_OTHER_HOST);
			return XDP_PASS;
		}
	}

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return pass();
		proto = ip->protocol;
		__builtin_memcpy(dst.addr, &ip->daddr, 4);
		__builtin_memcpy(src.addr, &ip->saddr, 4);
		dst.family = src.family = 4;
		l4 = (void *)ip + ip->ihl * 4;
		/* Non-first fragments carry no ports: the kernel's. First fragments of a service go
		 * to xvs, which counts and drops them. */
		if (ip->frag_off & bpf_htons(0x1fff))
			return pass();
		if (proto == IPPROTO_TCP && !(ip->frag_off & bpf_htons(0x2000))) {
			int r = fast_path(ctx, eth, ip, l4, end, 0);
			if (r >= 0)
				return r;
		}
		if (proto == IPPROTO_ICMP) {
			__u8 *type = l4;
			if ((void *)(type + 1) > end)
				return pass();
			/* Errors (unreachable, source quench, time exceeded) to a VIP. */
			if (*type == 3 || *type == 4 || *type == 11) {
				if (in_map(&services, &dst))
					return redirect(ctx);
			}
			return pass();
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return pass();
		proto = ip6->nexthdr;
		__builtin_memcpy(dst.addr, &ip6->daddr, 16);
		__builtin_memcpy(src.addr, &ip6->saddr, 16);
		dst.family = src.family = 6;
		l4 = ip6 + 1;
		if (proto == IPPROTO_TCP) {
			int r = fast_path(ctx, eth, ip6, l4, end, 1);
			if (r >= 0)
				return r;
		}
		if (proto == IPPROTO_ICMPV6) {
			__u8 *type = l4;
			if ((void *)(type + 1) > end)
				return pass();
			/* Errors (type < 128) to a VIP; ND and echo stay with the kernel. */
			if (*type < 128 && in_map(&services, &dst))
				return redirect(ctx);
			return pass();
		}
		/* Fragment header of a service's packet: xvs counts and drops it. */
		if (proto == 44 && in_map(&services, &dst))
			return redirect(ctx);
	} else {
		return pass();
	}

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return pass();
	__be16 *ports = l4;
	if ((void *)(ports + 2) > end)
		return pass();

	dst.proto = proto;
	dst.port = ports[1];
	if (is_service(&dst)) {
		struct tcphdr *th = l4;
		__u8 *chunk = (__u8 *)l4 + 12;
		/* (A truncated TCP header goes to xvs, which counts it as malformed.) An SCTP
		 * packet opens an association with an INIT chunk first. */
		int opening = proto == IPPROTO_UDP ||
			      (proto == IPPROTO_TCP && (void *)(th + 1) <= end && th->syn &&
			       !th->ack) ||
			      (proto == IPPROTO_SCTP && (void *)(chunk + 1) <= end && *chunk == 1);
		if (opening && !admit(ctx))
			return XDP_DROP;
		if (!opening)
			count_other(ctx);
		return redirect(ctx);
	}

	src.proto = proto;
	src.port = ports[0];
	if (is_nat_source(&src)) {
		struct steer_key local = dst;
		local.proto = 0;
		local.port = 0;
		if (!in_map(&local_addrs, &local))
			return redirect(ctx);
	}
	return pass();
}

char LICENSE[] SEC("license") = "GPL";

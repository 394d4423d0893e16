// SPDX-License-Identifier: GPL-2.0
/* Passes every frame. The rigs attach it to the far end of a balancer's veth: a veth takes
 * frames another program sends it from XDP (of any size: "xdp.frags") (XDP_TX, redirects: xvsd's fast path) only while
 * its peer runs NAPI, which an XDP program turns on; a NIC takes them as they are. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp.frags")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

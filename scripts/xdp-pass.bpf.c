// SPDX-License-Identifier: GPL-2.0
/* Passes every frame. The rigs attach it to the far end of a balancer's veth: a veth takes
 * the frames another program sends it from XDP (xvsd's fast path; of any size: "xdp.frags")
 * only while its peer runs NAPI, which an XDP program (or GRO) turns on; a NIC takes them as
 * they are. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp.frags")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

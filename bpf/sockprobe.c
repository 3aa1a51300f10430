//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The eBPF tier probe: the same counter of TCP sends written once per attach mechanism.
 * The agent loads and attaches these one at a time, in the order tp_btf, raw_tp, fentry,
 * kprobe, and keeps the first that works. Feature probes are not trusted for this (a kernel
 * may accept the kprobe program type and still have no kprobes), so the tier is decided by
 * a real program doing real work, and its counter proves that the hook fires.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct send_count {
	__u64 calls;
	__u64 bytes;
};

/* One slot per CPU, so concurrent senders never contend; userspace sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct send_count);
} send_counts SEC(".maps");

static __always_inline void count_send(__u16 protocol, long bytes)
{
	__u32 key = 0;
	struct send_count *c;

	if (protocol != IPPROTO_TCP)
		return;
	c = bpf_map_lookup_elem(&send_counts, &key);
	if (!c)
		return;
	c->calls++;
	if (bytes > 0)
		c->bytes += bytes;
}

/* trace_sock_send_length(struct sock *sk, int ret, int flags): ret is the bytes sent. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(tp_btf_sock_send_length, struct sock *sk, int ret, int flags)
{
	/* BTF-typed pointer: the verifier allows a direct, relocated load. */
	count_send(sk->sk_protocol, ret);
	return 0;
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(raw_tp_sock_send_length, struct sock *sk, int ret, int flags)
{
	/* Untyped pointer: read through bpf_probe_read_kernel, still CO-RE relocated. */
	count_send(BPF_CORE_READ(sk, sk_protocol), ret);
	return 0;
}

/* On entry only the requested size is known; that is what the byte count means here. */
SEC("fentry/tcp_sendmsg")
int BPF_PROG(fentry_tcp_sendmsg, struct sock *sk, struct msghdr *msg, size_t size)
{
	count_send(sk->sk_protocol, size);
	return 0;
}

SEC("kprobe/tcp_sendmsg")
int BPF_KPROBE(kprobe_tcp_sendmsg, struct sock *sk, struct msghdr *msg, size_t size)
{
	count_send(BPF_CORE_READ(sk, sk_protocol), size);
	return 0;
}

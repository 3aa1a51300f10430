/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The socket fields the residency programs read beyond kernel.h's. They are declared as
 * CO-RE flavours (the ___mesh suffix is dropped when matching the kernel's BTF), so they
 * relocate against the kernel's struct sock and tcp_sock without redefining kernel.h's.
 */
#ifndef __MESH_RESIDENCY_SOCK_H__
#define __MESH_RESIDENCY_SOCK_H__

struct sock_common___mesh {
	/* The local port in host byte order. */
	__u16 skc_num;
} __attribute__((preserve_access_index));

struct sock___mesh {
	struct sock_common___mesh __sk_common;
} __attribute__((preserve_access_index));

struct tcp_sock___mesh {
	/* The TCP stack's clock (ktime_get_ns), refreshed when a segment is received, when
	 * segments are sent, and when the application copies data out. */
	__u64 tcp_clock_cache;
} __attribute__((preserve_access_index));

#endif /* __MESH_RESIDENCY_SOCK_H__ */

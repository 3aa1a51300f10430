/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few kernel types and constants our programs use, written by hand in place of a
 * generated vmlinux.h: a full dump is megabytes of one kernel's layout, while CO-RE only
 * needs the fields we read, marked preserve_access_index so the loader relocates them
 * against the running kernel's BTF.
 *
 * Defining __VMLINUX_H__ tells bpf_tracing.h to use the kernel's pt_regs field names,
 * which is what this header provides.
 */
#ifndef __MESH_KERNEL_H__
#define __MESH_KERNEL_H__
#define __VMLINUX_H__

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef unsigned long size_t;
typedef _Bool bool;
#define true 1
#define false 0

/* From include/uapi/linux/bpf.h; the values are ABI. */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

#define BPF_F_MMAPABLE (1U << 10)

#define IPPROTO_TCP 6

struct sock {
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct msghdr;

#if defined(__TARGET_ARCH_x86)
/* The kprobe context on x86-64; its layout is ABI, only the argument registers are named. */
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};
#elif defined(__TARGET_ARCH_arm64)
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
};
struct pt_regs {
	struct user_pt_regs user_regs;
	__u64 orig_x0;
};
#endif

#endif /* __MESH_KERNEL_H__ */

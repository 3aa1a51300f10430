package ebpftier

// The probe objects are committed so that building the agent needs no clang. Regenerate
// after changing bpf/sockprobe.c (needs clang, llvm-strip and libbpf-dev headers):
//
//	go generate ./agent/ebpftier
//
// amd64 and arm64 objects are separate because the kprobe program reads arguments from
// the architecture's pt_regs.
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type send_count sockprobe ../../bpf/sockprobe.c -- -I../../bpf/include -O2 -g -Wall -Werror

package residency

// The objects are committed so that building the agent needs no clang. Regenerate after
// changing bpf/residency.c (needs clang, llvm-strip and libbpf-dev headers):
//
//	go generate ./agent/residency
//
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type tracked_proc -type sk_state residency ../../bpf/residency.c -- -I../../bpf/include -O2 -g -Wall -Werror

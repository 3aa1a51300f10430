package residency

// The objects are committed so that building the agent needs no clang. Regenerate after
// changing bpf/residency.c (needs clang, llvm-strip and libbpf-dev headers):
//
//	go generate ./agent/residency
//
// -mcpu=v3 for the compare-and-swap that claims a socket's slot (kernel 5.12+, older than
// the sock_send_length tracepoint needs anyway).
//
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type tracked_proc -type sk_state residency ../../bpf/residency.c -- -I../../bpf/include -O2 -mcpu=v3 -g -Wall -Werror

//go:build linux && (386 || amd64 || arm64)

package ebpftier

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON); run these tests as root")
	}
}

const (
	sends     = 200
	sendBytes = 1000
)

// loopbackSends makes TCP sends the probe programs must see: sends writes of sendBytes
// over a loopback connection, all read by the other end.
func loopbackSends(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		_, err = io.CopyN(io.Discard, conn, sends*sendBytes)
		done <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, sendBytes)
	for range sends {
		if _, err := conn.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// countsSends attaches tier's counter and checks it saw our loopback sends.
func countsSends(t *testing.T, c *SendCounter) {
	t.Helper()
	before, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	loopbackSends(t)
	after, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	calls, bytes := after.Calls-before.Calls, after.Bytes-before.Bytes
	t.Logf("%s: %d calls, %d bytes during %d loopback sends of %d bytes", c.Tier(), calls, bytes, sends, sendBytes)
	// Other TCP traffic on the node may add to the counts, never subtract.
	if calls < sends || bytes < sends*sendBytes {
		t.Errorf("%s counted %d calls, %d bytes; want at least %d calls, %d bytes", c.Tier(), calls, bytes, sends, sends*sendBytes)
	}
}

// kernelHooks reports independent evidence of which hooks exist on this kernel, so the
// test checks the probe against the kernel rather than against a remembered matrix.
type kernelHooks struct {
	// sendTracepoint: BTF has the sock_send_length raw tracepoint (tp_btf and raw_tp).
	sendTracepoint bool
	// sendFunc: BTF has tcp_sendmsg (fentry and kprobe).
	sendFunc bool
	// kprobes: the kernel registers the kprobe PMU, which the attach uses first; without
	// it (CONFIG_KPROBES unset) no kprobe can attach however tracefs is mounted.
	kprobes bool
}

func probeKernel(t *testing.T) kernelHooks {
	var k kernelHooks
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Logf("no kernel BTF: %v", err)
	} else {
		_, err = spec.AnyTypeByName("btf_trace_sock_send_length")
		k.sendTracepoint = err == nil
		var fn *btf.Func
		k.sendFunc = spec.TypeByName("tcp_sendmsg", &fn) == nil
	}
	_, err = os.Stat("/sys/bus/event_source/devices/kprobe")
	k.kprobes = err == nil
	t.Logf("kernel: %+v", k)
	return k
}

func (k kernelHooks) has(tier Tier) bool {
	switch tier {
	case TPBTF, RawTP:
		return k.sendTracepoint
	case FEntry:
		return k.sendFunc
	case KProbe:
		return k.sendFunc && k.kprobes
	}
	return false
}

// verifierRejected tells our bug (the verifier refusing the program, with its reasons in
// the log) from the kernel's refusal (a hook or program type not allowed, with no log).
func verifierRejected(err error) (*ebpf.VerifierError, bool) {
	var ve *ebpf.VerifierError
	return ve, errors.As(err, &ve) && len(ve.Log) > 0
}

// TestEachTierCountsWhatItClaims forces every tier in turn: a tier that attaches must
// count our sends, and one that fails must say why.
func TestEachTierCountsWhatItClaims(t *testing.T) {
	requireRoot(t)
	kernel := probeKernel(t)
	worked := map[Tier]bool{}
	for _, tier := range Order {
		t.Run(tier.String(), func(t *testing.T) {
			p := ProbeTiers([]Tier{tier})
			defer p.Close()
			if len(p.Attempts) != 1 || p.Attempts[0].Tier != tier {
				t.Fatalf("attempts = %+v; want one for %s", p.Attempts, tier)
			}
			if err := p.Attempts[0].Err; err != nil {
				t.Logf("%s unavailable: %v", tier, err)
				if p.Tier != None || p.Sends != nil {
					t.Errorf("failed tier left Tier=%s Sends=%v", p.Tier, p.Sends)
				}
				if ve, ok := verifierRejected(err); ok && kernel.has(tier) {
					t.Errorf("the kernel has the %s hook but the verifier rejected our program:\n%+v", tier, ve)
				}
				return
			}
			worked[tier] = true
			if p.Tier != tier || p.Sends == nil {
				t.Fatalf("OK attempt but Tier=%s Sends=%v", p.Tier, p.Sends)
			}
			countsSends(t, p.Sends)
		})
	}
	if kernel.sendTracepoint && !worked[RawTP] {
		t.Errorf("kernel BTF has the sock_send_length raw tracepoint, but raw_tp did not attach as root")
	}
	if worked[KProbe] && !kernel.kprobes {
		t.Errorf("kprobe attached although the kernel has no kprobe PMU")
	}
}

// TestAutomaticChoiceKeepsFirstWorkingTier is the agent's start-up path: the winner is the
// first tier that works on its own, and it stays attached and counting.
func TestAutomaticChoiceKeepsFirstWorkingTier(t *testing.T) {
	requireRoot(t)
	var want Tier = None
	for _, tier := range Order {
		c, err := AttachSendCounter(tier)
		if err == nil {
			c.Close()
			want = tier
			break
		}
	}
	p := ProbeTiers(Order)
	defer p.Close()
	if p.Tier != want {
		t.Fatalf("automatic choice = %s; trying each alone says %s", p.Tier, want)
	}
	if want == None {
		t.Fatalf("no tier attaches as root on this kernel: %+v", p.Attempts)
	}
	last := p.Attempts[len(p.Attempts)-1]
	if last.Tier != want || !last.OK() {
		t.Errorf("last attempt %+v; want the winner %s", last, want)
	}
	for _, a := range p.Attempts[:len(p.Attempts)-1] {
		if a.OK() {
			t.Errorf("attempt %+v succeeded but was not chosen", a)
		}
	}
	countsSends(t, p.Sends)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing twice is what a shutdown path racing a failed start-up does.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sends.Read(); err == nil {
		t.Error("Read after Close succeeded")
	}
}

func TestUnknownTier(t *testing.T) {
	if _, err := AttachSendCounter(None); err == nil || errors.Is(err, os.ErrNotExist) {
		t.Fatalf("AttachSendCounter(None) = %v; want a no-program error", err)
	}
}

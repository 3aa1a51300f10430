package meshpods

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// sidecarOwnPorts are never redirected inbound: Envoy's HBONE, stats and readiness ports and
// the agent's (as Istio's ISTIO_INBOUND chain returns them), and ssh.
var sidecarOwnPorts = []int{15008, 15090, ReadinessPort, 15020, 22}

// InterceptionRules is the iptables-restore input (nat table, applied with --noflush) that
// gives a pod Istio's REDIRECT-mode interception, in Istio's chain names: inbound TCP to the
// given ports (nil: every port but the sidecar's own) goes to InboundCapturePort; outbound
// traffic of ProxyUID and over loopback returns untouched. Outbound capture itself (a final
// redirect to OutboundCapturePort) is left out: the sidecars here proxy inbound only, and
// the pods' annotation says so (includeOutboundIPRanges "").
func InterceptionRules(inboundPorts []int) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("*nat")
	w(":ISTIO_INBOUND - [0:0]")
	w(":ISTIO_IN_REDIRECT - [0:0]")
	w(":ISTIO_OUTPUT - [0:0]")
	w("-A PREROUTING -p tcp -j ISTIO_INBOUND")
	if inboundPorts == nil {
		for _, p := range sidecarOwnPorts {
			w("-A ISTIO_INBOUND -p tcp -m tcp --dport %d -j RETURN", p)
		}
		w("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
	} else {
		for _, p := range inboundPorts {
			w("-A ISTIO_INBOUND -p tcp -m tcp --dport %d -j ISTIO_IN_REDIRECT", p)
		}
	}
	w("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports %d", InboundCapturePort)
	w("-A OUTPUT -p tcp -j ISTIO_OUTPUT")
	w("-A ISTIO_OUTPUT -m owner --uid-owner %d -j RETURN", ProxyUID)
	w("-A ISTIO_OUTPUT -m owner --gid-owner %d -j RETURN", ProxyUID)
	w("-A ISTIO_OUTPUT -o lo -j RETURN")
	w("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")
	w("COMMIT")
	return b.String()
}

// Intercept applies InterceptionRules inside the pod's network namespace from the node, as
// istio-cni does (iptables-restore in the pod's netns). The rules live and die with the
// namespace. Applying twice changes nothing.
func (p *Pod) Intercept(ctx context.Context) error {
	applied, err := p.InterceptionApplied(ctx)
	if err != nil || applied {
		return err
	}
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+p.NetNS, "iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(InterceptionRules(p.InboundPorts))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("meshpods: iptables-restore in %s (pod %s): %w: %s", p.NetNS, p.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// NATRules returns the pod network namespace's nat table in `iptables -S` form.
func (p *Pod) NATRules(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+p.NetNS, "iptables", "-w", "-t", "nat", "-S").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("meshpods: iptables -S in %s (pod %s): %w: %s", p.NetNS, p.Name, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// InterceptionApplied reports whether the pod's inbound traffic is redirected to the sidecar.
func (p *Pod) InterceptionApplied(ctx context.Context) (bool, error) {
	rules, err := p.NATRules(ctx)
	if err != nil {
		return false, err
	}
	return strings.Contains(rules, "-A PREROUTING -p tcp -j ISTIO_INBOUND\n") &&
		strings.Contains(rules, fmt.Sprintf("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports %d\n", InboundCapturePort)), nil
}

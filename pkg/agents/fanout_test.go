package agents

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/portforward"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"))
}

// agentServer answers Info for its node; hang makes it never answer, delay makes it
// slow. It counts calls in flight across all servers of a test through inFlight.
type agentServer struct {
	agentapi.UnimplementedAgentServer
	node     string
	hang     bool
	delay    time.Duration
	inFlight *gauge
}

type gauge struct {
	cur, max atomic.Int64
	calls    atomic.Int64
}

func (g *gauge) enter() {
	g.calls.Add(1)
	n := g.cur.Add(1)
	for {
		m := g.max.Load()
		if n <= m || g.max.CompareAndSwap(m, n) {
			return
		}
	}
}

func (g *gauge) leave() { g.cur.Add(-1) }

func (s *agentServer) Info(ctx context.Context, _ *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	if s.inFlight != nil {
		s.inFlight.enter()
		defer s.inFlight.leave()
	}
	if s.hang {
		<-ctx.Done() // never answers; returns only when the client gives up
		return nil, ctx.Err()
	}
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &agentapi.InfoResponse{NodeName: s.node, AgentVersion: "test"}, nil
}

// fleet is a set of in-process agents reachable over bufconn, one per pod name.
type fleet struct {
	mu        sync.Mutex
	listeners map[string]*bufconn.Listener
	dialed    map[string]int
	dialFail  map[string]error
	dialHang  map[string]bool
}

func newFleet(t *testing.T) *fleet {
	return &fleet{listeners: map[string]*bufconn.Listener{}, dialed: map[string]int{}, dialFail: map[string]error{}, dialHang: map[string]bool{}}
}

// serve starts a gRPC server for pod; srv nil means an agent that knows no RPCs at all
// (an older build that lacks Info).
func (f *fleet) serve(t *testing.T, pod string, srv agentapi.AgentServer) {
	t.Helper()
	l := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	if srv == nil {
		srv = &agentapi.UnimplementedAgentServer{}
	}
	agentapi.RegisterAgentServer(s, srv)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	f.mu.Lock()
	f.listeners[pod] = l
	f.mu.Unlock()
}

func (f *fleet) dial(ctx context.Context, pod *corev1.Pod) (net.Conn, error) {
	f.mu.Lock()
	f.dialed[pod.Name]++
	l, fail, hang := f.listeners[pod.Name], f.dialFail[pod.Name], f.dialHang[pod.Name]
	f.mu.Unlock()
	switch {
	case fail != nil:
		return nil, fail
	case hang:
		<-ctx.Done()
		return nil, ctx.Err()
	case l == nil:
		return nil, fmt.Errorf("no listener for %s", pod.Name)
	}
	return l.DialContext(ctx)
}

func (f *fleet) dials(pod string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dialed[pod]
}

func target(nodeName string) Target {
	return Target{Node: nodeName, Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent-" + nodeName}, Spec: corev1.PodSpec{NodeName: nodeName}}}
}

func info(ctx context.Context, _ Target, c agentapi.AgentClient) (string, error) {
	r, err := c.Info(ctx, &agentapi.InfoRequest{})
	if err != nil {
		return "", err
	}
	return r.GetNodeName(), nil
}

func TestFanout(t *testing.T) {
	f := newFleet(t)
	f.serve(t, "agent-ok-1", &agentServer{node: "ok-1"})
	f.serve(t, "agent-ok-2", &agentServer{node: "ok-2"})
	f.serve(t, "agent-hung", &agentServer{node: "hung", hang: true})
	f.serve(t, "agent-old", nil)
	f.dialFail["agent-dialfail"] = errors.New(`port-forward to pod mesh-system/agent-dialfail: unable to upgrade connection: pods "agent-dialfail" is forbidden`)
	f.dialHang["agent-dialhang"] = true

	broken := target("broken")
	broken.Problem = "crash loop: container agent restarted 7 times"
	targets := []Target{target("ok-1"), target("hung"), broken, target("dialfail"), target("old"), target("dialhang"), target("ok-2"), {Node: "empty", Problem: "no agent pod"}}

	const timeout = 500 * time.Millisecond
	start := time.Now()
	res := Fanout(context.Background(), targets, f.dial, FanoutOptions{Concurrency: 8, Timeout: timeout}, info)
	elapsed := time.Since(start)

	if len(res) != len(targets) {
		t.Fatalf("%d results for %d targets", len(res), len(targets))
	}
	for i := range res {
		if res[i].Target.Node != targets[i].Node {
			t.Fatalf("result %d is for %s, want %s (target order)", i, res[i].Target.Node, targets[i].Node)
		}
	}
	want := []struct {
		value string
		kind  error
		msg   string // exact, or a prefix when it ends in "*"
	}{
		{"ok-1", nil, ""},
		{"", ErrTimeout, "timed out after 500ms"},
		{"", ErrNotUsable, "crash loop: container agent restarted 7 times"},
		{"", ErrUnreachable, `agent unreachable: port-forward to pod mesh-system/agent-dialfail: unable to upgrade connection: pods "agent-dialfail" is forbidden`},
		{"", ErrVersionSkew, "agent too old: method Info not implemented (version skew)"},
		{"", ErrTimeout, "timed out after 500ms"},
		{"ok-2", nil, ""},
		{"", ErrNotUsable, "no agent pod"},
	}
	for i, w := range want {
		r := res[i]
		if r.Value != w.value {
			t.Errorf("%s: value %q, want %q", r.Target.Node, r.Value, w.value)
		}
		if w.kind == nil {
			if r.Err != nil {
				t.Errorf("%s: unexpected error %v", r.Target.Node, r.Err)
			}
			continue
		}
		if !errors.Is(r.Err, w.kind) {
			t.Errorf("%s: error %v is not %v", r.Target.Node, r.Err, w.kind)
		}
		if r.Err == nil || r.Err.Error() != w.msg {
			t.Errorf("%s: error %q, want %q", r.Target.Node, r.Err, w.msg)
		}
	}
	// The hung nodes cost their own timeout, not the others': everything ran in parallel.
	if elapsed > timeout+2*time.Second {
		t.Fatalf("fanout took %v with a %v per-node timeout", elapsed, timeout)
	}
	if n := f.dials("agent-broken"); n != 0 {
		t.Fatalf("target with a problem was dialed %d times", n)
	}
	// The gRPC status stays reachable for callers that want the code.
	if code := status.Code(res[4].Err); code != codes.Unimplemented {
		t.Fatalf("status code through NodeError: %v", code)
	}
}

// The slow node must not hold up the fast ones even when only one slot is left for them.
func TestFanoutHungNodeDoesNotStallOthers(t *testing.T) {
	f := newFleet(t)
	f.serve(t, "agent-hung", &agentServer{node: "hung", hang: true})
	targets := []Target{target("hung")}
	for i := range 20 {
		n := fmt.Sprintf("n%02d", i)
		f.serve(t, "agent-"+n, &agentServer{node: n})
		targets = append(targets, target(n))
	}
	var doneAt sync.Map
	start := time.Now()
	res := Fanout(context.Background(), targets, f.dial, FanoutOptions{Concurrency: 2, Timeout: 2 * time.Second},
		func(ctx context.Context, t Target, c agentapi.AgentClient) (string, error) {
			v, err := info(ctx, t, c)
			if err == nil {
				doneAt.Store(v, time.Since(start))
			}
			return v, err
		})
	if !errors.Is(res[0].Err, ErrTimeout) {
		t.Fatalf("hung node: %v", res[0].Err)
	}
	for _, r := range res[1:] {
		if r.Err != nil || r.Value != r.Target.Node {
			t.Fatalf("%s: %q %v", r.Target.Node, r.Value, r.Err)
		}
		d, _ := doneAt.Load(r.Value)
		if d.(time.Duration) > time.Second {
			t.Fatalf("%s finished after %v, behind the hung node", r.Target.Node, d)
		}
	}
}

func TestFanoutConcurrencyBound(t *testing.T) {
	f := newFleet(t)
	g := &gauge{}
	var targets []Target
	for i := range 30 {
		n := fmt.Sprintf("n%02d", i)
		f.serve(t, "agent-"+n, &agentServer{node: n, delay: 20 * time.Millisecond, inFlight: g})
		targets = append(targets, target(n))
	}
	res := Fanout(context.Background(), targets, f.dial, FanoutOptions{Concurrency: 4, Timeout: 5 * time.Second}, info)
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("%s: %v", r.Target.Node, r.Err)
		}
	}
	if g.calls.Load() != 30 {
		t.Fatalf("%d calls, want 30", g.calls.Load())
	}
	if m := g.max.Load(); m > 4 || m < 2 {
		t.Fatalf("max %d calls in flight, want at most 4 (and some parallelism)", m)
	}
}

func TestFanoutCancel(t *testing.T) {
	f := newFleet(t)
	var targets []Target
	for i := range 10 {
		n := fmt.Sprintf("n%02d", i)
		f.serve(t, "agent-"+n, &agentServer{node: n, hang: true})
		targets = append(targets, target(n))
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	res := Fanout(ctx, targets, f.dial, FanoutOptions{Concurrency: 3, Timeout: time.Minute}, info)
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("cancel took %v to end the fanout", el)
	}
	for _, r := range res {
		if !errors.Is(r.Err, ErrCanceled) || r.Err.Error() != "canceled" {
			t.Fatalf("%s: %v", r.Target.Node, r.Err)
		}
	}
}

func TestFanoutDefaultsAndEmpty(t *testing.T) {
	if res := Fanout(context.Background(), nil, nil, FanoutOptions{}, info); len(res) != 0 {
		t.Fatalf("results for no targets: %v", res)
	}
	f := newFleet(t)
	f.serve(t, "agent-a", &agentServer{node: "a"})
	res := Fanout(context.Background(), []Target{target("a")}, f.dial, FanoutOptions{}, info)
	if res[0].Err != nil || res[0].Value != "a" {
		t.Fatalf("%+v", res[0])
	}
}

func TestDescribeOtherCodes(t *testing.T) {
	ctx := context.Background()
	err := describe(status.Error(codes.PermissionDenied, "no"), nil, ctx, ctx, time.Second)
	if err.Error() != "agent error (PermissionDenied): no" {
		t.Fatalf("%v", err)
	}
	err = describe(errors.New("decoding result: bad"), nil, ctx, ctx, time.Second)
	if err.Error() != "decoding result: bad" {
		t.Fatalf("%v", err)
	}
	if got := transportReason(`connection error: desc = "transport: Error while dialing: pods \"x\" is forbidden"`); got != `pods "x" is forbidden` {
		t.Fatalf("transportReason: %q", got)
	}
	// A connection lost after the dial carries no dial error; the transport text is used.
	err = describe(status.Error(codes.Unavailable, `connection error: desc = "transport: error reading from server: EOF"`), nil, ctx, ctx, time.Second)
	if err.Error() != "agent unreachable: error reading from server: EOF" || !errors.Is(err, ErrUnreachable) {
		t.Fatalf("%v", err)
	}
}

// PortForwardDial must aim at the pod's portforward subresource in its own namespace
// (the port travels in the stream headers, which need a real upgrade to see).
func TestPortForwardDialTargetsPod(t *testing.T) {
	var got string
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		got = string(buf[:n])
		_, _ = c.Write([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
	}()
	d, err := portforward.NewDialer(&rest.Config{Host: "http://" + l.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	d.DisableWebsockets = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "mesh-system", Name: "mesh-agent-x"}}
	_, err = PortForwardDial(d)(ctx, pod)
	<-done
	if err == nil || !strings.Contains(err.Error(), "mesh-system/mesh-agent-x") {
		t.Fatalf("err %v", err)
	}
	if !strings.HasPrefix(got, "POST /api/v1/namespaces/mesh-system/pods/mesh-agent-x/portforward ") {
		t.Fatalf("request %q", strings.SplitN(got, "\n", 2)[0])
	}
}

package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kubectl-mesh/kubectl-mesh/agent/abtest"
	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/agent/netns"
	"github.com/kubectl-mesh/kubectl-mesh/agent/netns/podtest"
	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
)

// lookupSource is a synced discovery whose pods are given by the test.
type lookupSource struct {
	sidecars map[string]discovery.Sidecar
	errs     map[string]error
}

func (l lookupSource) Snapshot() (discovery.Snapshot, error) {
	var s discovery.Snapshot
	for _, sc := range l.sidecars {
		s.Sidecars = append(s.Sidecars, sc)
	}
	return s, nil
}

func (l lookupSource) Lookup(ns, name string) (discovery.Sidecar, error) {
	if sc, ok := l.sidecars[ns+"/"+name]; ok {
		return sc, nil
	}
	if err, ok := l.errs[ns+"/"+name]; ok {
		return discovery.Sidecar{}, err
	}
	return discovery.Sidecar{}, fmt.Errorf("%s/%s: %w", ns, name, discovery.ErrPodNotFound)
}

func fakeSidecar(ns, name string) discovery.Sidecar {
	return discovery.Sidecar{
		Pod:       discovery.PodRef{Namespace: ns, Name: name, UID: "uid-" + name},
		PodIPs:    []string{"198.18.250.2"},
		Processes: []discovery.Process{{PID: 1, Comm: "envoy", Role: discovery.RoleProxy}},
	}
}

// fakeAgent is an agent whose per-pod measurement is fake: each pod counts requests, then
// either returns at once or holds until the run's context ends (Stop or a dropped stream).
type fakeAgent struct {
	*Agent
	started chan string // pod name, when its fake load starts
	hold    atomic.Bool
}

func newFakeAgent(t *testing.T, hold bool) *fakeAgent {
	t.Helper()
	sampler, err := usage.NewSampler("", "")
	if err != nil {
		t.Fatal(err)
	}
	src := lookupSource{
		sidecars: map[string]discovery.Sidecar{"web/a": fakeSidecar("web", "a"), "web/b": fakeSidecar("web", "b")},
		errs:     map[string]error{"web/plain": fmt.Errorf("web/plain: %w: no sidecar container", discovery.ErrNoSidecar)},
	}
	f := &fakeAgent{Agent: New(Facts{NodeName: "n1"}, SyncedDiscovery(src), sampler), started: make(chan string, 16)}
	f.hold.Store(hold)
	f.runPod = func(ctx context.Context, job podJob, c *runCounters) podOutcome {
		c.requests.Add(100)
		f.started <- job.Sidecar.Pod.Name
		if f.hold.Load() {
			<-ctx.Done()
		}
		return podOutcome{
			Result:   &agentapi.PodResult{Pod: discovery.APIPodRef(job.Sidecar.Pod), Requests: 100},
			Measured: time.Second,
			Stopped:  ctx.Err() != nil,
		}
	}
	return f
}

func validRun(id string, pods ...string) *agentapi.RunRequest {
	req := &agentapi.RunRequest{
		RunId: id,
		Port:  8080,
		Load:  &agentapi.LoadSpec{Rate: 100, Duration: durationpb.New(2 * time.Second)},
	}
	for _, p := range pods {
		ns, name, _ := strings.Cut(p, "/")
		req.Targets = append(req.Targets, &agentapi.PodRef{Namespace: ns, Name: name})
	}
	return req
}

// collect reads a Run stream to its end: the progress events and the result.
func collect(stream agentapi.Agent_RunClient) ([]*agentapi.Progress, *agentapi.RunResult, error) {
	var progress []*agentapi.Progress
	var res *agentapi.RunResult
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return progress, res, nil
		}
		if err != nil {
			return progress, res, err
		}
		if p := ev.GetProgress(); p != nil {
			progress = append(progress, p)
		}
		if r := ev.GetResult(); r != nil {
			res = r
		}
	}
}

func runOnce(t *testing.T, c agentapi.AgentClient, req *agentapi.RunRequest) ([]*agentapi.Progress, *agentapi.RunResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.Run(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	return collect(stream)
}

func TestRunRejectsBadRequests(t *testing.T) {
	c := dial(t, newFakeAgent(t, false).Agent)
	bad := map[string]func(r *agentapi.RunRequest){
		"no targets":     func(r *agentapi.RunRequest) { r.Targets = nil },
		"unnamed target": func(r *agentapi.RunRequest) { r.Targets[0].Name = "" },
		"no port":        func(r *agentapi.RunRequest) { r.Port = 0 },
		"port too big":   func(r *agentapi.RunRequest) { r.Port = 70000 },
		"no load":        func(r *agentapi.RunRequest) { r.Load = nil },
		"rate abuse":     func(r *agentapi.RunRequest) { r.Load.Rate = 1e9 },
		"duration abuse": func(r *agentapi.RunRequest) { r.Load.Duration = durationpb.New(100 * time.Hour) },
		"no duration":    func(r *agentapi.RunRequest) { r.Load.Duration = nil },
		"unknown tier":   func(r *agentapi.RunRequest) { r.ForceTier = 99 },
	}
	for name, mutate := range bad {
		req := validRun("bad", "web/a")
		mutate(req)
		_, _, err := runOnce(t, c, req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v; want InvalidArgument", name, err)
		}
	}
}

func TestRunWithoutDiscovery(t *testing.T) {
	c := dial(t, New(Facts{}, nil, nil))
	if _, _, err := runOnce(t, c, validRun("r", "web/a")); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Run: %v; want FailedPrecondition", err)
	}
	ctx := context.Background()
	if _, err := c.Stop(ctx, &agentapi.StopRequest{RunId: "r"}); status.Code(err) != codes.NotFound {
		t.Errorf("Stop: %v; want NotFound", err)
	}
	if _, err := c.Result(ctx, &agentapi.ResultRequest{RunId: "r"}); status.Code(err) != codes.NotFound {
		t.Errorf("Result: %v; want NotFound", err)
	}
}

func TestRunPerPodErrors(t *testing.T) {
	c := dial(t, newFakeAgent(t, false).Agent)
	_, res, err := runOnce(t, c, validRun("mixed", "web/a", "web/missing", "web/plain", "web/b"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetPods()) != 2 || res.Pods[0].GetPod().GetName() != "a" || res.Pods[1].GetPod().GetName() != "b" {
		t.Fatalf("pods %v; want a and b measured", res.GetPods())
	}
	want := map[string]string{"missing": "not found", "plain": "no mesh sidecar"}
	if len(res.GetErrors()) != len(want) {
		t.Fatalf("errors %v; want one for each of %v", res.GetErrors(), want)
	}
	for _, e := range res.GetErrors() {
		if !strings.Contains(e.GetError(), want[e.GetPod().GetName()]) {
			t.Errorf("error for %s: %q; want it to say %q", e.GetPod().GetName(), e.GetError(), want[e.GetPod().GetName()])
		}
	}
	if res.GetRunId() != "mixed" || res.GetNodeName() != "n1" || res.GetStopped() {
		t.Errorf("run id %q node %q stopped %v", res.GetRunId(), res.GetNodeName(), res.GetStopped())
	}
	if res.GetAchievedRate() != 100 {
		t.Errorf("achieved rate %v; want 200 requests over 2 s = 100/s", res.GetAchievedRate())
	}
	if res.GetAgent() == nil {
		t.Error("no agent usage")
	}
}

func TestRunOneAtATimeAndStop(t *testing.T) {
	f := newFakeAgent(t, true)
	c := dial(t, f.Agent)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.Run(ctx, validRun("first", "web/a", "web/b"))
	if err != nil {
		t.Fatal(err)
	}
	<-f.started

	_, _, err = runOnce(t, c, validRun("second", "web/a"))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "a run is in progress: first") {
		t.Errorf("second run: %v; want FailedPrecondition naming the first", err)
	}
	if _, err := c.Result(ctx, &agentapi.ResultRequest{RunId: "first"}); status.Code(err) != codes.Unavailable ||
		!strings.Contains(err.Error(), "run first still running") {
		t.Errorf("Result while running: %v; want Unavailable", err)
	}
	if _, err := c.Stop(ctx, &agentapi.StopRequest{RunId: "other"}); status.Code(err) != codes.NotFound {
		t.Errorf("Stop of an unknown run: %v; want NotFound", err)
	}
	resp, err := c.Stop(ctx, &agentapi.StopRequest{RunId: "first"})
	if err != nil || !resp.GetStopped() {
		t.Fatalf("Stop: %v, %v", resp, err)
	}
	_, res, err := collect(stream)
	if err != nil {
		t.Fatal(err)
	}
	if !res.GetStopped() || len(res.GetPods()) != 1 || len(res.GetErrors()) != 1 ||
		!strings.Contains(res.Errors[0].GetError(), "run ended before") {
		t.Errorf("stopped result: %v; want stopped, pod a measured and b not", res)
	}
	kept, err := c.Result(ctx, &agentapi.ResultRequest{RunId: "first"})
	if err != nil || !proto.Equal(kept, res) {
		t.Errorf("Result after the run: %v, %v; want the streamed result", kept, err)
	}
	if resp, err := c.Stop(ctx, &agentapi.StopRequest{RunId: "first"}); err != nil || resp.GetStopped() {
		t.Errorf("Stop of a finished run: %v, %v; want stopped=false", resp, err)
	}
	// The agent is free again.
	f.hold.Store(false)
	if _, res, err := runOnce(t, c, validRun("second", "web/a")); err != nil || res.GetStopped() {
		t.Errorf("run after the stopped one: %v, %v", res, err)
	}
}

func TestRunResultSurvivesDroppedStream(t *testing.T) {
	f := newFakeAgent(t, true)
	c := dial(t, f.Agent)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Run(ctx, validRun("dropped", "web/a"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if p := ev.GetProgress(); p == nil || p.GetRequests() != 100 || p.GetElapsed().AsDuration() <= 0 {
		t.Fatalf("first event %v; want progress with the fake's 100 requests", ev)
	}
	cancel()

	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := c.Result(context.Background(), &agentapi.ResultRequest{RunId: "dropped"})
		if status.Code(err) == codes.Unavailable && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !res.GetStopped() || len(res.GetPods()) != 1 || res.GetEndTime() == nil {
			t.Errorf("kept result %v; want the stopped partial result", res)
		}
		break
	}
}

func TestRunKeepsTheLastResults(t *testing.T) {
	c := dial(t, newFakeAgent(t, false).Agent)
	for i := range KeptResults + 2 {
		if _, _, err := runOnce(t, c, validRun(fmt.Sprint("r", i), "web/a")); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	for i := range KeptResults + 2 {
		_, err := c.Result(ctx, &agentapi.ResultRequest{RunId: fmt.Sprint("r", i)})
		if i < 2 && status.Code(err) != codes.NotFound {
			t.Errorf("r%d: %v; want NotFound (dropped)", i, err)
		}
		if i >= 2 && err != nil {
			t.Errorf("r%d: %v; want kept", i, err)
		}
	}
}

func TestABConfigFallsBack(t *testing.T) {
	base := validRun("x", "web/a").Load
	for name, c := range map[string]struct {
		mutate func(*agentapi.LoadSpec)
		reason string
	}{
		"http1":       {func(*agentapi.LoadSpec) {}, ""},
		"h2":          {func(l *agentapi.LoadSpec) { l.Protocol = agentapi.Protocol_PROTOCOL_HTTP2 }, "HTTP/1.1"},
		"closed loop": {func(l *agentapi.LoadSpec) { l.Rate = 0 }, "closed loop"},
		"fast":        {func(l *agentapi.LoadSpec) { l.Rate = abtest.MaxRate * 2 }, "limit"},
		"post":        {func(l *agentapi.LoadSpec) { l.Method = "POST" }, "plain GETs"},
	} {
		spec := proto.Clone(base).(*agentapi.LoadSpec)
		c.mutate(spec)
		o, err := loadgen.FromSpec(spec, "127.0.0.1:8080")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cfg, reason := abConfig(o)
		if c.reason == "" && (reason != "" || cfg.Rate != 100 || cfg.Duration != 2*time.Second) {
			t.Errorf("%s: %+v, %q", name, cfg, reason)
		}
		if c.reason != "" && !strings.Contains(reason, c.reason) {
			t.Errorf("%s: reason %q; want it to mention %q", name, reason, c.reason)
		}
	}
}

// Real run: a pod made of a network namespace with Istio's inbound redirect, an app inside
// it and Debian's nginx as the sidecar under UID 1337, measured by the real Run.

// realPod builds the pod and returns its IP, its namespace path and the nginx PIDs (master
// first). Everything is removed when the test ends, failed or not.
func realPod(t *testing.T) (podIP, nsPath string, pids []int) {
	t.Helper()
	pod := podtest.New(t, "mrn", 200, 512)
	nsPath = pod.NSPath

	// The app listens inside the pod on every address; its socket was made there, so serving
	// it from this process is the same, on the wire, as an app container.
	ln, err := netns.Listen(context.Background(), nsPath, "tcp", fmt.Sprintf("0.0.0.0:%d", podtest.AppPort))
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })

	return pod.PodIP, nsPath, podtest.StartNginx(t, pod)
}

// staticSource is a discovery that knows the given sidecars and has no Lookup, so Run
// searches its snapshot.
type staticSource []discovery.Sidecar

func (s staticSource) Snapshot() (discovery.Snapshot, error) {
	return discovery.Snapshot{Sidecars: s}, nil
}

func TestRunRealNginxSidecar(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates a network namespace, a veth pair, iptables rules and eBPF programs")
	}
	podIP, _, pids := realPod(t)
	var procs []discovery.Process
	for _, pid := range pids {
		procs = append(procs, discovery.Process{PID: pid, Comm: "nginx", UID: podtest.ProxyUID, Role: discovery.RoleProxy})
	}
	sc := standinSidecar(t, "web-0", podIP, procs...)
	sc.ProxyUID = podtest.ProxyUID
	sampler, err := usage.NewSampler("", "")
	if err != nil {
		t.Fatal(err)
	}
	// The tier the agent's start-up probe would have picked on this kernel.
	probe := ebpftier.ProbeTiers(ebpftier.Order)
	tier := probe.Tier
	probe.Close()
	c := dial(t, New(Facts{NodeName: "n1", Tier: tier}, SyncedDiscovery(staticSource{sc}), sampler))

	req := &agentapi.RunRequest{
		RunId:   "real",
		Targets: []*agentapi.PodRef{{Namespace: "shop", Name: "web-0"}},
		Port:    podtest.AppPort,
		Load: &agentapi.LoadSpec{
			Protocol: agentapi.Protocol_PROTOCOL_HTTP1,
			Rate:     200,
			Duration: durationpb.New(2500 * time.Millisecond),
			Warmup:   durationpb.New(500 * time.Millisecond),
		},
	}
	progress, res, err := runOnce(t, c, req)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range res.GetPods()[0].GetAdded() {
		t.Logf("added latency: %v", a)
	}
	if len(progress) == 0 || progress[len(progress)-1].GetRequests() == 0 {
		t.Errorf("progress %v; want events counting requests", progress)
	}
	if len(res.GetPods()) != 1 {
		t.Fatalf("pods %v, errors %v; want the one pod measured", res.GetPods(), res.GetErrors())
	}
	pr := res.Pods[0]
	if pr.GetRequests() < 300 || pr.GetThroughSidecar() == nil || pr.GetAroundSidecar() == nil {
		t.Errorf("requests %d, histograms %v %v; want ~400 requests and both histograms", pr.GetRequests(), pr.GetThroughSidecar() != nil, pr.GetAroundSidecar() != nil)
	}
	if pr.GetSidecarIdle() == nil || pr.GetSidecarLoaded() == nil {
		t.Errorf("sidecar usage idle %v loaded %v; want both", pr.GetSidecarIdle(), pr.GetSidecarLoaded())
	}
	methods := map[string]*agentapi.AddedLatency{}
	for _, a := range pr.GetAdded() {
		methods[a.GetMethod()] = a
	}
	p50 := func(a *agentapi.AddedLatency) time.Duration {
		for _, q := range a.GetDeltas() {
			if q.GetQuantile() == 0.5 {
				return q.GetValue().AsDuration()
			}
		}
		return 0
	}
	if ab := methods[abtest.Method]; ab == nil || p50(ab) <= 0 {
		t.Errorf("A/B %v; want a positive Δp50", ab)
	}
	ebpf := methods[ResidencyMethod]
	if ebpf == nil || p50(ebpf) <= 0 {
		t.Errorf("eBPF residency %v; want a positive p50", ebpf)
	} else if ebpf.GetTier() != agentapi.EbpfTier_EBPF_TIER_TP_BTF && ebpf.GetTier() != agentapi.EbpfTier_EBPF_TIER_RAW_TP {
		t.Errorf("eBPF residency at tier %v; want tp_btf or raw_tp", ebpf.GetTier())
	}
	// The two methods must agree on the real sidecar. A/B also counts what residency cannot
	// see: the REDIRECT and the extra loopback hop to and from the proxy (25–50 µs here when
	// idle), so A/B may exceed residency by up to 200 µs and fall below it by at most 50 µs
	// (the noise of two p50s of a few hundred samples under a busy CI machine).
	if ab := methods[abtest.Method]; ab != nil && ebpf != nil {
		diff := p50(ab) - p50(ebpf)
		t.Logf("A/B Δp50 %v, eBPF residency p50 %v: A/B − residency = %v", p50(ab), p50(ebpf), diff)
		if diff < -50*time.Microsecond || diff > 200*time.Microsecond {
			t.Errorf("A/B Δp50 %v and residency p50 %v disagree by %v; want A/B − residency in [−50µs, +200µs]", p50(ab), p50(ebpf), diff)
		}
	}
	if res.GetAgent() == nil || res.GetStopped() || res.GetAchievedRate() < 170 || res.GetAchievedRate() > 220 {
		t.Errorf("agent usage %v, stopped %v, achieved %v/s", res.GetAgent(), res.GetStopped(), res.GetAchievedRate())
	}
	kept, err := c.Result(context.Background(), &agentapi.ResultRequest{RunId: "real"})
	if err != nil || !proto.Equal(kept, res) {
		t.Errorf("Result(real): %v; want the streamed result", err)
	}

	// A forced tier that has no residency programs is the pod's error; A/B still measures.
	req.RunId, req.ForceTier = "forced", agentapi.EbpfTier_EBPF_TIER_FENTRY
	req.Load.Duration, req.Load.Warmup = durationpb.New(1200*time.Millisecond), durationpb.New(200*time.Millisecond)
	_, res, err = runOnce(t, c, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetPods()) != 1 || len(res.Pods[0].GetAdded()) != 1 || res.Pods[0].Added[0].GetMethod() != abtest.Method {
		t.Errorf("forced fentry: pods %v; want the pod with A/B only", res.GetPods())
	}
	said := false
	for _, e := range res.GetErrors() {
		said = said || strings.Contains(e.GetError(), "forced eBPF tier fentry did not attach")
	}
	if !said {
		t.Errorf("forced fentry: errors %v; want one saying the forced tier did not attach", res.GetErrors())
	}
}

// standinSidecar describes proxy processes started by a test as the istio-proxy sidecar of
// pod shop/name, with the cgroup the first is in, the way discovery would.
func standinSidecar(t *testing.T, name, podIP string, procs ...discovery.Process) discovery.Sidecar {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", procs[0].PID))
	if err != nil {
		t.Fatal(err)
	}
	lines, err := discovery.ParseProcCgroup(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	sc := discovery.Sidecar{
		Pod:         discovery.PodRef{Namespace: "shop", Name: name, UID: "uid-" + name},
		PodIPs:      []string{podIP},
		ContainerID: "istio-proxy-standin",
		CgroupPaths: discovery.CgroupPaths(lines),
		Processes:   procs,
	}
	sc.Recognition.Container = "istio-proxy"
	return sc
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/budget"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/runstore"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/smp"
)

// How a fake agent behaves in Run.
const (
	runOK    = ""
	runFail  = "fail"  // refuses the run, as an agent without a usage sampler does
	runBreak = "break" // the connection drops mid-run; the result waits for Result
	runBlock = "block" // runs until Stop, then returns a stopped result
)

// runServer is an agent that answers Run like the real one: progress events, then a result
// with histograms, added latency by A/B and eBPF residency, and sidecar usage.
type runServer struct {
	agentapi.UnimplementedAgentServer
	node string
	mode string
	// breakConn drops the client's connection (runBreak).
	breakConn func()
	// started is closed once a runBlock run is under way.
	started   chan struct{}
	stopped   chan struct{}
	startOnce sync.Once
	stopOnce  sync.Once

	mu     sync.Mutex
	reqs   []*agentapi.RunRequest
	stops  []string
	stopAt time.Time
	kept   *agentapi.RunResult
	// results counts the Result calls.
	results int
}

func newRunServer(node, mode string) *runServer {
	return &runServer{node: node, mode: mode, started: make(chan struct{}), stopped: make(chan struct{})}
}

func (s *runServer) Run(req *agentapi.RunRequest, stream agentapi.Agent_RunServer) error {
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	s.mu.Unlock()
	if s.mode == runFail {
		return status.Error(codes.FailedPrecondition, "the agent has no usage sampler (procfs or cgroups unreadable at start-up)")
	}
	for i := 1; i <= 2; i++ {
		p := &agentapi.Progress{Elapsed: durationpb.New(time.Duration(i) * time.Second), Requests: uint64(100 * i), AchievedRate: req.GetLoad().GetRate()}
		if err := stream.Send(&agentapi.RunEvent{Event: &agentapi.RunEvent_Progress{Progress: p}}); err != nil {
			return err
		}
	}
	res := fakeRunResult(s.node, req)
	switch s.mode {
	case runBreak:
		s.keep(res)
		s.breakConn()
		<-stream.Context().Done()
		return stream.Context().Err()
	case runBlock:
		s.startOnce.Do(func() { close(s.started) })
		select {
		case <-s.stopped:
			res.Stopped = true
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
	s.keep(res)
	return stream.Send(&agentapi.RunEvent{Event: &agentapi.RunEvent_Result{Result: res}})
}

func (s *runServer) keep(res *agentapi.RunResult) {
	s.mu.Lock()
	s.kept = res
	s.mu.Unlock()
}

func (s *runServer) Stop(_ context.Context, req *agentapi.StopRequest) (*agentapi.StopResponse, error) {
	s.mu.Lock()
	s.stops = append(s.stops, req.GetRunId())
	s.stopAt = time.Now()
	running := len(s.reqs) > 0 && s.reqs[len(s.reqs)-1].GetRunId() == req.GetRunId()
	s.mu.Unlock()
	if !running {
		return nil, status.Errorf(codes.NotFound, "no run %q on this agent", req.GetRunId())
	}
	s.stopOnce.Do(func() { close(s.stopped) })
	return &agentapi.StopResponse{Stopped: true}, nil
}

func (s *runServer) Result(_ context.Context, req *agentapi.ResultRequest) (*agentapi.RunResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results++
	if s.kept == nil || s.kept.GetRunId() != req.GetRunId() {
		return nil, status.Errorf(codes.NotFound, "no result for run %q on this agent", req.GetRunId())
	}
	return s.kept, nil
}

func (s *runServer) requests() []*agentapi.RunRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*agentapi.RunRequest(nil), s.reqs...)
}

func (s *runServer) stopIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.stops...)
}

// fakeRunResult measures every target pod as pkg/perfrun/perfruntest does: the sidecar adds
// about 50µs to a 150µs round trip.
func fakeRunResult(node string, req *agentapi.RunRequest) *agentapi.RunResult {
	rng := rand.New(rand.NewPCG(uint64(len(node)), 7))
	start := time.Now().Add(-10 * time.Second)
	res := &agentapi.RunResult{
		RunId: req.GetRunId(), NodeName: node, StartTime: timestamppb.New(start), EndTime: timestamppb.Now(),
		Load: req.GetLoad(), Agent: &agentapi.Usage{CpuMillicores: 12, MemoryWorkingSetBytes: 50 << 20},
	}
	const added, n = 50 * time.Microsecond, 1000
	for _, pod := range req.GetTargets() {
		through, around, rs := histogram.New(), histogram.New(), histogram.New()
		for range n {
			base := 150*time.Microsecond + time.Duration(rng.ExpFloat64()*float64(40*time.Microsecond))
			histogram.Record(around, base)
			histogram.Record(through, base+added+time.Duration(rng.ExpFloat64()*float64(10*time.Microsecond)))
			histogram.Record(rs, added+time.Duration(rng.ExpFloat64()*float64(5*time.Microsecond)))
		}
		ab := &agentapi.AddedLatency{Method: perfrun.MethodAB, Tier: agentapi.EbpfTier_EBPF_TIER_NONE}
		res1 := &agentapi.AddedLatency{Method: perfrun.MethodResidency, Tier: agentapi.EbpfTier_EBPF_TIER_TP_BTF, Histogram: histogram.ToProto(rs)}
		for _, q := range perfrun.Quantiles {
			d := histogram.Quantile(through, q) - histogram.Quantile(around, q)
			ab.Deltas = append(ab.Deltas, &agentapi.Quantile{Quantile: q, Value: durationpb.New(d),
				CiLow: durationpb.New(d - 5*time.Microsecond), CiHigh: durationpb.New(d + 5*time.Microsecond)})
			res1.Deltas = append(res1.Deltas, &agentapi.Quantile{Quantile: q, Value: durationpb.New(histogram.Quantile(rs, q))})
		}
		res.Pods = append(res.Pods, &agentapi.PodResult{
			Pod: pod, ThroughSidecar: histogram.ToProto(through), AroundSidecar: histogram.ToProto(around),
			Added:         []*agentapi.AddedLatency{ab, res1},
			SidecarIdle:   &agentapi.Usage{CpuMillicores: 2, MemoryWorkingSetBytes: 40 << 20},
			SidecarLoaded: &agentapi.Usage{CpuMillicores: 60, MemoryWorkingSetBytes: 48 << 20},
			Requests:      2 * n, Measured: durationpb.New(9 * time.Second),
		})
	}
	res.AchievedRate = float64(2*n*len(req.GetTargets())) / 9
	return res
}

func capacityNode(name string) *corev1.Node {
	n := node(name)
	n.Status.Capacity = corev1.ResourceList{corev1.ResourceCPU: apiresource.MustParse("4"), corev1.ResourceMemory: apiresource.MustParse("8Gi")}
	n.Status.NodeInfo = corev1.NodeSystemInfo{KernelVersion: "6.8.0", OSImage: "Debian GNU/Linux 13", Architecture: "amd64", ContainerRuntimeVersion: "containerd://2.1.0"}
	return n
}

// istiod is the control plane as Istio's chart installs it, so that the run records the
// mesh's version.
func istiod() []runtime.Object {
	lbls := map[string]string{"app": "istiod", "istio": "pilot", "istio.io/rev": "default"}
	c := corev1.Container{Name: "discovery", Image: "docker.io/istio/pilot:1.24.0-distroless"}
	yes := true
	d := deployment("istio-system", "istiod", lbls)
	d.Labels = lbls
	d.Spec.Template = corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbls}, Spec: corev1.PodSpec{Containers: []corev1.Container{c}}}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod-7c9f8b6d5-x2k4j", UID: types.UID("uid-istiod"),
			Labels:          map[string]string{"app": "istiod", "istio": "pilot", "istio.io/rev": "default", "pod-template-hash": "7c9f8b6d5"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "istiod-7c9f8b6d5", Controller: &yes}}},
		Spec:   corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{c}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: "discovery", Image: c.Image, Ready: true}}},
	}
	return []runtime.Object{d, p}
}

// perfEnv is a meshed Deployment demo/web with one pod on node-a and one on node-b, a third
// node with an agent but no target pod, and a fake agent per node behaving as modes says.
type perfEnv struct {
	reach   agentReach
	servers map[string]*runServer

	mu    sync.Mutex
	dials map[string]int
}

func (pe *perfEnv) dialed(node string) int {
	pe.mu.Lock()
	defer pe.mu.Unlock()
	return pe.dials[node]
}

func newPerfEnv(t *testing.T, modes map[string]string) *perfEnv {
	t.Helper()
	objs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: manifests.DefaultNamespace}},
		linuxDaemonSet(),
		capacityNode("node-a"), capacityNode("node-b"), capacityNode("node-c"),
		agentPod("mesh-agent-aaaaa", "node-a", true, ""),
		agentPod("mesh-agent-bbbbb", "node-b", true, ""),
		agentPod("mesh-agent-ccccc", "node-c", true, ""),
		deployment("demo", "web", webLabels),
		meshedPod("demo", "web-a", "node-a", webLabels),
		meshedPod("demo", "web-b", "node-b", webLabels),
	}
	objs = append(objs, istiod()...)
	env := newFakeEnv(t, objs)
	pe := &perfEnv{servers: map[string]*runServer{}, dials: map[string]int{}}
	mu := &pe.mu
	conns := map[string][]net.Conn{}
	dialers := map[string]func(context.Context) (net.Conn, error){}
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		s := newRunServer(n, modes[n])
		s.breakConn = func() {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns[n] {
				_ = c.Close()
			}
		}
		pe.servers[n] = s
		dialers[n] = startAgent(t, s)
	}
	pe.reach = agentReach{
		newCluster: env.newCluster,
		newDial: func(*cluster) (agents.DialFunc, error) {
			return func(ctx context.Context, pod *corev1.Pod) (net.Conn, error) {
				n := pod.Spec.NodeName
				d, ok := dialers[n]
				if !ok {
					return nil, errors.New("no agent on " + n)
				}
				c, err := d(ctx)
				if err == nil {
					mu.Lock()
					conns[n] = append(conns[n], c)
					pe.dials[n]++
					mu.Unlock()
				}
				return c, err
			}, nil
		},
	}
	return pe
}

func perfRunOptions(t *testing.T, reach agentReach) (*PerfRunOptions, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	streams, out, errOut := testStreams()
	tty := false
	o := &PerfRunOptions{
		configFlags: genericclioptions.NewConfigFlags(false),
		IOStreams:   streams,
		Rate:        500, Duration: 10 * time.Second, Warmup: time.Second,
		Protocol: "http", Method: "GET", Path: "/",
		AgentNamespace: manifests.DefaultNamespace,
		target:         &perfrun.Target{Kind: "deploy", Name: "web", Namespace: "demo"},
		reach:          reach,
		progressTTY:    &tty,
	}
	o.Store = "local"
	o.dir = t.TempDir()
	return o, out, errOut
}

// storedRun reads back the one run in the options' store.
func storedRun(t *testing.T, o *PerfRunOptions) *perfrun.Run {
	t.Helper()
	entries, errs := runstore.List(context.Background(), runstore.Local(o.dir))
	if len(errs) > 0 || len(entries) != 1 {
		t.Fatalf("stored runs %v, errors %v", entries, errs)
	}
	r, _, err := runstore.Open(context.Background(), entries[0].ID, runstore.Local(o.dir))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPerfRun(t *testing.T) {
	pe := newPerfEnv(t, nil)
	o, out, errOut := perfRunOptions(t, pe.reach)
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatalf("%v\nstderr:\n%s", err, errOut)
	}
	r := storedRun(t, o)
	if r.GetInterrupted() || len(r.GetNodes()) != 2 || r.GetNodes()[0].GetNode() != "node-a" || r.GetNodes()[1].GetNode() != "node-b" {
		t.Fatalf("run nodes %v", r.GetNodes())
	}
	for _, n := range r.GetNodes() {
		if n.GetError() != "" || n.GetResult() == nil || len(n.GetPods()) != 1 || n.GetResult().GetRunId() != r.GetId() {
			t.Errorf("node %s: error %q pods %v result for %q", n.GetNode(), n.GetError(), n.GetPods(), n.GetResult().GetRunId())
		}
	}
	if tg := r.GetTarget(); tg.GetPort() != 8080 || tg.GetSelector() != "app=web" || tg.GetNamespace() != "demo" {
		t.Errorf("target %v", tg)
	}
	if m := r.GetMesh(); m.GetName() != "istio" || m.GetVersion() != "1.24.0" || m.GetNamespace() != "istio-system" {
		t.Errorf("mesh %v", m)
	}
	if env := r.GetEnvironment(); env.GetKubernetesVersion() != "v1.36.3" || len(env.GetNodes()) != 2 || env.GetNodes()[0].GetCpuCores() != 4 ||
		env.GetNodes()[0].GetMemoryBytes() != 8<<30 || env.GetNodes()[0].GetKernelVersion() != "6.8.0" {
		t.Errorf("environment %v", env)
	}
	if r.GetAskedRate() != 500 || r.GetRatePerNode() || r.GetLoad().GetRate() != 250 || r.GetStartTime() == nil || r.GetEndTime() == nil {
		t.Errorf("asked rate %g per node %v load %v start %v end %v", r.GetAskedRate(), r.GetRatePerNode(), r.GetLoad(), r.GetStartTime(), r.GetEndTime())
	}
	// The agents that host no target pod are left alone.
	if n := len(pe.servers["node-c"].requests()); n != 0 {
		t.Errorf("node-c got %d runs", n)
	}
	for _, n := range []string{"node-a", "node-b"} {
		reqs := pe.servers[n].requests()
		if len(reqs) != 1 {
			t.Fatalf("%s got %d runs", n, len(reqs))
		}
		req := reqs[0]
		want := "web-" + n[len(n)-1:]
		if req.GetRunId() != r.GetId() || req.GetPort() != 8080 || req.GetLoad().GetRate() != 250 || len(req.GetTargets()) != 1 ||
			req.GetTargets()[0].GetName() != want || req.GetTargets()[0].GetUid() != "uid-"+want || req.GetLoad().GetDuration().AsDuration() != 10*time.Second {
			t.Errorf("%s request: run %s port %d load %v targets %v", n, req.GetRunId(), req.GetPort(), req.GetLoad(), req.GetTargets())
		}
	}

	table := out.String()
	if !strings.HasPrefix(table, "Run "+r.GetId()+"\n") || !strings.Contains(table, "deploy/web in namespace demo, port 8080; mesh: istio 1.24.0") ||
		!strings.Contains(table, "500 req/s in total (250 req/s from each node)") {
		t.Errorf("table header:\n%s", table)
	}
	rows := map[string][]string{}
	for _, l := range strings.Split(table, "\n") {
		if f := cells(l); len(f) > 10 {
			rows[f[0]] = f
		}
	}
	for _, n := range []string{"node-a", "node-b", "TOTAL"} {
		row := rows[n]
		if len(row) != 14 {
			t.Errorf("row %s: %q\n%s", n, row, table)
			continue
		}
		// ADDED P50 (95% CI) is about 50µs, with the agent's interval.
		if !strings.HasSuffix(row[7], "µs)") || !strings.Contains(row[7], "µs (") || row[8] == "-" || row[9] == "-" || row[10] != "60m" {
			t.Errorf("row %s: %q", n, row)
		}
	}
	if rows["TOTAL"][1] != "2" || rows["TOTAL"][2] != "4000" {
		t.Errorf("TOTAL %q", rows["TOTAL"])
	}
	if !strings.Contains(table, "ADDED = A/B") || !strings.Contains(table, "RESIDENCY = ") || !strings.Contains(table, "(tier tp_btf)") {
		t.Errorf("methods line:\n%s", table)
	}
	stderr := errOut.String()
	for _, want := range []string{
		"Run " + r.GetId() + ": deploy/web in namespace demo, 2 pods on 2 nodes, 500 req/s in total (250 req/s from each node)",
		"elapsed ", "250 req/s 0 errors",
		"Saved run " + r.GetId() + " to " + o.dir,
		"perf export " + r.GetId()[:8] + " --format html",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

func TestPerfRunPerNode(t *testing.T) {
	pe := newPerfEnv(t, nil)
	o, _, errOut := perfRunOptions(t, pe.reach)
	o.PerNode = true
	o.Nodes = []string{"node-b"}
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(pe.servers["node-a"].requests()); n != 0 {
		t.Errorf("--node node-b ran on node-a too")
	}
	reqs := pe.servers["node-b"].requests()
	if len(reqs) != 1 || reqs[0].GetLoad().GetRate() != 500 {
		t.Fatalf("node-b requests %v", reqs)
	}
	r := storedRun(t, o)
	if !r.GetRatePerNode() || r.GetLoad().GetRate() != 500 || len(r.GetNodes()) != 1 {
		t.Errorf("per node %v load %v nodes %d", r.GetRatePerNode(), r.GetLoad(), len(r.GetNodes()))
	}
	if !strings.Contains(errOut.String(), "500 req/s from each node (500 req/s in total)") {
		t.Errorf("stderr:\n%s", errOut)
	}
}

func TestPerfRunBadNodeAndRate(t *testing.T) {
	pe := newPerfEnv(t, nil)
	o, _, _ := perfRunOptions(t, pe.reach)
	o.Nodes = []string{"node-c"}
	_ = o.Validate()
	if err := o.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "--node node-c: no pod of deploy/web runs there (nodes: node-a, node-b)") {
		t.Errorf("error %v", err)
	}
	// Within the agent's limit in total, above it per node.
	o, _, _ = perfRunOptions(t, pe.reach)
	o.Rate, o.PerNode = 100000, true
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	o.Rate = 150000
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "invalid load: rate") {
		t.Errorf("error %v", err)
	}
	for _, c := range []struct {
		set  func(*PerfRunOptions)
		want string
	}{
		{func(o *PerfRunOptions) { o.Rate = 0 }, "invalid --rate 0"},
		{func(o *PerfRunOptions) { o.Warmup = o.Duration }, "invalid --warmup 10s"},
		{func(o *PerfRunOptions) { o.Duration = 2 * time.Hour }, "invalid load: duration"},
		{func(o *PerfRunOptions) { o.Protocol = "udp" }, `invalid --protocol "udp"`},
		{func(o *PerfRunOptions) { o.ForceTier = "magic" }, `invalid --ebpf-tier "magic"`},
		{func(o *PerfRunOptions) { o.Headers = []string{"novalue"} }, `invalid --header "novalue"`},
		{func(o *PerfRunOptions) { o.Output = "html" }, `invalid --output "html"`},
		{func(o *PerfRunOptions) { o.Store = "s3" }, `invalid --store "s3"`},
	} {
		o, _, _ := perfRunOptions(t, pe.reach)
		c.set(o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
	for _, n := range []string{"node-a", "node-b"} {
		if len(pe.servers[n].requests()) != 0 {
			t.Errorf("%s was loaded by a run that should not start", n)
		}
	}
}

func TestPerfRunJSONAndSMP(t *testing.T) {
	pe := newPerfEnv(t, nil)
	o, out, _ := perfRunOptions(t, pe.reach)
	o.Output = outputJSON
	o.OutDir = t.TempDir()
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	r, err := perfrun.Unmarshal(out.Bytes())
	if err != nil {
		t.Fatalf("-o json does not read back: %v\n%s", err, out)
	}
	if r.GetId() != storedRun(t, o).GetId() || len(r.GetNodes()) != 2 {
		t.Errorf("printed run %s is not the stored one", r.GetId())
	}
	docs, err := smp.ReadDir(o.OutDir, r.GetId())
	if err != nil {
		t.Fatalf("--out documents do not read back: %v", err)
	}
	if docs.Result.GetId() == "" || docs.Result.GetActualQps() <= 0 || docs.Mesh.GetMeshType() == nil || docs.Mesh.GetMeshType().GetType().String() != "ISTIO" || docs.Environment == nil {
		t.Errorf("SMP result %v mesh %v", docs.Result, docs.Mesh)
	}
}

func TestPerfRunSMPOutput(t *testing.T) {
	pe := newPerfEnv(t, nil)
	o, out, _ := perfRunOptions(t, pe.reach)
	o.Output = outputSMPJSON
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	docs, err := smp.Read(out.Bytes())
	if err != nil {
		t.Fatalf("-o smp-json does not read back: %v\n%s", err, out)
	}
	if docs.Mesh == nil || docs.Config == nil {
		t.Errorf("documents %v", docs)
	}
}

// A node whose agent refuses the run is a row with its reason; the others still count,
// and the run is saved before the command fails.
func TestPerfRunNodeFails(t *testing.T) {
	pe := newPerfEnv(t, map[string]string{"node-b": runFail})
	o, out, _ := perfRunOptions(t, pe.reach)
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "1 of 2 nodes failed: node-b: ") || !strings.Contains(err.Error(), "no usage sampler") {
		t.Fatalf("error %v", err)
	}
	r := storedRun(t, o)
	a, b := r.GetNodes()[0], r.GetNodes()[1]
	if a.GetResult() == nil || a.GetError() != "" {
		t.Errorf("node-a: error %q, result %v", a.GetError(), a.GetResult() != nil)
	}
	if b.GetResult() != nil || !strings.Contains(b.GetError(), "FailedPrecondition") {
		t.Errorf("node-b: error %q, result %v", b.GetError(), b.GetResult() != nil)
	}
	table := out.String()
	if !strings.Contains(table, "failed (see below)") || !strings.Contains(table, "Problems:") || !strings.Contains(table, "no usage sampler") {
		t.Errorf("table:\n%s", table)
	}
	// A refusal is the agent's answer, not a dropped stream: there is no result to fetch
	// again, so the run must not ask for one (three times, a second apart) nor call it a
	// lost connection.
	s := pe.servers["node-b"]
	s.mu.Lock()
	asked := s.results
	s.mu.Unlock()
	if strings.Contains(b.GetError(), "stopped answering") || asked != 0 {
		t.Errorf("refused run: %d Result calls, node-b error %q", asked, b.GetError())
	}
}

// A stream that breaks mid-run loses nothing: the result is fetched with Result.
func TestPerfRunStreamBreaks(t *testing.T) {
	pe := newPerfEnv(t, map[string]string{"node-a": runBreak})
	o, _, errOut := perfRunOptions(t, pe.reach)
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	r := storedRun(t, o)
	a := r.GetNodes()[0]
	if a.GetNode() != "node-a" || a.GetError() != "" || a.GetResult() == nil || len(a.GetResult().GetPods()) != 1 {
		t.Errorf("%s: error %q, result %v", a.GetNode(), a.GetError(), a.GetResult() != nil)
	}
	if n := pe.dialed("node-a"); n < 2 {
		t.Errorf("the result was not fetched over a new connection (%d dials)", n)
	}
}

func TestPerfRunFailIf(t *testing.T) {
	pe := newPerfEnv(t, nil)
	o, out, errOut := perfRunOptions(t, pe.reach)
	if err := o.FailIf.Set("added_p99>1us,error_rate>0.5"); err != nil {
		t.Fatal(err)
	}
	_ = o.Validate()
	err := o.Run(context.Background())
	var coded *exitError
	if !errors.As(err, &coded) || coded.code != budget.ExitCode {
		t.Fatalf("error %v, want exit status 3", err)
	}
	if !strings.Contains(err.Error(), "budgets breached") {
		t.Errorf("error %v", err)
	}
	if !strings.Contains(errOut.String(), "added_p99") {
		t.Errorf("no line names the breached budget:\n%s", errOut)
	}
	if out.Len() == 0 {
		t.Error("the report was not printed")
	}
	storedRun(t, o)

	// Within budget: exit 0.
	o, _, _ = perfRunOptions(t, pe.reach)
	_ = o.FailIf.Set("added_p99>1s")
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Errorf("within budget: %v", err)
	}
}

// Ctrl-C stops the load on every node at once and still saves what was measured.
func TestPerfRunInterrupted(t *testing.T) {
	pe := newPerfEnv(t, map[string]string{"node-a": runBlock, "node-b": runBlock})
	o, out, errOut := perfRunOptions(t, pe.reach)
	_ = o.Validate()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	for _, n := range []string{"node-a", "node-b"} {
		select {
		case <-pe.servers[n].started:
		case err := <-done:
			t.Fatalf("run ended before the load started on %s: %v", n, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("the load never started on %s", n)
		}
	}
	cancelled := time.Now()
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(stopGrace + 5*time.Second):
		t.Fatal("the run did not end after Ctrl-C")
	}
	// The load stops within 2 s; the command itself returns well before stopGrace.
	if took := time.Since(cancelled); took > stopGrace/2 {
		t.Errorf("the run took %s to end after Ctrl-C", took)
	}
	for _, n := range []string{"node-a", "node-b"} {
		s := pe.servers[n]
		s.mu.Lock()
		at := s.stopAt
		s.mu.Unlock()
		if at.IsZero() || at.Sub(cancelled) > 2*time.Second {
			t.Errorf("%s was told to stop %s after Ctrl-C", n, at.Sub(cancelled))
		}
	}
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("error %v", err)
	}
	r := storedRun(t, o)
	if !r.GetInterrupted() {
		t.Error("the stored run is not marked interrupted")
	}
	for i, n := range []string{"node-a", "node-b"} {
		if ids := pe.servers[n].stopIDs(); len(ids) != 1 || ids[0] != r.GetId() {
			t.Errorf("%s got Stop for %v, want [%s]", n, ids, r.GetId())
		}
		nr := r.GetNodes()[i]
		if nr.GetError() != "" || !nr.GetResult().GetStopped() {
			t.Errorf("%s: error %q, stopped result %v", n, nr.GetError(), nr.GetResult().GetStopped())
		}
	}
	if !strings.Contains(out.String(), "(interrupted: partial figures)") || !strings.Contains(errOut.String(), "Interrupted: stopping the load on every node") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}
}

func TestPerfRunNoAgent(t *testing.T) {
	pe := newPerfEnv(t, nil)
	c, _ := pe.reach.newCluster()
	if err := c.clientset.CoreV1().Pods(manifests.DefaultNamespace).Delete(context.Background(), "mesh-agent-bbbbb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	o, _, _ := perfRunOptions(t, pe.reach)
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "node-b: no agent pod") {
		t.Errorf("error %v", err)
	}
	r := storedRun(t, o)
	if len(r.GetNodes()) != 2 || r.GetNodes()[0].GetResult() == nil {
		t.Errorf("run over %d nodes, node-a result %v", len(r.GetNodes()), r.GetNodes()[0].GetResult() != nil)
	}
}

func TestRateLine(t *testing.T) {
	r := &perfrun.Run{AskedRate: 500, Load: &agentapi.LoadSpec{Rate: 500.0 / 3}}
	if got := rateLine(r, 3); got != "500 req/s in total (166.7 req/s from each node)" {
		t.Errorf("total: %q", got)
	}
	r = &perfrun.Run{AskedRate: 200, RatePerNode: true, Load: &agentapi.LoadSpec{Rate: 200}}
	if got := rateLine(r, 3); got != "200 req/s from each node (600 req/s in total)" {
		t.Errorf("per node: %q", got)
	}
	if got := fmt.Sprint(bar(5*time.Second, 10*time.Second, 10)); got != "[=====     ]" {
		t.Errorf("bar %q", got)
	}
}

// Pods of the target that cannot be measured are warnings; the others are measured.
func TestPerfRunPartialTarget(t *testing.T) {
	pe := newPerfEnv(t, nil)
	c, _ := pe.reach.newCluster()
	if _, err := c.clientset.CoreV1().Pods("demo").Create(context.Background(), unmeshedPod("demo", "web-c", "node-c", webLabels), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	o, _, errOut := perfRunOptions(t, pe.reach)
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "warning: pod web-c") || !strings.Contains(errOut.String(), "; measuring the other pods") {
		t.Errorf("stderr:\n%s", errOut)
	}
	if n := len(pe.servers["node-c"].requests()); n != 0 {
		t.Errorf("node-c hosts only an unmeshed pod but got %d runs", n)
	}
	if r := storedRun(t, o); len(r.GetNodes()) != 2 || r.GetLoad().GetRate() != 250 {
		t.Errorf("run over %d nodes at %g req/s", len(r.GetNodes()), r.GetLoad().GetRate())
	}
}

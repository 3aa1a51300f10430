package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
)

var healthyRow = NodeStatus{
	Node: "node-a", Pod: "mesh-agent-x7k2p", Ready: true, Healthy: true, Version: "v0.1.0",
	Kernel: "6.8.0-45-generic", BTF: true, EBPFTier: "tp_btf", Cgroups: "v2",
	Capabilities: []string{"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"}, HostPID: true, GoVersion: "go1.26.0",
}

func TestStatusTable(t *testing.T) {
	rows := []NodeStatus{
		healthyRow,
		{Node: "node-b", Pod: "mesh-agent-q9zzl", Error: "image pull failed: ErrImagePull: not found"},
		{Node: "node-c", Error: "no agent pod on this node"},
		{Node: "node-d-with-a-long-name", Pod: "mesh-agent-aaaaa", Ready: true, Healthy: true, Version: "v0.1.0",
			Kernel: "5.15.0", EBPFTier: "kprobe", Cgroups: "hybrid", Capabilities: []string{"BPF"}},
	}
	var b bytes.Buffer
	if err := writeStatusTable(&b, rows, false); err != nil {
		t.Fatal(err)
	}
	want := `NODE                     AGENT POD         READY  VERSION  KERNEL            BTF  EBPF TIER  CGROUPS  CAPABILITIES
node-a                   mesh-agent-x7k2p  yes    v0.1.0   6.8.0-45-generic  yes  tp_btf     v2       BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH
node-b                   mesh-agent-q9zzl  no     -        -                 -    -          -        image pull failed: ErrImagePull: not found
node-c                   <none>            no     -        -                 -    -          -        no agent pod on this node
node-d-with-a-long-name  mesh-agent-aaaaa  yes    v0.1.0   5.15.0            no   kprobe     hybrid   BPF
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}

	b.Reset()
	if err := writeStatusTable(&b, rows[:2], true); err != nil {
		t.Fatal(err)
	}
	wantWide := `NODE    AGENT POD         READY  VERSION  KERNEL            BTF  EBPF TIER  CGROUPS  HOST PID  GO        CAPABILITIES
node-a  mesh-agent-x7k2p  yes    v0.1.0   6.8.0-45-generic  yes  tp_btf     v2       yes       go1.26.0  BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH
node-b  mesh-agent-q9zzl  no     -        -                 -    -          -        -         -         image pull failed: ErrImagePull: not found
`
	if b.String() != wantWide {
		t.Errorf("wide table:\n%s\nwant:\n%s", b.String(), wantWide)
	}
}

func readyPod(name string, ready bool) *corev1.Pod {
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "mesh-system"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}},
	}
}

func TestNodeStatus(t *testing.T) {
	info := &agentapi.InfoResponse{
		NodeName: "node-a", AgentVersion: "v0.1.0", KernelRelease: "6.8.0", Btf: true,
		Capabilities: []string{"CAP_BPF", "CAP_PERFMON"}, CgroupLayout: agentapi.CgroupLayout_CGROUP_LAYOUT_V2,
		EbpfTier: agentapi.EbpfTier_EBPF_TIER_RAW_TP, HostPid: true,
	}
	got := nodeStatus(agentInfo{target: agents.Target{Node: "node-a", Pod: readyPod("p", true)}, info: info})
	if !got.Healthy || got.Error != "" || got.EBPFTier != "raw_tp" || got.Cgroups != "v2" ||
		strings.Join(got.Capabilities, ",") != "BPF,PERFMON" || !got.Ready || got.Pod != "p" {
		t.Errorf("healthy: %+v", got)
	}

	cases := []struct {
		in   agentInfo
		want string
	}{
		{agentInfo{target: agents.Target{Node: "n", Pod: readyPod("p", false), Problem: "crash loop: exit code 2"}}, "crash loop: exit code 2"},
		{agentInfo{target: agents.Target{Node: "n"}}, "no agent pod on this node"},
		{agentInfo{target: agents.Target{Node: "n", Pod: readyPod("p", true)},
			err: &agents.NodeError{Kind: agents.ErrUnreachable, Message: "agent unreachable: connection refused"}}, "agent unreachable: connection refused"},
		{agentInfo{target: agents.Target{Node: "n", Pod: readyPod("p", true)},
			err: &agents.NodeError{Kind: agents.ErrVersionSkew, Message: "agent too old: unknown method Info (version skew)"}}, "(version skew); run `kubectl mesh agent install` to upgrade it"},
		{agentInfo{target: agents.Target{Node: "n", Pod: readyPod("p", true)}}, "agent did not answer"},
	}
	for _, tc := range cases {
		got := nodeStatus(tc.in)
		if got.Healthy || !strings.Contains(got.Error, tc.want) {
			t.Errorf("%+v: got %+v, want unhealthy with %q", tc.in, got, tc.want)
		}
	}
}

func TestUnhealthyError(t *testing.T) {
	ok := StatusReport{Nodes: []NodeStatus{healthyRow}}
	if err := unhealthyError(ok, "mesh-system"); err != nil {
		t.Errorf("healthy report: %v", err)
	}
	if err := unhealthyError(StatusReport{}, "mesh-system"); err == nil || !strings.Contains(err.Error(), "no node is selected") {
		t.Errorf("empty report: %v", err)
	}
	crashing := StatusReport{Nodes: []NodeStatus{healthyRow, {Node: "b", Pod: "mesh-agent-zz", Error: "crash loop"}, healthyRow}}
	if err := unhealthyError(crashing, "mesh-system"); err == nil ||
		err.Error() != "1 of 3 agents unhealthy; see `kubectl -n mesh-system describe pod mesh-agent-zz`" {
		t.Errorf("crashing: %v", err)
	}
	silent := StatusReport{Nodes: []NodeStatus{{Node: "b", Pod: "mesh-agent-zz", Ready: true, Error: "agent unreachable"}}}
	if err := unhealthyError(silent, "perf"); err == nil || !strings.Contains(err.Error(), "`kubectl -n perf logs mesh-agent-zz`") {
		t.Errorf("unreachable: %v", err)
	}
	missing := StatusReport{Nodes: []NodeStatus{{Node: "b", Error: "no agent pod on this node"}}}
	if err := unhealthyError(missing, "mesh-system"); err == nil || !strings.Contains(err.Error(), "describe daemonset mesh-agent") {
		t.Errorf("missing: %v", err)
	}
}

func TestSkewWarning(t *testing.T) {
	r := VersionReport{ClientVersion: "v0.2.0", Agents: []AgentVersion{
		{Node: "a", Version: "v0.2.0"}, {Node: "b", Version: "v0.1.0"}, {Node: "c", Error: "unreachable"},
	}}
	w := skewWarning(r)
	if !strings.HasPrefix(w, "warning: 1 of 3 agents run a version other than the plugin's v0.2.0 (b runs v0.1.0)") || !strings.Contains(w, "agent install") {
		t.Errorf("warning %q", w)
	}
	r.Agents = r.Agents[:1]
	if w := skewWarning(r); w != "" {
		t.Errorf("no skew, got %q", w)
	}
}

func TestReachError(t *testing.T) {
	unauth := reachError("https://h", apierrorsUnauthorized())
	if unauth == nil || !strings.Contains(unauth.Error(), "the cluster at https://h rejected your credentials") {
		t.Errorf("unauthorized: %v", unauth)
	}
	if err := reachError("https://h", apierrorsForbidden()); err != nil {
		t.Errorf("forbidden /version means reachable, got %v", err)
	}
}

func TestNotInstalledNamesTheNamespace(t *testing.T) {
	if got := errNotInstalled("perf").Error(); got != "agent not installed: namespace perf not found; run `kubectl mesh agent install -n perf`" {
		t.Errorf("%q", got)
	}
}

func TestCapsCell(t *testing.T) {
	all := make([]string, 40)
	for i := range all {
		all[i] = fmt.Sprintf("CAP%d", i)
	}
	for _, tc := range []struct {
		caps []string
		wide bool
		want string
	}{
		{nil, false, "-"},
		{[]string{"BPF", "PERFMON"}, false, "BPF,PERFMON"},
		{all, false, "40 (unconfined; -o wide lists them)"},
		{all, true, strings.Join(all, ",")},
	} {
		if got := capsCell(tc.caps, tc.wide); got != tc.want {
			t.Errorf("capsCell(%d caps, wide=%v) = %q, want %q", len(tc.caps), tc.wide, got, tc.want)
		}
	}
}

// BenchmarkStatusTable1000 is the rendering part of `agent status` on a 1000-node cluster;
// test/bench measures the listing and matching against a real apiserver.
func BenchmarkStatusTable1000(b *testing.B) {
	rows := make([]NodeStatus, 1000)
	for i := range rows {
		rows[i] = healthyRow
		rows[i].Node = fmt.Sprintf("node-%04d", i)
		if i%10 == 0 {
			rows[i] = NodeStatus{Node: rows[i].Node, Pod: "mesh-agent-q9zzl", Error: "agent unreachable: connection refused"}
		}
	}
	for b.Loop() {
		if err := writeStatusTable(io.Discard, rows, false); err != nil {
			b.Fatal(err)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

func TestValidateLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:9460", "127.0.0.2:1", "[::1]:9460", "127.0.0.1:0"} {
		if err := validateLoopback("listen", addr); err != nil {
			t.Errorf("%s refused: %v", addr, err)
		}
	}
	for _, addr := range []string{"0.0.0.0:9460", ":9460", "[::]:9460", "10.0.0.1:9460", "localhost:9460",
		"127.0.0.1", "127.0.0.1:", "127.0.0.1:http-alt-nonexistent", "198.18.0.1:9460"} {
		err := validateLoopback("listen", addr)
		if err == nil {
			t.Errorf("%s accepted", addr)
			continue
		}
		if !strings.Contains(err.Error(), "--listen") {
			t.Errorf("%s: error %q does not name the flag", addr, err)
		}
	}
	err := validateLoopback("listen", "0.0.0.0:9460")
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("0.0.0.0: error %v does not explain the loopback rule", err)
	}
}

func TestServeOptionsValidate(t *testing.T) {
	ok := func() *serveOptions {
		o := defaultServeOptions()
		o.nodeName = "node-a"
		return o
	}
	if err := ok().validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, change := range map[string]func(*serveOptions){
		"non-loopback listen": func(o *serveOptions) { o.listen = "0.0.0.0:9460" },
		"bad metrics address": func(o *serveOptions) { o.metricsListen = "9461" },
		"empty node":          func(o *serveOptions) { o.nodeName = " " },
		"unknown tier":        func(o *serveOptions) { o.ebpfTier = "uprobe" },
		"zero shutdown":       func(o *serveOptions) { o.shutdownTimeout = 0 },
		"bad log format":      func(o *serveOptions) { o.logFormat = "xml" },
		"bad log level":       func(o *serveOptions) { o.logLevel = "loud" },
		"unknown mesh":        func(o *serveOptions) { o.sidecarFlags = []string{"my-proxy=envoymesh"} },
		"sidecar without =":   func(o *serveOptions) { o.sidecarFlags = []string{"my-proxy"} },
	} {
		o := ok()
		change(o)
		if err := o.validate(); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	o := ok()
	o.metricsListen = ""
	if err := o.validate(); err != nil {
		t.Errorf("metrics disabled: %v", err)
	}
	o = ok()
	o.sidecarFlags = []string{"my-proxy=istio", "edge=linkerd"}
	if err := o.validate(); err != nil || o.sidecars["my-proxy"] != discovery.MeshIstio || o.sidecars["edge"] != discovery.MeshLinkerd {
		t.Errorf("--sidecar-container: %v, %v", err, o.sidecars)
	}
}

// envWithout is the test's environment minus the variables that would give the agent
// API access, so that the binary tests do not depend on who runs them.
func envWithout() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KUBECONFIG=") || strings.HasPrefix(kv, "KUBERNETES_SERVICE_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func TestTierFlag(t *testing.T) {
	for flag, want := range map[string]struct {
		tiers  []ebpftier.Tier
		forced bool
	}{
		"auto":   {ebpftier.Order, false},
		"AUTO":   {ebpftier.Order, false},
		"none":   {nil, true},
		"raw_tp": {[]ebpftier.Tier{ebpftier.RawTP}, true},
		"kprobe": {[]ebpftier.Tier{ebpftier.KProbe}, true},
	} {
		o := defaultServeOptions()
		o.ebpfTier = flag
		tiers, forced, err := o.tiers()
		if err != nil || forced != want.forced || len(tiers) != len(want.tiers) || (len(tiers) > 0 && tiers[0] != want.tiers[0]) {
			t.Errorf("--ebpf-tier %s = %v, %v, %v; want %v, %v", flag, tiers, forced, err, want.tiers, want.forced)
		}
	}
}

// The tests below run the real binary.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

const testVersion = "v9.9.9-test"

func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mesh-agent-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "mesh-agent")
		cmd := exec.Command("go", "build", "-o", binPath,
			"-ldflags", "-X github.com/kubectl-mesh/kubectl-mesh/pkg/version.Version="+testVersion, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer collects a child's stderr while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runProbe(t *testing.T, bin, addr string) (int, string) {
	t.Helper()
	out, err := exec.Command(bin, "probe", "--addr", addr, "--timeout", "2s").CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	}
	t.Fatalf("probe: %v", err)
	return -1, ""
}

func TestBinaryServesAndStopsOnSIGTERM(t *testing.T) {
	bin := agentBinary(t)
	grpcAddr, metricsAddr := freePort(t), freePort(t)
	stderr := &syncBuffer{}
	cmd := exec.Command(bin, "--listen", grpcAddr, "--metrics-listen", metricsAddr, "--node-name", "test-node")
	cmd.Env = envWithout()
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	})

	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out := runProbe(t, bin, grpcAddr)
		if code == 0 {
			if strings.TrimSpace(out) != "SERVING" {
				t.Errorf("probe printed %q", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not healthy after 20s; last probe (exit %d): %s", code, out)
		}
		select {
		case err := <-exited:
			t.Fatalf("agent exited early: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}

	conn, err := grpc.NewClient("passthrough:///"+grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := agentapi.NewAgentClient(conn).Info(ctx, &agentapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.NodeName != "test-node" || info.AgentVersion != testVersion || info.KernelRelease == "" ||
		info.GoVersion == "" || info.StartTime == nil || info.CgroupLayout == agentapi.CgroupLayout_CGROUP_LAYOUT_UNSPECIFIED ||
		info.EbpfTier == agentapi.EbpfTier_EBPF_TIER_UNSPECIFIED {
		t.Errorf("Info = %v", info)
	}
	if os.Geteuid() == 0 && len(info.Capabilities) == 0 {
		t.Errorf("running as root but no capabilities reported: %v", info)
	}
	attached := info.EbpfTier != agentapi.EbpfTier_EBPF_TIER_NONE
	if attached && (len(info.TierProbes) == 0 || !info.TierProbes[len(info.TierProbes)-1].Ok) {
		t.Errorf("tier %v but probes %v", info.EbpfTier, info.TierProbes)
	}

	// No API access: Snapshot says so precisely instead of failing start-up.
	_, err = agentapi.NewAgentClient(conn).Snapshot(ctx, &agentapi.SnapshotRequest{})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no Kubernetes API access") {
		t.Errorf("Snapshot without API access: %v; want FailedPrecondition", err)
	}

	metrics := scrape(t, metricsAddr)
	if !strings.Contains(metrics, `mesh_agent_info{kernel="`+info.KernelRelease+`",node="test-node",`) {
		t.Errorf("no info gauge in metrics:\n%s", metrics)
	}
	if !strings.Contains(metrics, "\nmesh_agent_pod_discovery_ready 0\n") ||
		!regexp.MustCompile(`(?m)^mesh_agent_self_memory_rss_bytes [1-9]`).MatchString(metrics) {
		t.Errorf("no discovery or agent-cost gauges in metrics:\n%s", metrics)
	}
	if attached {
		// The gRPC calls above were TCP sends on loopback; the attached program saw them.
		m := regexp.MustCompile(`(?m)^mesh_agent_ebpf_probe_send_calls_total\{tier="[a-z_]+"\} (\S+)$`).FindStringSubmatch(metrics)
		if m == nil {
			t.Errorf("tier attached but no send counter in metrics:\n%s", metrics)
		} else if n, _ := strconv.ParseFloat(m[1], 64); n == 0 {
			t.Errorf("attached program counted no sends after gRPC traffic")
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent still running 20s after SIGTERM")
	}
	if !strings.Contains(stderr.String(), "msg=stopped") {
		t.Errorf("no stopped log line:\n%s", stderr.String())
	}
	if code, out := runProbe(t, bin, grpcAddr); code != 1 {
		t.Errorf("probe against a stopped agent exited %d: %s", code, out)
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %d, %v", resp.StatusCode, err)
	}
	return string(b)
}

func runAgent(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(agentBinary(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode(), out.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, out.String()
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("mesh-agent %v still running after 20s: %s", args, out.String())
		return -1, ""
	}
}

func TestBinaryRefusesNonLoopback(t *testing.T) {
	code, out := runAgent(t, "--listen", "0.0.0.0:"+strings.Split(freePort(t), ":")[1], "--node-name", "n")
	if code != 1 || !strings.Contains(out, "loopback") {
		t.Errorf("exit %d, output %q; want 1 and the loopback rule", code, out)
	}
}

// TestBinaryForcedTierThatDoesNotAttach checks the documented choice: a forced tier that
// the node refuses stops the agent, saying why, rather than running without it.
func TestBinaryForcedTierThatDoesNotAttach(t *testing.T) {
	var refused ebpftier.Tier = ebpftier.None
	for _, tier := range ebpftier.Order {
		c, err := ebpftier.AttachSendCounter(tier)
		if err != nil {
			refused = tier
			break
		}
		c.Close()
	}
	if refused == ebpftier.None {
		t.Skip("every tier attaches on this node; nothing to force into failure")
	}
	code, out := runAgent(t, "--ebpf-tier", refused.String(), "--listen", freePort(t), "--metrics-listen", "", "--node-name", "n")
	if code != 1 || !strings.Contains(out, "forced --ebpf-tier "+refused.String()+" did not attach") {
		t.Errorf("exit %d, output %q", code, out)
	}
}

func TestBinaryVersion(t *testing.T) {
	code, out := runAgent(t, "version")
	if code != 0 || !strings.HasPrefix(out, "mesh-agent "+testVersion+" ") {
		t.Errorf("exit %d, output %q", code, out)
	}
}

// TestBinaryUnreachableAPIServer starts the agent with a kubeconfig whose API server
// refuses connections: it must still come up at once and answer Snapshot with
// Unavailable rather than block.
func TestBinaryUnreachableAPIServer(t *testing.T) {
	bin := agentBinary(t)
	grpcAddr, dead := freePort(t), freePort(t) // nothing listens on dead once freePort returns
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://`+dead+`", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd := exec.Command(bin, "--listen", grpcAddr, "--metrics-listen", "", "--node-name", "test-node", "--ebpf-tier", "none",
		"--sidecar-container", "my-proxy=istio")
	cmd.Env = append(envWithout(), "KUBECONFIG="+kubeconfig)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, _ := runProbe(t, bin, grpcAddr); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent not healthy after 20s with an unreachable API server")
		}
		select {
		case err := <-exited:
			t.Fatalf("agent exited early: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	conn, err := grpc.NewClient("passthrough:///"+grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = agentapi.NewAgentClient(conn).Snapshot(ctx, &agentapi.SnapshotRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "pod watch not synced yet") {
		t.Errorf("Snapshot with an unreachable API server: %v; want Unavailable", err)
	}
	if !strings.Contains(stderr.String(), "starting pod watch") {
		t.Errorf("no pod watch log line:\n%s", stderr.String())
	}
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

const (
	benchNode      = "bench-node"
	benchNamespace = "default"
	// istioStatus is the annotation Istio's injector leaves, so the pods read as injected.
	istioStatus = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}`
)

type idleConfig struct {
	sidecars    int
	window      time.Duration
	scrapeEvery time.Duration
}

// measureIdle runs the real mesh-agent binary against a real control plane with cfg.sidecars
// Istio-shaped pods bound to its node, each backed by idle processes in a kubelet-named
// cgroup, and measures the agent's CPU over an idle window with periodic metrics scrapes.
func measureIdle(ctx context.Context, cfg idleConfig) (rows []row, err error) {
	var cl cleanups
	defer func() {
		if cerr := cl.run(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()

	tmp, err := os.MkdirTemp("", "agentbench-")
	if err != nil {
		return nil, err
	}
	cl.add(func() error { return os.RemoveAll(tmp) })

	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	agentBin := filepath.Join(tmp, "mesh-agent")
	logf("building mesh-agent")
	build := exec.CommandContext(ctx, "go", "build", "-o", agentBin, "./agent")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./agent: %v: %s", err, out)
	}

	logf("starting the control plane")
	startCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	cluster, err := simcluster.Start(startCtx, simcluster.Options{Log: prefixWriter{""}})
	cancel()
	if err != nil {
		return nil, err
	}
	cl.add(cluster.Stop)
	client, err := kubernetes.NewForConfig(cluster.RESTConfig())
	if err != nil {
		return nil, err
	}
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: benchNode}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create node: %w", err)
	}

	hier, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	top := "agentbench" + randHex(4)
	procs := &procSet{}
	cl.add(procs.stop)
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		return nil, err
	}
	// comm is the base name of what was exec'd, so symlinks give the names the agent's
	// classifier tells apart (Envoy the proxy, pilot-agent the helper).
	for _, name := range []string{"envoy", "pilot-agent"} {
		if err := os.Symlink(sleepBin, filepath.Join(tmp, name)); err != nil {
			return nil, err
		}
	}
	for i := 0; i < cfg.sidecars; i++ {
		cid := randHex(32)
		pod, err := createPod(ctx, client, fmt.Sprintf("bench-%02d", i), cid)
		if err != nil {
			return nil, err
		}
		rel := filepath.Join(top, "kubepods", "besteffort", "pod"+string(pod.UID), cid)
		for _, h := range hier {
			if err := h.make(rel); err != nil {
				return nil, err
			}
			h := h
			// Processes leave a cgroup only by dying, so they go before the rmdir.
			cl.add(func() error { _ = procs.stop(); return h.remove(rel) })
		}
		for _, name := range []string{"envoy", "pilot-agent"} {
			pid, err := procs.start(filepath.Join(tmp, name), "3600")
			if err != nil {
				return nil, err
			}
			for _, h := range hier {
				if err := os.WriteFile(filepath.Join(h.mount, rel, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
					return nil, fmt.Errorf("move %d into %s: %w", pid, h.mount, err)
				}
			}
		}
	}
	grpcPort, err := freePort()
	if err != nil {
		return nil, err
	}
	metricsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	agentLog, err := os.Create(filepath.Join(tmp, "agent.log"))
	if err != nil {
		return nil, err
	}
	defer agentLog.Close()
	agent := exec.Command(agentBin,
		"--listen", fmt.Sprintf("127.0.0.1:%d", grpcPort),
		"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", metricsPort),
		"--node-name", benchNode,
		"--kubeconfig", cluster.Kubeconfig())
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		return nil, err
	}
	agentPID := agent.Process.Pid
	cl.add(func() error { return stopProcess(agent, 10*time.Second) })
	logf("mesh-agent pid %d on 127.0.0.1:%d (metrics :%d)", agentPID, grpcPort, metricsPort)

	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", grpcPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	api := agentapi.NewAgentClient(conn)
	snap, err := waitSidecars(ctx, api, cfg.sidecars, agentLog.Name())
	if err != nil {
		return nil, err
	}
	logf("Snapshot: %d sidecars, agent reports itself at %.2f m CPU, %.1f MiB RSS",
		len(snap.Sidecars), snap.GetAgent().GetCpuMillicores(), float64(snap.GetAgent().GetMemoryRssBytes())/(1<<20))

	// Let the Snapshot's own sampling finish before the idle window opens.
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return nil, err
	}
	pr, err := usage.NewProcReader("")
	if err != nil {
		return nil, err
	}
	before, err := pr.Read(agentPID)
	if err != nil {
		return nil, err
	}
	logf("idle window %s, scraping metrics every %s", cfg.window, cfg.scrapeEvery)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	scrapes, scrapeBytes := 0, 0
	deadline := before.At.Add(cfg.window)
	for next := before.At; next.Before(deadline); next = next.Add(cfg.scrapeEvery) {
		if err := sleepCtx(ctx, time.Until(next)); err != nil {
			return nil, err
		}
		n, err := scrape(ctx, metricsURL)
		if err != nil {
			return nil, err
		}
		scrapes++
		scrapeBytes = n
	}
	if err := sleepCtx(ctx, time.Until(deadline)); err != nil {
		return nil, err
	}
	after, err := pr.Read(agentPID)
	if err != nil {
		return nil, err
	}
	if after.StartTicks != before.StartTicks {
		return nil, errors.New("the agent restarted during the idle window")
	}
	elapsed := after.At.Sub(before.At)
	statMilli := float64(after.StatCPU-before.StatCPU) / float64(elapsed) * 1000
	// schedstat is ns-exact but covers only threads alive at both reads; stat's utime+stime
	// covers exited threads too but in 10 ms ticks. Both are shown.
	var sched time.Duration
	for tid, t := range after.Threads {
		if b, ok := before.Threads[tid]; ok {
			sched += t - b
		} else {
			sched += t
		}
	}
	schedMilli := float64(sched) / float64(elapsed) * 1000
	rssMiB := float64(after.RSS) / (1 << 20)

	rows = append(rows,
		row{fmt.Sprintf("agent idle CPU, %d sidecars, %d scrapes in %s (stat utime+stime)", len(snap.Sidecars), scrapes, elapsed.Round(time.Millisecond)),
			fmt.Sprintf("%.2f millicores", statMilli), "≤ 5 millicores", verdict(statMilli <= 5)},
		row{"agent idle CPU, same window (per-thread schedstat)", fmt.Sprintf("%.2f millicores", schedMilli), "≤ 5 millicores", verdict(schedMilli <= 5)},
		row{"agent RSS at end (smaps_rollup)", fmt.Sprintf("%.1f MiB (PSS %.1f MiB)", rssMiB, float64(after.PSS)/(1<<20)), "≤ 64 MiB", verdict(rssMiB <= 64)},
		row{"metrics page size", fmt.Sprintf("%d bytes", scrapeBytes), "-", ""},
	)
	return rows, nil
}

// waitSidecars polls Snapshot until the agent has found want sidecars: its pod watch and
// cgroup scan take a moment after start.
func waitSidecars(ctx context.Context, api agentapi.AgentClient, want int, logPath string) (*agentapi.SnapshotResponse, error) {
	deadline := time.Now().Add(90 * time.Second)
	var last *agentapi.SnapshotResponse
	var lastErr error
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := api.Snapshot(cctx, &agentapi.SnapshotRequest{Window: durationpb.New(time.Second), Namespaces: []string{benchNamespace}})
		cancel()
		if err == nil && len(resp.Sidecars) >= want {
			return resp, nil
		}
		last, lastErr = resp, err
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
	tail, _ := os.ReadFile(logPath)
	if len(tail) > 4000 {
		tail = tail[len(tail)-4000:]
	}
	return nil, fmt.Errorf("agent did not report %d sidecars within 90s (last: %d sidecars, errors %v, err %v); agent log tail:\n%s",
		want, len(last.GetSidecars()), last.GetErrors(), lastErr, tail)
}

// createPod creates an Istio-shaped pod bound to the bench node and then writes the status a
// kubelet would, with the sidecar's containerd ID. The service account admission plugin
// refuses pods until the controller manager has made the namespace's default account, so
// creation is retried for a while.
func createPod(ctx context.Context, client kubernetes.Interface, name, cid string) (*corev1.Pod, error) {
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNamespace,
			Annotations: map[string]string{"sidecar.istio.io/status": istioStatus}},
		Spec: corev1.PodSpec{NodeName: benchNode, AutomountServiceAccountToken: &no, Containers: []corev1.Container{
			{Name: "app", Image: "nginx", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}},
			{Name: "istio-proxy", Image: "proxy"},
		}},
	}
	var created *corev1.Pod
	var err error
	for start := time.Now(); ; {
		created, err = client.CoreV1().Pods(benchNamespace).Create(ctx, pod, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) || time.Since(start) > 60*time.Second || ctx.Err() != nil {
			break
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &now, ContainerStatuses: []corev1.ContainerStatus{
		{Name: "app", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			ContainerID: "containerd://" + randHex(32)},
		{Name: "istio-proxy", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			ContainerID: "containerd://" + cid},
	}}
	updated, err := client.CoreV1().Pods(benchNamespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("status of pod %s: %w", name, err)
	}
	return updated, nil
}

func scrape(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return 0, fmt.Errorf("scrape: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scrape: %s", resp.Status)
	}
	return int(n), nil
}

// hierarchy is one cgroup mount the sidecar cgroups are made in; v2 needs the cpu and memory
// controllers handed down the path.
type hierarchy struct {
	mount string
	v2    bool
}

func (h hierarchy) make(rel string) error {
	if err := os.MkdirAll(filepath.Join(h.mount, rel), 0o755); err != nil {
		return err
	}
	if !h.v2 {
		return nil
	}
	parts := strings.Split(rel, "/")
	d := h.mount
	for _, p := range parts[:len(parts)-1] {
		d = filepath.Join(d, p)
		if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+cpu +memory"), 0o644); err != nil {
			return fmt.Errorf("enable cpu and memory below %s: %w", d, err)
		}
	}
	return nil
}

// remove deletes rel and its parents up to the mount, leaf first; parents still holding
// another pod's cgroup are left for that pod's cleanup.
func (h hierarchy) remove(rel string) error {
	for d := filepath.Join(h.mount, rel); d != h.mount; d = filepath.Dir(d) {
		if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
			if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EBUSY) {
				return nil
			}
			return err
		}
	}
	return nil
}

// cgroupHierarchies picks where the sidecar cgroups go: the v1 cpu, cpuacct and memory
// hierarchies when the host has them (comounted ones once), else the v2 hierarchy.
func cgroupHierarchies() ([]hierarchy, error) {
	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, err
	}
	var v1 []hierarchy
	v2 := ""
	seen := map[string]bool{}
	for _, m := range ms {
		switch m.FSType {
		case "cgroup":
			for _, o := range strings.Split(m.VFSOptions, ",") {
				if (o == "cpu" || o == "cpuacct" || o == "memory") && !seen[m.Mountpoint] {
					seen[m.Mountpoint] = true
					v1 = append(v1, hierarchy{mount: m.Mountpoint})
				}
			}
		case "cgroup2":
			if v2 == "" && strings.HasPrefix(m.Mountpoint, "/sys/fs/cgroup") {
				v2 = m.Mountpoint
			}
		}
	}
	if len(v1) > 0 {
		return v1, nil
	}
	if v2 != "" {
		return []hierarchy{{mount: v2, v2: true}}, nil
	}
	return nil, errors.New("no cgroup hierarchy with cpu and memory found")
}

// procSet holds the stand-in sidecar processes, stopped by PID.
type procSet struct{ cmds []*exec.Cmd }

func (s *procSet) start(bin string, args ...string) (int, error) {
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	s.cmds = append(s.cmds, cmd)
	return cmd.Process.Pid, nil
}

func (s *procSet) stop() error {
	for _, c := range s.cmds {
		_ = syscall.Kill(c.Process.Pid, syscall.SIGKILL)
		_ = c.Wait()
	}
	s.cmds = nil
	return nil
}

// stopProcess sends SIGTERM and escalates to SIGKILL after grace.
func stopProcess(cmd *exec.Cmd, grace time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(grace):
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("%s ignored SIGTERM for %s", filepath.Base(cmd.Path), grace)
	}
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run agentbench from inside the repository")
	}
	return filepath.Dir(mod), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().UTC().Format("15:04:05 ")+format+"\n", args...)
}

// prefixWriter sends the cluster's progress lines to stderr, marked as its own.
type prefixWriter struct{ prefix string }

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		fmt.Fprintln(os.Stderr, p.prefix+l)
	}
	return len(b), nil
}

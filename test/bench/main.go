// Command bench measures `kubectl mesh agent status` at scale on the simulated cluster and
// prints the figures next to their targets. It asserts nothing: speed is reported, not tested.
//
//   - API side: a cluster of -nodes kwok nodes whose agent pods exist but whose agents do not
//     answer, so the run is listing, matching and rendering that many agent pods (each row's
//     port-forward is refused at once);
//   - fan-out: a cluster of -agents kwok nodes, each agent a real local mesh-agent process
//     reached through the real apiserver port-forward.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

var concurrency int

// statusArgs is the timed command: `kubectl mesh agent status -o json`.
func statusArgs() []string {
	args := []string{"agent", "status", "-o", "json"}
	if concurrency > 0 {
		args = append(args, "--concurrency", fmt.Sprint(concurrency))
	}
	return args
}

func main() {
	nodes := flag.Int("nodes", 1000, "kwok nodes for the API-side run (0 skips it)")
	agentCount := flag.Int("agents", 50, "kwok nodes with real agent processes for the fan-out run (0 skips it)")
	runs := flag.Int("runs", 5, "timed runs of each measurement; the median is reported")
	flag.IntVar(&concurrency, "concurrency", 0, "agent status --concurrency (0: the plugin's default)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *nodes, *agentCount, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, nodes, agentCount, runs int) error {
	binDir, err := os.MkdirTemp("", "kubectl-mesh-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, "kubectl-mesh"), "./plugin")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build kubectl-mesh: %w", err)
	}

	var lines []string
	if nodes > 0 {
		l, err := apiSide(ctx, binDir, nodes, runs)
		if err != nil {
			return fmt.Errorf("%d-node run: %w", nodes, err)
		}
		lines = append(lines, l...)
	}
	if agentCount > 0 {
		l, err := fanout(ctx, binDir, agentCount, runs)
		if err != nil {
			return fmt.Errorf("%d-agent run: %w", agentCount, err)
		}
		lines = append(lines, l...)
	}
	fmt.Println()
	fmt.Printf("%-58s %12s %10s\n", "measurement", "median", "target")
	for _, l := range lines {
		fmt.Println(l)
	}
	return nil
}

func apiSide(ctx context.Context, binDir string, nodes, runs int) ([]string, error) {
	c, err := simcluster.Start(ctx, simcluster.Options{KwokNodes: nodes, NoKwokAgents: true, Log: os.Stderr})
	if err != nil {
		return nil, err
	}
	defer c.Stop()

	installed, err := timed(func() error {
		_, err := kubectlMesh(ctx, binDir, c.Kubeconfig(), "agent", "install", "--image", simcluster.AgentImage, "--timeout", "10m")
		return err
	})
	if err != nil {
		return nil, err
	}

	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, err
	}
	var discover, table []time.Duration
	for range runs {
		d, err := timed(func() error {
			targets, err := agents.Discover(ctx, cs, "mesh-system", nil)
			if err == nil && len(targets) != nodes {
				err = fmt.Errorf("discovered %d targets, want %d", len(targets), nodes)
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		discover = append(discover, d)

		// Every agent is silent here, so status must exit non-zero with a row per node.
		var rows int
		d, _ = timed(func() error {
			out, err := kubectlMesh(ctx, binDir, c.Kubeconfig(), statusArgs()...)
			rows = countRows(out)
			return err
		})
		if rows != nodes {
			return nil, fmt.Errorf("status printed %d rows, want %d", rows, nodes)
		}
		table = append(table, d)
	}
	return []string{
		row(fmt.Sprintf("agent install --wait, %d nodes", nodes), installed, ""),
		row(fmt.Sprintf("discover %d agent pods (list nodes+pods, match)", nodes), median(discover), ""),
		row(fmt.Sprintf("agent status, %d-node table (agents silent)", nodes), median(table), "< 5s"),
	}, nil
}

func fanout(ctx context.Context, binDir string, agentCount, runs int) ([]string, error) {
	c, err := simcluster.Start(ctx, simcluster.Options{KwokNodes: agentCount, Log: os.Stderr})
	if err != nil {
		return nil, err
	}
	defer c.Stop()
	if _, err := kubectlMesh(ctx, binDir, c.Kubeconfig(), "agent", "install", "--image", simcluster.AgentImage, "--timeout", "5m"); err != nil {
		return nil, err
	}
	var status []time.Duration
	for range runs {
		var rows int
		d, err := timed(func() error {
			out, err := kubectlMesh(ctx, binDir, c.Kubeconfig(), statusArgs()...)
			rows = countRows(out)
			return err
		})
		if err != nil {
			return nil, err
		}
		if rows != agentCount {
			return nil, fmt.Errorf("status printed %d rows, want %d", rows, agentCount)
		}
		status = append(status, d)
	}
	return []string{
		row(fmt.Sprintf("agent status, fan-out to %d real agents (Info each)", agentCount), median(status), "< 3s"),
	}, nil
}

// kubectlMesh runs the plugin the way a user does, through kubectl.
func kubectlMesh(ctx context.Context, binDir, kubeconfig string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"mesh"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+binDir+":"+os.Getenv("PATH"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("kubectl mesh %v: %w\n%s", args, err, tailOf(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func countRows(statusJSON []byte) int {
	var out struct {
		Nodes []json.RawMessage `json:"nodes"`
	}
	if json.Unmarshal(statusJSON, &out) != nil {
		return -1
	}
	return len(out.Nodes)
}

func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func row(what string, d time.Duration, target string) string {
	return fmt.Sprintf("%-58s %12s %10s", what, d.Round(time.Millisecond), target)
}

func tailOf(b []byte) []byte {
	const max = 2000
	if len(b) > max {
		return b[len(b)-max:]
	}
	return b
}

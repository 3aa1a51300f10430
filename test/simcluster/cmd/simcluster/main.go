// Command simcluster runs the simulated cluster of kubectl-mesh in the background (for `make
// demo` and for trying things by hand) and stops it again.
//
//	simcluster build                                  build and cache binaries and images
//	simcluster start [--kwok-nodes N] [--no-real-node] [--no-kwok-agents] [--mesh-demo]
//	                                                  print the admin kubeconfig path when Ready
//	simcluster stop                                   stop the clusters `start` left running
//
// `start` re-executes itself as a supervisor in its own session, which owns every component
// (and the watcher that routes fake nodes' agent pods to local agents) until `stop` signals it.
// Progress goes to stderr; only the kubeconfig path goes to stdout, so that
// `export KUBECONFIG=$(simcluster start)` works.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/test/meshpods"
	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

const usage = `usage:
  simcluster build [--cache DIR]
  simcluster start [--kwok-nodes N] [--no-real-node] [--no-kwok-agents] [--mesh-demo] [--cache DIR]
  simcluster stop [--cache DIR]

The cache defaults to $MESH_SIM_CACHE, else <repository>/.cache. Needs root.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = build(os.Args[2:])
	case "start":
		err = start(os.Args[2:])
	case "stop":
		err = stop(os.Args[2:])
	case "supervise":
		err = supervise(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Fprint(os.Stdout, usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "simcluster: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "simcluster: %v\n", err)
		os.Exit(1)
	}
}

type startFlags struct {
	kwokNodes  int
	noRealNode bool
	noAgents   bool
	meshDemo   bool
	cache      string
	log        string // supervisor only: its log file, removed after a clean stop
}

func parseStart(name string, args []string) (startFlags, error) {
	var f startFlags
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.IntVar(&f.kwokNodes, "kwok-nodes", 2, "number of kwok fake nodes")
	fs.BoolVar(&f.noRealNode, "no-real-node", false, "run without the real node (kubelet + containerd)")
	fs.BoolVar(&f.noAgents, "no-kwok-agents", false, "give kwok nodes no local agent processes (for scale runs of many nodes)")
	fs.BoolVar(&f.meshDemo, "mesh-demo", false, "also mesh two of three nodes: an Istio-shaped control plane and a meshed Deployment (the demo's)")
	fs.StringVar(&f.cache, "cache", "", "cache directory")
	if name == "supervise" {
		fs.StringVar(&f.log, "log", "", "supervisor log file")
	}
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	return f, nil
}

func build(args []string) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	cache := fs.String("cache", "", "cache directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	began := time.Now()
	dir, err := simcluster.ResolveCacheDir(*cache)
	if err != nil {
		return err
	}
	if err := simcluster.EnsureBuilt(context.Background(), dir); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "simcluster: binaries and images in %s ready after %s\n", dir, time.Since(began).Round(time.Millisecond))
	return nil
}

// Protocol on the supervisor's fd 3: progress lines, then "READY <kubeconfig>" or "FAILED <why>".
const (
	readyPrefix  = "READY "
	failedPrefix = "FAILED "
)

func start(args []string) error {
	f, err := parseStart("start", args)
	if err != nil {
		return err
	}
	cache, err := simcluster.ResolveCacheDir(f.cache)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(cache, "clusters"), 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	logPath := filepath.Join(cache, "clusters", fmt.Sprintf("supervisor-%d.log", os.Getpid()))
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "supervise", "--kwok-nodes", strconv.Itoa(f.kwokNodes),
		"--no-real-node="+strconv.FormatBool(f.noRealNode), "--no-kwok-agents="+strconv.FormatBool(f.noAgents), "--mesh-demo="+strconv.FormatBool(f.meshDemo), "--cache", cache, "--log", logPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw}
	// Its own session: the supervisor outlives this command and the terminal's Ctrl-C.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	pw.Close()
	logf.Close()
	// Ctrl-C while starting aborts the start: the supervisor tears down what it began.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "simcluster: interrupted; tearing down")
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}()
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, readyPrefix):
			kubeconfig := strings.TrimPrefix(line, readyPrefix)
			fmt.Println(kubeconfig)
			fmt.Fprintf(os.Stderr, "simcluster: running in the background (supervisor pid %d, logs in %s); `simcluster stop` ends it\n",
				cmd.Process.Pid, filepath.Join(filepath.Dir(kubeconfig), "logs"))
			_ = cmd.Process.Release()
			return nil
		case strings.HasPrefix(line, failedPrefix):
			msg := []string{strings.TrimPrefix(line, failedPrefix)}
			for sc.Scan() {
				msg = append(msg, sc.Text())
			}
			_ = cmd.Wait()
			return fmt.Errorf("%s\n(supervisor log: %s)", strings.Join(msg, "\n"), logPath)
		default:
			fmt.Fprintln(os.Stderr, line)
		}
	}
	_ = cmd.Wait()
	return fmt.Errorf("supervisor exited without reporting; see %s", logPath)
}

// lineWriter sends whole lines to the parent's pipe until the cluster is ready, then only to the
// log (the parent is gone by then).
type lineWriter struct {
	mu     sync.Mutex
	log    io.Writer
	parent io.WriteCloser
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, _ = w.log.Write(p)
	if w.parent != nil {
		_, _ = w.parent.Write(p)
	}
	return len(p), nil
}

func (w *lineWriter) finish(line string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fmt.Fprintln(w.log, line)
	if w.parent != nil {
		fmt.Fprintln(w.parent, line)
		w.parent.Close()
		w.parent = nil
	}
}

func supervise(args []string) error {
	f, err := parseStart("supervise", args)
	if err != nil {
		return err
	}
	out := &lineWriter{log: os.Stderr, parent: os.NewFile(3, "parent")}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-sig
		cancel()
	}()
	c, err := simcluster.Start(ctx, simcluster.Options{
		KwokNodes:    f.kwokNodes,
		RealNode:     !f.noRealNode,
		NoKwokAgents: f.noAgents,
		CacheDir:     f.cache,
		Log:          out,
		Detached:     true,
	})
	if err != nil {
		out.finish(failedPrefix + strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return err
	}
	// From here on the log belongs with the cluster's other logs, and goes when the cluster does
	// (however it is stopped). A failed start leaves it where `start` said it is.
	if f.log != "" {
		if err := os.Rename(f.log, filepath.Join(c.Dir(), "logs", "supervisor.log")); err == nil {
			f.log = ""
		}
	}
	// The stand-in pods of kwok nodes are this process's children: they live as long as it.
	if f.meshDemo {
		w, err := meshpods.DeployDemo(ctx, c, out)
		if err != nil {
			out.finish(failedPrefix + "meshing the demo: " + strings.ReplaceAll(err.Error(), "\n", "\n  "))
			return errors.Join(err, c.Stop())
		}
		fmt.Fprintf(out, "simcluster: meshed Deployment %s/%s (%d pods), Istio %s control plane in %s\n",
			w.Namespace(), w.Name(), len(w.Pods()), meshpods.DemoIstioVersion, meshpods.IstioNamespace)
	}
	out.finish(readyPrefix + c.Kubeconfig())
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "simcluster: signalled; tearing down")
	if err := c.Stop(); err != nil {
		return err
	}
	return nil
}

func stop(args []string) error {
	fs := flag.NewFlagSet("stop", flag.ContinueOnError)
	cache := fs.String("cache", "", "cache directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	began := time.Now()
	err := simcluster.StopDetached(ctx, *cache, os.Stderr)
	// Logs of supervisors whose start failed (the parent printed their path then).
	if dir, derr := simcluster.ResolveCacheDir(*cache); derr == nil {
		logs, _ := filepath.Glob(filepath.Join(dir, "clusters", "supervisor-*.log"))
		for _, l := range logs {
			_ = os.Remove(l)
		}
	}
	fmt.Fprintf(os.Stderr, "simcluster: stop took %s\n", time.Since(began).Round(time.Millisecond))
	return err
}

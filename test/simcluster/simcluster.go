// Package simcluster runs a real Kubernetes cluster on this machine for end-to-end tests and the
// demo: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, optionally one real node
// (kubelet + containerd + a bridge pod network), and any number of kwok fake nodes whose agents
// are real local mesh-agent processes reachable through pods/portforward.
//
// It needs root. Everything a cluster creates on the host is named after its slot (see
// maxSlots) and recorded in <cache>/clusters/sim-<slot>/state.json, so that Stop, a later Start
// on the same slot, or `simcluster stop` can remove it even after a crash.
package simcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Options configure Start.
type Options struct {
	// KwokNodes is the number of kwok fake nodes, each with its own local mesh-agent process.
	KwokNodes int
	// NoKwokAgents leaves the kwok nodes without local agents: their agent pods exist but
	// nothing answers, which is enough for API-side scale runs of a thousand nodes.
	NoKwokAgents bool
	// RealNode adds one node with a real kubelet and containerd.
	RealNode bool
	// CacheDir holds built binaries, images and cluster state. Default: env MESH_SIM_CACHE, else
	// <repository root>/.cache.
	CacheDir string
	// Log receives progress lines; nil discards them.
	Log io.Writer

	// Detached marks a cluster owned by a background supervisor (`simcluster start`), which
	// StopDetached may stop; clusters of running tests are never touched by it.
	Detached bool
}

// Cluster is a running simulated cluster.
type Cluster struct {
	opts  Options
	dir   string
	art   artifacts
	state *state
	pki   *pki

	release func() // slot lock

	mu      sync.Mutex
	procs   []*proc
	agents  map[string]*proc // kwok node name -> its running mesh-agent
	stopped bool
	stopErr error
	cancel  context.CancelFunc // stops background goroutines (the PortForward watcher)
	bgDone  sync.WaitGroup
	restCfg *rest.Config
	client  kubernetes.Interface

	etcdURL   string
	saKey     string
	apiserver *proc
	kubelet   *proc
}

// Node names, fixed so that tests and the demo can refer to them.
const (
	realNodeName   = "real-node"
	kwokNodePrefix = "kwok-node-"
)

// New starts a cluster for a test and stops it when the test ends. It fails the test if the
// cluster does not come up; it never skips.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Log == nil {
		opts.Log = testLog{t}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("simcluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs(opts.Log, 40)
			c.keepLogs(t.Name())
		}
		if err := c.Stop(); err != nil {
			t.Errorf("simcluster stop: %v", err)
		}
	})
	return c
}

type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Start brings a cluster up and returns when every node is Ready. On failure it tears down
// whatever it had started and says which component failed, with the tail of its log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("simcluster: needs root (bridges, mounts, cgroups, containerd)")
	}
	if opts.KwokNodes < 0 {
		return nil, errors.New("simcluster: negative KwokNodes")
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.CacheDir == "" {
		root, err := repoRoot()
		if err != nil {
			return nil, err
		}
		opts.CacheDir = defaultCacheDir(root)
	}
	abs, err := filepath.Abs(opts.CacheDir)
	if err != nil {
		return nil, err
	}
	opts.CacheDir = abs
	began := time.Now()
	art, err := ensureBuilt(ctx, opts.CacheDir, opts.Log)
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, art: art, agents: map[string]*proc{}}
	c.logf("binaries and images ready after %s", time.Since(began).Round(time.Millisecond))
	if err := c.claimSlot(); err != nil {
		return nil, err
	}
	if err := c.start(ctx); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", ctx.Err())
		} else {
			c.dumpLogs(opts.Log, 30)
		}
		if stopErr := c.Stop(); stopErr != nil {
			err = fmt.Errorf("%w (and teardown: %v)", err, stopErr)
		}
		return nil, err
	}
	c.logf("cluster up in %s: kubeconfig %s", time.Since(began).Round(time.Millisecond), c.Kubeconfig())
	return c, nil
}

// claimSlot takes the first free slot lock and clears out anything a crashed owner of that slot
// left behind.
func (c *Cluster) claimSlot() error {
	if err := os.MkdirAll(filepath.Join(c.opts.CacheDir, "clusters"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return err
	}
	for slot := 0; slot < maxSlots; slot++ {
		lock, ok, err := tryFlock(slotLock(slot))
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		dir := slotDir(c.opts.CacheDir, slot)
		previous := slotOwnerDir(slot)
		// Claim the slot in the lock file first, so that a concurrent `simcluster stop` sees
		// whose it is while the remains of the previous cluster are being removed.
		if err := lock.Truncate(0); err == nil {
			_, err = lock.WriteAt([]byte(dir+"\n"), 0)
		}
		if err != nil {
			lock.Close()
			return err
		}
		if err := c.clearSlot(slot, previous, dir); err != nil {
			lock.Close()
			return fmt.Errorf("slot %d: clearing an earlier cluster: %w", slot, err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			lock.Close()
			return err
		}
		c.dir, c.release = dir, func() { lock.Close() }
		c.state = newState(slot, dir)
		c.state.Daemon = c.opts.Detached
		c.logf("slot %d: %s", slot, dir)
		return c.saveState()
	}
	return fmt.Errorf("simcluster: all %d cluster slots are in use (locks %s); stop a cluster (`simcluster stop`) first", maxSlots, slotLock(0))
}

// clearSlot removes the remains of earlier clusters on a slot whose lock nobody holds: the one
// its lock file names (perhaps in another cache directory), the one in this cache's directory
// for the slot, and in any case the host names derived from the slot.
func (c *Cluster) clearSlot(slot int, previous, dir string) error {
	var dirs []string
	if previous != "" {
		dirs = append(dirs, previous)
	}
	if len(dirs) == 0 || dirs[0] != dir {
		dirs = append(dirs, dir)
	}
	var errs []error
	for _, d := range dirs {
		if old, err := readState(d); err == nil && old.Slot == slot {
			c.logf("slot %d: removing the remains of an earlier cluster in %s (owner pid %d)", slot, d, old.OwnerPID)
			errs = append(errs, teardown(old, nil, c.logf))
		} else if err == nil || !os.IsNotExist(err) {
			// A directory without a usable state has no processes or mounts we can identify.
			errs = append(errs, unmountUnder(d), os.RemoveAll(d))
		}
	}
	bare := newState(slot, "")
	errs = append(errs, teardown(bare, nil, c.logf))
	return errors.Join(errs...)
}

func (c *Cluster) start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	var err error
	if c.pki, err = newPKI(filepath.Join(c.dir, "pki")); err != nil {
		return err
	}
	if err := c.createBridge(); err != nil {
		return err
	}
	if err := c.startEtcd(ctx); err != nil {
		return err
	}
	if err := c.startAPIServer(ctx); err != nil {
		return err
	}
	// The real node's runtime and image imports need only the host; run them while the
	// apiserver starts.
	var nodeErr error
	var wg sync.WaitGroup
	if c.opts.RealNode {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodeErr = c.startContainerd(ctx)
		}()
	}
	if err := c.waitAPIServer(ctx); err != nil {
		wg.Wait()
		return err
	}
	wg.Wait()
	if nodeErr != nil {
		return nodeErr
	}
	if err := c.startControllers(); err != nil {
		return err
	}
	if c.opts.RealNode {
		if err := c.startKubelet(); err != nil {
			return err
		}
	}
	if c.opts.KwokNodes > 0 {
		if err := c.startKwok(ctx); err != nil {
			return err
		}
	}
	if err := c.waitNodesReady(ctx); err != nil {
		return err
	}
	// Pods are refused until their namespace's default ServiceAccount exists; the controller
	// manager creates it shortly after start, and a cluster handed out should accept pods.
	return waitFor(ctx, "ServiceAccount default/default", nil, func(ctx context.Context) error {
		_, err := c.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// Kubeconfig is the path of an admin (system:masters) kubeconfig.
func (c *Cluster) Kubeconfig() string { return c.state.Kubeconfig }

// RESTConfig is an admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restCfg) }

// RealNodeName is the name of the node with the real kubelet, or "" without one.
func (c *Cluster) RealNodeName() string { return c.state.RealNode }

// KwokNodeNames are the fake nodes, in order.
func (c *Cluster) KwokNodeNames() []string { return slices.Clone(c.state.KwokNodes) }

// ContainerdSocket is the address of the real node's containerd (for `ctr -a`), or "" without
// a real node. Its images and containers are in the k8s.io namespace.
func (c *Cluster) ContainerdSocket() string { return c.state.ContainerdSocket }

// Dir is the cluster's state directory (logs in Dir/logs).
func (c *Cluster) Dir() string { return c.dir }

func (c *Cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.opts.Log, "simcluster: "+format+"\n", args...)
}

// dumpLogs writes the tail of every component log, for failure reports.
func (c *Cluster) dumpLogs(w io.Writer, lines int) {
	if c.state == nil {
		return
	}
	c.mu.Lock()
	recs := slices.Clone(c.state.Procs)
	c.mu.Unlock()
	for _, r := range recs {
		fmt.Fprintf(w, "----- %s (%s), last %d lines -----\n%s\n", r.Name, r.Log, lines, tail(r.Log, lines))
	}
}

// keepLogs copies the component logs out of the cluster directory, which Stop removes, to
// <cache>/failed/<name>-<time>/ for a post-mortem.
func (c *Cluster) keepLogs(name string) {
	dst := filepath.Join(c.opts.CacheDir, "failed",
		strings.NewReplacer("/", "_", " ", "_").Replace(name)+"-"+time.Now().Format("20060102-150405"))
	if err := os.CopyFS(dst, os.DirFS(filepath.Join(c.dir, "logs"))); err != nil {
		c.logf("keeping logs: %v", err)
		return
	}
	c.logf("component logs kept in %s", dst)
}

// Stop tears everything down. It is safe to call more than once and after a failed Start.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return c.stopErr
	}
	c.stopped = true
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	c.bgDone.Wait()
	began := time.Now()
	var err error
	if c.state != nil {
		live := map[int]*proc{}
		c.mu.Lock()
		for _, p := range c.procs {
			live[p.rec.PID] = p
		}
		c.mu.Unlock()
		err = teardown(c.state, live, c.logf)
		c.logf("torn down in %s", time.Since(began).Round(time.Millisecond))
	}
	if c.release != nil {
		c.release()
	}
	c.mu.Lock()
	c.stopErr = err
	c.mu.Unlock()
	return err
}

// freePort returns a TCP port that was free on ip a moment ago.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFor polls check until it returns nil, p exits, or ctx ends.
func waitFor(ctx context.Context, what string, p *proc, check func(context.Context) error) error {
	var last error
	for {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (%v) while waiting for %s; log %s:\n%s", p.rec.Name, p.err, what, p.rec.Log, tail(p.rec.Log, 30))
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		var f fatal
		if errors.As(last, &f) {
			return f.err
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("timed out waiting for %s: %v", what, last)
			if p != nil {
				msg += fmt.Sprintf("; log %s:\n%s", p.rec.Log, tail(p.rec.Log, 30))
			}
			return errors.New(msg)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *Cluster) loadRESTConfig() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.state.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 100, 200
	// client-go caches transports process-wide, keyed by the CA file's path rather than its
	// content when the config names files; a later cluster on the same slot (same paths, new
	// CA) in the same test binary would get a transport that trusts the old CA. Inline data
	// keys the cache by content.
	if err := rest.LoadTLSFiles(cfg); err != nil {
		return err
	}
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = "", "", ""
	c.restCfg = cfg
	c.client, err = kubernetes.NewForConfig(cfg)
	return err
}

// fatal ends a waitFor early: waiting longer cannot help.
type fatal struct{ err error }

func (f fatal) Error() string { return f.err.Error() }

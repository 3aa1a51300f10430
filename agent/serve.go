package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/agent/hostinfo"
	"github.com/kubectl-mesh/kubectl-mesh/agent/metrics"
	"github.com/kubectl-mesh/kubectl-mesh/agent/server"
	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/version"
)

const autoTier = "auto"

type serveOptions struct {
	listen          string
	metricsListen   string
	nodeName        string
	ebpfTier        string
	cgroupRoot      string
	procRoot        string
	kubeconfig      string
	sidecarFlags    []string
	sidecars        map[string]discovery.Mesh
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
}

func defaultServeOptions() *serveOptions {
	node := os.Getenv("NODE_NAME")
	if node == "" {
		node, _ = os.Hostname()
	}
	return &serveOptions{
		listen:          "127.0.0.1:9460",
		metricsListen:   "127.0.0.1:9461",
		nodeName:        node,
		ebpfTier:        autoTier,
		cgroupRoot:      hostinfo.DefaultPaths.CgroupRoot,
		procRoot:        discovery.DefaultProcRoot,
		shutdownTimeout: 10 * time.Second,
		logFormat:       "text",
		logLevel:        "info",
	}
}

func (o *serveOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", o.listen, "gRPC address; must be a loopback IP (127.0.0.0/8 or ::1), since port-forward is the only way in")
	f.StringVar(&o.metricsListen, "metrics-listen", o.metricsListen, "Prometheus metrics address; empty disables metrics")
	f.StringVar(&o.nodeName, "node-name", o.nodeName, "name of this node (default from $NODE_NAME, else the hostname)")
	f.StringVar(&o.ebpfTier, "ebpf-tier", o.ebpfTier, "eBPF tier: auto picks the first of tp_btf, raw_tp, fentry, kprobe that attaches; "+
		"naming one forces it and the agent exits if it does not attach; none disables eBPF")
	f.StringVar(&o.cgroupRoot, "cgroup-root", o.cgroupRoot, "where the host's cgroup hierarchies are mounted")
	f.StringVar(&o.procRoot, "proc-root", o.procRoot, "the host's procfs, where sidecar processes are found and measured; "+
		"with hostPID (as the DaemonSet runs) the agent's own /proc already shows every host process")
	f.StringVar(&o.kubeconfig, "kubeconfig", o.kubeconfig, "kubeconfig for the pod watch when not running in a pod (default $KUBECONFIG)")
	f.StringArrayVar(&o.sidecarFlags, "sidecar-container", nil, "treat containers of this name as a mesh's sidecar, as name=mesh "+
		"(mesh one of istio, linkerd, kuma, consul, osm, nginx); repeatable")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", o.shutdownTimeout, "how long to let in-flight RPCs finish on SIGTERM before cutting them")
	f.StringVar(&o.logFormat, "log-format", o.logFormat, "log format on stderr: text or json")
	f.StringVar(&o.logLevel, "log-level", o.logLevel, "log level: debug, info, warn or error")
}

// validateLoopback accepts host:port where host is a literal loopback IP. Names are
// refused rather than resolved, so that no resolver setting can widen what is exposed.
func validateLoopback(flag, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--%s %q: %w", flag, addr, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil || port == "" {
		return fmt.Errorf("--%s %q: bad port %q", flag, addr, port)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--%s %q: the agent serves on a loopback IP only (127.0.0.0/8 or ::1), "+
			"reached through kubectl port-forward; use e.g. 127.0.0.1:%s", flag, addr, port)
	}
	return nil
}

// tiers is the order to try for --ebpf-tier, and whether the choice was forced.
func (o *serveOptions) tiers() ([]ebpftier.Tier, bool, error) {
	if strings.EqualFold(o.ebpfTier, autoTier) {
		return ebpftier.Order, false, nil
	}
	t, err := ebpftier.ParseTier(o.ebpfTier)
	if err != nil {
		return nil, false, fmt.Errorf("--ebpf-tier: %w, or auto", err)
	}
	if t == ebpftier.None {
		return nil, true, nil
	}
	return []ebpftier.Tier{t}, true, nil
}

func (o *serveOptions) validate() error {
	if err := validateLoopback("listen", o.listen); err != nil {
		return err
	}
	if o.metricsListen != "" {
		if _, _, err := net.SplitHostPort(o.metricsListen); err != nil {
			return fmt.Errorf("--metrics-listen %q: %w", o.metricsListen, err)
		}
	}
	if strings.TrimSpace(o.nodeName) == "" {
		return errors.New("--node-name is empty and neither $NODE_NAME nor the hostname gave one")
	}
	if _, _, err := o.tiers(); err != nil {
		return err
	}
	o.sidecars = nil
	for _, v := range o.sidecarFlags {
		name, mesh, err := discovery.ParseSidecarFlag(v)
		if err != nil {
			return fmt.Errorf("--sidecar-container %q: %w", v, err)
		}
		if o.sidecars == nil {
			o.sidecars = map[string]discovery.Mesh{}
		}
		o.sidecars[name] = mesh
	}
	if o.shutdownTimeout <= 0 {
		return fmt.Errorf("--shutdown-timeout %s: must be positive", o.shutdownTimeout)
	}
	if _, err := o.logger(); err != nil {
		return err
	}
	return nil
}

func (o *serveOptions) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", o.logLevel, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
}

func (o *serveOptions) run(ctx context.Context) error {
	log, err := o.logger()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	facts := server.Facts{
		NodeName:  o.nodeName,
		Version:   version.Version,
		GoVersion: runtime.Version(),
		StartTime: time.Now(),
	}
	paths := hostinfo.DefaultPaths
	paths.CgroupRoot = o.cgroupRoot
	facts.Host, err = hostinfo.Collect(paths)
	if err != nil {
		// Partial facts still let the plugin show what is known; the log says what is not.
		log.Warn("some host facts are unknown", "err", err)
	}

	tiers, forced, _ := o.tiers()
	probe := ebpftier.ProbeTiers(tiers)
	defer func() {
		if err := probe.Close(); err != nil {
			log.Warn("detach eBPF probe", "err", err)
		}
	}()
	for _, a := range probe.Attempts {
		if a.OK() {
			log.Info("eBPF tier attached", "tier", a.Tier)
		} else {
			log.Info("eBPF tier unavailable", "tier", a.Tier, "err", a.Err)
		}
	}
	if forced && len(tiers) > 0 && probe.Tier == ebpftier.None {
		return fmt.Errorf("forced --ebpf-tier %s did not attach: %w (use --ebpf-tier auto to fall back)", tiers[0], probe.Attempts[0].Err)
	}
	if len(tiers) > 0 && probe.Tier == ebpftier.None && !facts.Host.HasCapability("CAP_SYS_ADMIN") &&
		!(facts.Host.HasCapability("CAP_BPF") && facts.Host.HasCapability("CAP_PERFMON")) {
		log.Warn("running without eBPF: loading tracing programs needs CAP_BPF and CAP_PERFMON", "capabilities", facts.Host.Capabilities)
	}
	facts.Tier, facts.Attempts = probe.Tier, probe.Attempts

	disc := o.startDiscovery(ctx, log, facts.NodeName)
	// Without a sampler Snapshot says so; Info and the probes must still work.
	var measurer server.Measurer
	sampler, err := usage.NewSampler(o.cgroupRoot, o.procRoot)
	if err != nil {
		log.Warn("no usage sampling", "err", err)
	} else {
		measurer = sampler
		mounts := map[string]string{discovery.Unified: sampler.Cgroups.UnifiedMount()}
		for _, c := range []string{"cpu", "cpuacct", "memory"} {
			mounts[c] = filepath.Join(o.cgroupRoot, c)
		}
		facts.CgroupNamespace, err = server.DetectNamespaceRoots(o.procRoot, os.Getpid(), mounts)
		if err != nil {
			log.Warn("cannot place the agent's cgroup namespace in the host's hierarchy; sidecar cgroups read as namespace-relative paths will not be found",
				"err", err)
		} else if len(facts.CgroupNamespace) > 0 {
			log.Info("agent runs in a private cgroup namespace", "roots", facts.CgroupNamespace)
		}
	}

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("gRPC listen: %w", err)
	}
	defer lis.Close()

	agentSrv := server.New(facts, disc, measurer)
	var metricsSrv *http.Server
	metricsErr := make(chan error, 1)
	if o.metricsListen != "" {
		var sends metrics.SendReader
		if probe.Sends != nil {
			sends = probe.Sends
		}
		reg := metrics.NewRegistry(metrics.Info{
			Node: facts.NodeName, Version: facts.Version, Kernel: facts.Host.KernelRelease, Tier: facts.Tier,
		}, facts.Attempts, sends)
		if sampler != nil {
			metrics.RegisterSidecars(reg, server.NewScraper(disc, sampler, facts.CgroupNamespace, log))
		}
		metrics.RegisterRuns(reg, agentSrv)
		mlis, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return fmt.Errorf("metrics listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler(reg))
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { metricsErr <- metricsSrv.Serve(mlis) }()
		log.Info("serving metrics", "addr", mlis.Addr().String())
	}

	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	agentapi.RegisterAgentServer(gs, agentSrv)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(agentapi.Agent_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	grpcErr := make(chan error, 1)
	go func() { grpcErr <- gs.Serve(lis) }()
	log.Info("serving gRPC", "addr", lis.Addr().String(), "node", facts.NodeName, "version", facts.Version,
		"kernel", facts.Host.KernelRelease, "tier", facts.Tier, "cgroup", facts.Host.CgroupLayout, "host_pid", facts.Host.HostPID)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "reason", context.Cause(ctx))
	case serveErr = <-grpcErr:
		serveErr = fmt.Errorf("gRPC server: %w", serveErr)
	case serveErr = <-metricsErr:
		serveErr = fmt.Errorf("metrics server: %w", serveErr)
	}

	// Probes see NOT_SERVING while in-flight calls drain.
	hs.Shutdown()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	drained := make(chan struct{})
	go func() { gs.GracefulStop(); close(drained) }()
	if metricsSrv != nil {
		if err := metricsSrv.Shutdown(shutdownCtx); err != nil {
			metricsSrv.Close()
		}
	}
	select {
	case <-drained:
	case <-shutdownCtx.Done():
		log.Warn("in-flight RPCs did not finish in time; closing them", "timeout", o.shutdownTimeout)
		gs.Stop()
		<-drained
	}
	if serveErr != nil {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

// restConfig finds API access: the pod's service account, else --kubeconfig, else
// $KUBECONFIG (kwok-node agents of the simulated cluster run as host processes).
func (o *serveOptions) restConfig() (*rest.Config, error) {
	if o.kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err == nil {
			return cfg, nil
		}
		if !errors.Is(err, rest.ErrNotInCluster) {
			return nil, fmt.Errorf("in-cluster config: %w", err)
		}
	}
	path := o.kubeconfig
	if path == "" {
		path = os.Getenv("KUBECONFIG")
	}
	if path == "" {
		return nil, errors.New("not running in a pod (no service account) and neither --kubeconfig nor $KUBECONFIG is set")
	}
	// A KUBECONFIG list is merged the way kubectl merges it.
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(path)}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// startDiscovery starts the node's pod watch in the background: an unreachable API server
// must delay neither start-up nor the health probes, only Snapshot (which says so).
func (o *serveOptions) startDiscovery(ctx context.Context, log *slog.Logger, node string) *server.Discovery {
	cfg, err := o.restConfig()
	if err != nil {
		log.Warn("no Kubernetes API access; Snapshot will be refused", "err", err)
		return server.NoDiscovery(err)
	}
	cfg.UserAgent = "mesh-agent/" + version.Version
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Warn("no Kubernetes API access; Snapshot will be refused", "err", err)
		return server.NoDiscovery(err)
	}
	d := discovery.New(cs, node, discovery.Options{ProcRoot: o.procRoot, SidecarContainers: o.sidecars})
	log.Info("starting pod watch", "node", node, "api", cfg.Host)
	return server.StartDiscovery(ctx, d, log)
}

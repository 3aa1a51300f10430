// Package smp turns a stored performance run into Service Mesh Performance (SMP) documents,
// built with the spec's own Go types so that any SMP reader accepts them, plus an extension
// (x-kubectl-mesh) for what the spec has no field for: the per-node breakdown, the latency a
// sidecar adds over its baseline, and the merged latency histograms.
package smp

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	smp "github.com/layer5io/service-mesh-performance/spec"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// Version is the SMP spec release the documents follow (the Go module's tag); every
// document's smp_version holds it.
const Version = "v0.6.1"

// LoadGenerator names our load generator in PerformanceTestConfig.Client.load_generator.
const LoadGenerator = "kubectl-mesh mesh-agent"

// Label keys we set on the standard documents.
const (
	labelPrefix        = "kubectl-mesh.dev/"
	LabelRunID         = labelPrefix + "run-id"
	LabelContext       = labelPrefix + "context"
	LabelPluginVersion = labelPrefix + "plugin-version"
	LabelTarget        = labelPrefix + "target"
	LabelAskedRate     = labelPrefix + "asked-rate"
	LabelRateScope     = labelPrefix + "asked-rate-scope"
	LabelNodesMeasured = labelPrefix + "nodes-measured"
	LabelNodesFailed   = labelPrefix + "nodes-failed"
	LabelInterrupted   = labelPrefix + "interrupted"
	LabelLatencyPath   = labelPrefix + "latency-path"
	LabelMeshName      = labelPrefix + "mesh-name"
	LabelMeshNamespace = labelPrefix + "mesh-namespace"
)

// Documents are the SMP messages for one run and our extension beside them.
type Documents struct {
	Config      *smp.PerformanceTestConfig
	Result      *smp.PerformanceTestResult
	Mesh        *smp.ServiceMeshConfig
	Environment *smp.EnvironmentConfig
	Extension   *Extension
}

// Names of the documents: the keys of the combined document and the middle part of the
// file names WriteDir writes.
const (
	KeyConfig      = "performance_test_config"
	KeyResult      = "performance_test_result"
	KeyMesh        = "service_mesh_config"
	KeyEnvironment = "environment_config"
	KeyExtension   = "x-kubectl-mesh"
)

// DocumentID is the id of one of a run's documents: a name-based (version 5) UUID in the
// run id's namespace, so exporting the same stored run again gives the same ids.
func DocumentID(runID uuid.UUID, key string) string {
	return uuid.NewSHA1(runID, []byte(key)).String()
}

// Build makes the SMP documents of a run. The standard documents are computed from the
// nodes that returned results; a failed node is only in the extension, with its error.
func Build(r *perfrun.Run) (*Documents, error) {
	if r == nil {
		return nil, errors.New("smp: no run")
	}
	runID, err := uuid.Parse(r.GetId())
	if err != nil {
		return nil, fmt.Errorf("smp: run id %q: %v", r.GetId(), err)
	}
	nodes, total := perfrun.Summarize(r)
	ids := map[string]string{}
	for _, k := range []string{KeyConfig, KeyResult, KeyMesh, KeyEnvironment} {
		ids[k] = DocumentID(runID, k)
	}
	var measured, failed []string
	for i, n := range r.GetNodes() {
		if nodes[i].Failed {
			failed = append(failed, n.GetNode())
		} else {
			measured = append(measured, n.GetNode())
		}
	}
	rates := sidecarRates(r)

	d := &Documents{
		Config:      buildConfig(r, ids[KeyConfig]),
		Result:      buildResult(r, ids, total, measured, failed),
		Mesh:        buildMesh(r, ids[KeyMesh], rates),
		Environment: buildEnvironment(r, ids[KeyEnvironment], total),
	}
	d.Extension, err = buildExtension(r, nodes, total, rates)
	if err != nil {
		return nil, err
	}
	return d, nil
}

func commonLabels(r *perfrun.Run) map[string]string {
	l := map[string]string{LabelRunID: r.GetId()}
	if r.GetContext() != "" {
		l[LabelContext] = r.GetContext()
	}
	if r.GetPluginVersion() != "" {
		l[LabelPluginVersion] = r.GetPluginVersion()
	}
	return l
}

// buildConfig describes the load as each measured node's agent generated it: one SMP client
// per node, since the spec's clients are "single or distributed load generators".
func buildConfig(r *perfrun.Run, id string) *smp.PerformanceTestConfig {
	t := r.GetTarget()
	c := &smp.PerformanceTestConfig{
		SmpVersion: Version,
		Id:         id,
		Name:       testName(t),
		Labels:     commonLabels(r),
	}
	c.Labels[LabelTarget] = testName(t)
	if r.GetAskedRate() > 0 {
		c.Labels[LabelAskedRate] = strconv.FormatFloat(r.GetAskedRate(), 'f', -1, 64)
		c.Labels[LabelRateScope] = rateScope(r)
	}
	if d := r.GetLoad().GetDuration(); d != nil {
		c.Duration = d.AsDuration().String()
	}
	for _, n := range r.GetNodes() {
		if n.GetResult() == nil {
			continue
		}
		load := n.GetResult().GetLoad()
		if load == nil {
			load = r.GetLoad()
		}
		c.Clients = append(c.Clients, buildClient(load, t, n.GetPods()))
	}
	return c
}

func rateScope(r *perfrun.Run) string {
	if r.GetRatePerNode() {
		return "per-node"
	}
	return "total"
}

func testName(t *perfrun.Target) string {
	var what string
	if t.GetKind() == "selector" {
		what = "-l " + t.GetSelector()
	} else {
		what = t.GetKind() + "/" + t.GetName()
	}
	return fmt.Sprintf("%s port %d in namespace %s", what, t.GetPort(), t.GetNamespace())
}

// sensitiveHeader says whether a header's value must not leave the stored run: SMP
// documents are made to be shared.
func sensitiveHeader(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key":
		return true
	}
	return strings.Contains(n, "token") || strings.Contains(n, "secret") || strings.Contains(n, "password")
}

// Redacted replaces the values of sensitive headers and of cookies.
const Redacted = "REDACTED"

func buildClient(load *agentapi.LoadSpec, t *perfrun.Target, pods []*agentapi.PodRef) *smp.PerformanceTestConfig_Client {
	c := &smp.PerformanceTestConfig_Client{
		// The agent generates the load inside the cluster, next to the pods, with no ingress.
		Internal:      true,
		LoadGenerator: LoadGenerator,
		Protocol:      clientProtocol(load.GetProtocol()),
		Connections:   clampInt32(float64(load.GetConnections())),
		Rps:           int64(math.Round(load.GetRate())),
	}
	var opts []string
	if load.GetProtocol() == agentapi.Protocol_PROTOCOL_HTTP2 {
		opts = append(opts, "http_version=2")
	}
	if m := load.GetMethod(); m != "" && (load.GetProtocol() == agentapi.Protocol_PROTOCOL_HTTP1 || load.GetProtocol() == agentapi.Protocol_PROTOCOL_HTTP2) {
		opts = append(opts, "method="+m)
	}
	if load.GetRate() == 0 {
		opts = append(opts, "closed_loop=true")
	}
	if w := load.GetWarmup(); w != nil && w.AsDuration() > 0 {
		opts = append(opts, "warmup="+w.AsDuration().String())
	}
	for _, k := range slices.Sorted(maps.Keys(load.GetHeaders())) {
		v := load.GetHeaders()[k]
		switch strings.ToLower(k) {
		case "content-type":
			c.ContentType = v
			continue
		case "cookie":
			if cs, err := http.ParseCookie(v); err == nil {
				for _, ck := range cs {
					if c.Cookies == nil {
						c.Cookies = map[string]string{}
					}
					c.Cookies[ck.Name] = Redacted
				}
				continue
			}
		}
		if c.Headers == nil {
			c.Headers = map[string]string{}
		}
		if sensitiveHeader(k) {
			v = Redacted
		}
		c.Headers[k] = v
	}
	if b := load.GetBody(); len(b) > 0 {
		// SMP's body is a string and JSON strings must be UTF-8.
		if utf8.Valid(b) {
			c.Body = string(b)
		} else {
			c.Body = base64.StdEncoding.EncodeToString(b)
			opts = append(opts, "body_encoding=base64")
		}
	}
	c.AdditionalOptions = strings.Join(opts, " ")
	for _, p := range pods {
		c.EndpointUrls = append(c.EndpointUrls, endpointURL(load, t, p))
	}
	return c
}

// endpointURL names a target pod as a URL. The agent dials the pod's IP, which the run does
// not keep, so the host is the pod's name and namespace ("NAME.NAMESPACE").
func endpointURL(load *agentapi.LoadSpec, t *perfrun.Target, p *agentapi.PodRef) string {
	ns := p.GetNamespace()
	if ns == "" {
		ns = t.GetNamespace()
	}
	u := url.URL{Host: fmt.Sprintf("%s.%s:%d", p.GetName(), ns, t.GetPort())}
	switch load.GetProtocol() {
	case agentapi.Protocol_PROTOCOL_GRPC:
		u.Scheme, u.Path = "grpc", load.GetPath()
	case agentapi.Protocol_PROTOCOL_TCP:
		u.Scheme = "tcp"
	default:
		// The load's path is the request target, query included.
		u.Scheme, u.Path = "http", load.GetPath()
		if i := strings.IndexByte(u.Path, '?'); i >= 0 {
			u.Path, u.RawQuery = u.Path[:i], u.Path[i+1:]
		}
		if u.Path == "" {
			u.Path = "/"
		}
	}
	return u.String()
}

// clientProtocol maps our protocols onto SMP's; SMP has one HTTP for both versions (the
// version goes in additional_options).
func clientProtocol(p agentapi.Protocol) smp.PerformanceTestConfig_Client_Protocol {
	switch p {
	case agentapi.Protocol_PROTOCOL_HTTP1, agentapi.Protocol_PROTOCOL_HTTP2:
		return smp.PerformanceTestConfig_Client_PROTOCOL_HTTP
	case agentapi.Protocol_PROTOCOL_GRPC:
		return smp.PerformanceTestConfig_Client_PROTOCOL_GRPC
	case agentapi.Protocol_PROTOCOL_TCP:
		return smp.PerformanceTestConfig_Client_PROTOCOL_TCP
	}
	return smp.PerformanceTestConfig_Client_PROTOCOL_INVALID
}

func buildResult(r *perfrun.Run, ids map[string]string, total perfrun.Summary, measured, failed []string) *smp.PerformanceTestResult {
	res := &smp.PerformanceTestResult{
		SmpVersion:   Version,
		Id:           ids[KeyResult],
		Labels:       commonLabels(r),
		StartTime:    r.GetStartTime(),
		EndTime:      r.GetEndTime(),
		ActualQps:    finite(total.AchievedRate),
		DetailsUri:   "urn:uuid:" + r.GetId(),
		TestId:       ids[KeyConfig],
		MeshConfigId: ids[KeyMesh],
		EnvId:        ids[KeyEnvironment],
	}
	res.Labels[LabelNodesMeasured] = strconv.Itoa(len(measured))
	if len(failed) > 0 {
		res.Labels[LabelNodesFailed] = strings.Join(failed, ",")
	}
	if r.GetInterrupted() {
		res.Labels[LabelInterrupted] = "true"
	}
	if total.Measured() {
		res.Labels[LabelLatencyPath] = "through-sidecar"
		h := total.Through
		res.LatenciesMs = &smp.PerformanceTestResult_Latency{
			Min:     usToMs(float64(h.Min())),
			Average: usToMs(h.Mean()),
			P50:     durationMs(total.Latency(0.5)),
			P90:     durationMs(total.Latency(0.9)),
			P99:     durationMs(total.Latency(0.99)),
			Max:     usToMs(float64(h.Max())),
		}
	}
	return res
}

func usToMs(us float64) float64 { return us / 1e3 }

func durationMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// sidecarUse is what the sidecars of a set of pods used, summed, and the requests that
// went through them per second.
type sidecarUse struct {
	count      int // sidecars with usage measured under load
	cpu        float64
	memory     uint64
	throughRPS float64
}

// sidecarRates sums sidecar usage and through-sidecar rates per node (keyed by node name)
// and for the whole run (key ""). A node's agent measures its pods one after another, so
// a node's rate is its through-sidecar requests over its pods' measured time; nodes run at
// the same time, so the run's rate is the sum over nodes.
func sidecarRates(r *perfrun.Run) map[string]sidecarUse {
	out := map[string]sidecarUse{}
	var all sidecarUse
	for _, n := range r.GetNodes() {
		var u sidecarUse
		var through float64
		var seconds float64
		for _, p := range n.GetResult().GetPods() {
			if l := p.GetSidecarLoaded(); l != nil {
				u.count++
				u.cpu += l.GetCpuMillicores()
				u.memory += l.GetMemoryWorkingSetBytes()
			}
			m := p.GetMeasured().AsDuration()
			if p.GetThroughSidecar() == nil || m <= 0 {
				continue
			}
			h, err := histogram.FromProto(p.GetThroughSidecar())
			if err != nil {
				continue
			}
			through += float64(h.TotalCount())
			seconds += m.Seconds()
		}
		if seconds > 0 {
			u.throughRPS = through / seconds
		}
		out[n.GetNode()] = u
		all.count += u.count
		all.cpu += u.cpu
		all.memory += u.memory
		all.throughRPS += u.throughRPS
	}
	out[""] = all
	return out
}

// bytesToMiB converts to the spec's "mem_mb", which we read as mebibytes (the Mi of
// kubectl top).
func bytesToMiB(b uint64) float64 { return float64(b) / (1 << 20) }

func clampInt32(v float64) int32 {
	v = math.Round(v)
	switch {
	case math.IsNaN(v):
		return 0
	case v > math.MaxInt32:
		return math.MaxInt32
	case v < math.MinInt32:
		return math.MinInt32
	}
	return int32(v)
}

// MeshType maps a detected mesh's id onto the spec's enum; an id the spec has no value for
// (or none) is INVALID_MESH.
func MeshType(name string) smp.ServiceMesh_Type {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "istio":
		return smp.ServiceMesh_ISTIO
	case "linkerd":
		return smp.ServiceMesh_LINKERD
	case "kuma":
		return smp.ServiceMesh_KUMA
	case "consul", "consul-connect":
		return smp.ServiceMesh_CONSUL
	case "osm", "open-service-mesh":
		return smp.ServiceMesh_OPEN_SERVICE_MESH
	case "nginx", "nginx-service-mesh", "nginx-mesh":
		return smp.ServiceMesh_NGINX_SERVICE_MESH
	case "cilium", "cilium-service-mesh":
		return smp.ServiceMesh_CILIUM_SERVICE_MESH
	case "traefik", "traefik-mesh", "maesh":
		return smp.ServiceMesh_TRAEFIK_MESH
	case "app-mesh", "appmesh", "aws-app-mesh":
		return smp.ServiceMesh_APP_MESH
	}
	return smp.ServiceMesh_INVALID_MESH
}

func buildMesh(r *perfrun.Run, id string, rates map[string]sidecarUse) *smp.ServiceMeshConfig {
	m := r.GetMesh()
	c := &smp.ServiceMeshConfig{
		SmpVersion: Version,
		Id:         id,
		Labels:     commonLabels(r),
		MeshBuild:  m.GetVersion(),
		ExpUuid:    r.GetId(),
		MeshType:   &smp.ServiceMesh{Type: MeshType(m.GetName()), Version: m.GetVersion()},
	}
	if app := applicationMetadata(r); app != nil {
		c.ApplicationMetadata = app
	}
	if m.GetName() != "" {
		c.Labels[LabelMeshName] = m.GetName()
	}
	if m.GetNamespace() != "" {
		c.Labels[LabelMeshNamespace] = m.GetNamespace()
	}
	if u := rates[""]; u.count > 0 || u.throughRPS > 0 {
		c.Sidecar = &smp.ServiceMeshConfig_Sidecar{
			Count:     int32(u.count),
			CpuMcores: clampInt32(u.cpu),
			MemMb:     clampInt32(bytesToMiB(u.memory)),
			Rps:       clampInt32(u.throughRPS),
		}
	}
	return c
}

// applicationMetadata names the application under test: the workload or service the user
// named, or the selector.
func applicationMetadata(r *perfrun.Run) *smp.ApplicationMetadata {
	t := r.GetTarget()
	name := t.GetName()
	if t.GetKind() == "selector" || name == "" {
		name = t.GetSelector()
	}
	if name == "" {
		return nil
	}
	app := &smp.ApplicationMetadata{ApplicationName: name}
	switch r.GetLoad().GetProtocol() {
	case agentapi.Protocol_PROTOCOL_HTTP1, agentapi.Protocol_PROTOCOL_HTTP2:
		// The agent speaks plain HTTP to the pod (the sidecar may add mTLS between pods).
		app.ApplicationProtocol = smp.ApplicationMetadata_PROTOCOL_HTTP
	}
	return app
}

// AgentWorkload names the agent in EnvironmentConfig.individual_workloads.
const AgentWorkload = "mesh-agent"

func buildEnvironment(r *perfrun.Run, id string, total perfrun.Summary) *smp.EnvironmentConfig {
	e := &smp.EnvironmentConfig{
		SmpVersion:        Version,
		Id:                id,
		Labels:            commonLabels(r),
		KubernetesVersion: r.GetEnvironment().GetKubernetesVersion(),
	}
	for _, n := range r.GetEnvironment().GetNodes() {
		e.Nodes = append(e.Nodes, &smp.EnvironmentConfig_Node{
			Cores: clampInt32(float64(n.GetCpuCores())),
			MemMb: int64(math.Round(bytesToMiB(n.GetMemoryBytes()))),
		})
	}
	agents := 0
	for _, n := range r.GetNodes() {
		if n.GetResult().GetAgent() != nil {
			agents++
		}
	}
	if agents > 0 {
		// The measuring tool's own cost, so nobody mistakes it for the mesh's.
		e.IndividualWorkloads = append(e.IndividualWorkloads, &smp.EnvironmentConfig_IndividualWorkload{
			Name:      AgentWorkload,
			Count:     int32(agents),
			CpuMcores: clampInt32(total.AgentCPU),
			MemMb:     clampInt32(bytesToMiB(total.AgentMemory)),
		})
	}
	return e
}

package smp_test

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"flag"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/google/uuid"
	smpspec "github.com/layer5io/service-mesh-performance/spec"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun/perfruntest"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/smp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const added = 300 * time.Microsecond

// partialRun is three nodes, the last of which returned nothing.
func partialRun() *perfrun.Run {
	return perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a", "node-b", "node-c"}, Added: added, FailNode: "node-c", Seed: 1})
}

func build(t *testing.T, r *perfrun.Run) *smp.Documents {
	t.Helper()
	d, err := smp.Build(r)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// partialDocs is partialRun's documents, built once for the tests that only read them
// (a build bootstraps intervals per node, the slow part).
var partialDocs = sync.OnceValues(func() (*smp.Documents, error) { return smp.Build(partialRun()) })

func sharedDocs(t *testing.T) *smp.Documents {
	t.Helper()
	d, err := partialDocs()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func marshal(t *testing.T, d *smp.Documents, format string) []byte {
	t.Helper()
	b, err := smp.Marshal(d, format)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Every figure of the standard documents, read back strictly from both encodings, is the
// run's own, computed from the nodes that returned results.
func TestDocumentsCarryTheRunsFigures(t *testing.T) {
	r := partialRun()
	nodes, total := perfrun.Summarize(r)
	built := sharedDocs(t)
	for _, format := range smp.Formats {
		t.Run(format, func(t *testing.T) {
			b := marshal(t, built, format)
			d, err := smp.Read(b)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(d.Config, built.Config) || !proto.Equal(d.Result, built.Result) ||
				!proto.Equal(d.Mesh, built.Mesh) || !proto.Equal(d.Environment, built.Environment) {
				t.Fatal("standard documents changed on the way through " + format)
			}
			if !reflect.DeepEqual(d.Extension, built.Extension) {
				t.Fatal("extension changed on the way through " + format)
			}
			checkStandard(t, r, d, total)
			checkExtension(t, r, d.Extension, nodes, total)
		})
	}
}

func checkStandard(t *testing.T, r *perfrun.Run, d *smp.Documents, total perfrun.Summary) {
	t.Helper()
	runID := uuid.MustParse(r.GetId())
	ids := map[string]bool{}
	for key, doc := range map[string]interface {
		GetSmpVersion() string
		GetId() string
		GetLabels() map[string]string
	}{smp.KeyConfig: d.Config, smp.KeyResult: d.Result, smp.KeyMesh: d.Mesh, smp.KeyEnvironment: d.Environment} {
		if doc.GetSmpVersion() != "v0.6.1" {
			t.Errorf("%s: smp_version %q", key, doc.GetSmpVersion())
		}
		id, err := uuid.Parse(doc.GetId())
		if err != nil || id.Version() != 5 || id.Variant() != uuid.RFC4122 {
			t.Errorf("%s: id %q is not an RFC 4122 version 5 UUID (%v)", key, doc.GetId(), err)
		}
		if doc.GetId() != smp.DocumentID(runID, key) || ids[doc.GetId()] {
			t.Errorf("%s: id %q not the run's own or not unique", key, doc.GetId())
		}
		ids[doc.GetId()] = true
		if doc.GetLabels()[smp.LabelRunID] != r.GetId() {
			t.Errorf("%s: run-id label %q", key, doc.GetLabels()[smp.LabelRunID])
		}
	}

	res := d.Result
	if res.GetTestId() != d.Config.GetId() || res.GetMeshConfigId() != d.Mesh.GetId() || res.GetEnvId() != d.Environment.GetId() {
		t.Errorf("result refers to %s %s %s", res.GetTestId(), res.GetMeshConfigId(), res.GetEnvId())
	}
	if !res.GetStartTime().AsTime().Equal(r.GetStartTime().AsTime()) || !res.GetEndTime().AsTime().Equal(r.GetEndTime().AsTime()) {
		t.Errorf("times %v..%v, want %v..%v", res.GetStartTime().AsTime(), res.GetEndTime().AsTime(), r.GetStartTime().AsTime(), r.GetEndTime().AsTime())
	}
	l := res.GetLatenciesMs()
	h := total.Through
	for name, c := range map[string][2]float64{
		"p50":     {l.GetP50(), ms(total.Latency(0.5))},
		"p90":     {l.GetP90(), ms(total.Latency(0.9))},
		"p99":     {l.GetP99(), ms(total.Latency(0.99))},
		"min":     {l.GetMin(), float64(h.Min()) / 1e3},
		"max":     {l.GetMax(), float64(h.Max()) / 1e3},
		"average": {l.GetAverage(), h.Mean() / 1e3},
	} {
		if !near(c[0], c[1]) || c[0] <= 0 {
			t.Errorf("latencies_ms.%s = %v, want %v", name, c[0], c[1])
		}
	}
	// The synthetic through path is around 150 µs + the added latency + exponential tails.
	if l.GetP50() < ms(150*time.Microsecond+added) || l.GetP50() > 1 {
		t.Errorf("p50 %v ms is not the synthetic distribution's", l.GetP50())
	}
	if !near(res.GetActualQps(), total.AchievedRate) || res.GetActualQps() <= 0 {
		t.Errorf("actual_qps %v, want %v", res.GetActualQps(), total.AchievedRate)
	}
	if res.GetLabels()[smp.LabelNodesFailed] != "node-c" || res.GetLabels()[smp.LabelNodesMeasured] != "2" {
		t.Errorf("result labels %v", res.GetLabels())
	}

	c := d.Config
	if len(c.GetClients()) != 2 || c.GetDuration() != "10s" {
		t.Fatalf("config: %d clients (want one per measured node), duration %q", len(c.GetClients()), c.GetDuration())
	}
	for i, cl := range c.GetClients() {
		want := "http://web-" + string(rune('0'+i)) + ".demo:8080/"
		if !cl.GetInternal() || cl.GetProtocol() != smpspec.PerformanceTestConfig_Client_PROTOCOL_HTTP || cl.GetConnections() != 4 ||
			cl.GetRps() != 250 || !slices.Equal(cl.GetEndpointUrls(), []string{want}) || cl.GetLoadGenerator() == "" ||
			cl.GetAdditionalOptions() != "method=GET warmup=1s" {
			t.Errorf("client %d: %v", i, cl)
		}
	}

	m := d.Mesh
	if m.GetMeshType().GetType() != smpspec.ServiceMesh_ISTIO || m.GetMeshType().GetVersion() != "1.24.0" || m.GetMeshBuild() != "1.24.0" || m.GetExpUuid() != r.GetId() {
		t.Errorf("mesh: %v", m)
	}
	// perfruntest gives node i's sidecar 60+10i millicores and 48 MiB under load; 2000
	// requests per pod went through the sidecar in 9 s.
	sc := m.GetSidecar()
	if sc.GetCount() != int32(total.Pods) || sc.GetCount() != 2 || sc.GetCpuMcores() != 130 || sc.GetMemMb() != 96 || sc.GetRps() != 444 {
		t.Errorf("sidecar: %v", sc)
	}
	if m.GetApplicationMetadata().GetApplicationName() != "web" {
		t.Errorf("application: %v", m.GetApplicationMetadata())
	}

	e := d.Environment
	if e.GetKubernetesVersion() != "v1.36.3" || len(e.GetNodes()) != len(r.GetEnvironment().GetNodes()) {
		t.Fatalf("environment: %v", e)
	}
	for i, n := range e.GetNodes() {
		rn := r.GetEnvironment().GetNodes()[i]
		if n.GetCores() != int32(rn.GetCpuCores()) || n.GetMemMb() != int64(rn.GetMemoryBytes()>>20) {
			t.Errorf("node %d: %v", i, n)
		}
	}
	if w := e.GetIndividualWorkloads(); len(w) != 1 || w[0].GetName() != smp.AgentWorkload || w[0].GetCount() != 2 || w[0].GetCpuMcores() != 24 || w[0].GetMemMb() != 100 {
		t.Errorf("workloads: %v", w)
	}
}

func checkExtension(t *testing.T, r *perfrun.Run, x *smp.Extension, nodes []perfrun.Summary, total perfrun.Summary) {
	t.Helper()
	if x.RunID != r.GetId() || x.NodesMeasured != 2 || x.NodesFailed != 1 || len(x.Nodes) != 3 {
		t.Fatalf("extension: run %s, %d measured, %d failed, %d nodes", x.RunID, x.NodesMeasured, x.NodesFailed, len(x.Nodes))
	}
	if x.Load.RatePerNodeRPS != 250 || x.Load.AskedRateRPS != 500 || x.Load.AskedRateScope != "total" || x.Load.Protocol != "http1" || x.Target.Port != 8080 {
		t.Errorf("load %+v target %+v", x.Load, x.Target)
	}
	failed := x.Nodes[2]
	if !failed.Failed || failed.Name != "node-c" || !strings.Contains(failed.Error, "connection refused") || failed.PodsFailed != 1 ||
		failed.Through != nil || failed.Sidecars != nil || len(failed.Pods) != 1 {
		t.Errorf("failed node: %+v", failed)
	}
	for i, s := range append(nodes[:2:2], total) {
		f := &x.Run
		if i < 2 {
			f = &x.Nodes[i].Figures
			if x.Nodes[i].Failed || x.Nodes[i].Machine == nil || x.Nodes[i].Machine.CPUCores != 2 {
				t.Errorf("node %d: %+v", i, x.Nodes[i])
			}
		}
		if f.PodsMeasured != s.Pods || f.Requests != s.Requests || !near(f.AchievedRPS, s.AchievedRate) {
			t.Errorf("%q: pods %d requests %d rate %v", s.Node, f.PodsMeasured, f.Requests, f.AchievedRPS)
		}
		for name, c := range map[string]struct {
			l *smp.Latency
			h *hdrhistogram.Histogram
		}{"through": {f.Through, s.Through}, "around": {f.Around, s.Around}} {
			if c.l == nil || c.l.P50US != c.h.ValueAtQuantile(50) || c.l.Count != c.h.TotalCount() {
				t.Fatalf("%q %s: %+v", s.Node, name, c.l)
			}
			back, err := smp.DecodeHistogram(c.l.Histogram)
			if err != nil || !back.Equals(c.h) {
				t.Errorf("%q %s histogram does not decode to Summarize's (%v)", s.Node, name, err)
			}
		}
		if f.AddedAB == nil || len(f.AddedAB.Quantiles) != len(perfrun.Quantiles) || f.AddedAB.Confidence != perfrun.Confidence {
			t.Fatalf("%q: A/B %+v", s.Node, f.AddedAB)
		}
		for _, q := range f.AddedAB.Quantiles {
			d, ok := s.ABDelta(q.Quantile)
			if !ok || !near(q.AddedUS, float64(d.Value)/1e3) || !near(q.CILowUS, float64(d.CILow)/1e3) || !near(q.CIHighUS, float64(d.CIHigh)/1e3) {
				t.Errorf("%q: A/B q%v %+v, want %+v", s.Node, q.Quantile, q, d)
			}
			if q.Quantile == 0.5 && (q.AddedUS < 300 || q.AddedUS > 320 || q.CILowUS > q.AddedUS || q.CIHighUS < q.AddedUS) {
				t.Errorf("%q: A/B p50 %+v, want about 300 µs", s.Node, q)
			}
		}
		res := f.AddedResidency
		if v, _ := s.ResidencyAt(0.5); res == nil || !slices.Equal(res.Tiers, []string{"tp_btf"}) || res.P50US != int64(v/time.Microsecond) {
			t.Errorf("%q: residency %+v, want p50 %v", s.Node, res, v)
		}
		sc := f.Sidecars
		if sc == nil || !near(sc.CPUMillicores, s.SidecarCPU) || sc.MemoryBytes != s.SidecarMemory || !near(sc.CPUMillicoresPer1kRPS, s.CPUPer1kRPS) ||
			sc.CPUMillicoresPer1kRPS <= 0 || sc.Count != s.Pods {
			t.Errorf("%q: sidecars %+v", s.Node, sc)
		}
		if f.Agent == nil || !near(f.Agent.CPUMillicores, s.AgentCPU) || f.Agent.MemoryBytes != s.AgentMemory {
			t.Errorf("%q: agent %+v", s.Node, f.Agent)
		}
	}
	// Node a's sidecar used 60m while 2000 requests went through it in 9 s.
	if got := x.Nodes[0].Sidecars.CPUMillicoresPer1kRPS; !near(got, 60*9.0/2000*1000) {
		t.Errorf("node-a CPU per 1k req/s %v", got)
	}
	if got := x.Run.ThroughSidecarRPS; !near(got, 2*2000/9.0) {
		t.Errorf("through-sidecar rate %v", got)
	}
}

// The JSON carries times in UTC (RFC 3339 with Z) and each standard part exactly as
// protojson with proto names writes the SMP message.
func TestStandardPartsAreTheSpecTypesJSON(t *testing.T) {
	d := sharedDocs(t)
	b := marshal(t, d, smp.FormatJSON)
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var times struct {
		Start string `json:"start_time"`
		End   string `json:"end_time"`
	}
	if err := json.Unmarshal(doc[smp.KeyResult], &times); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{times.Start, times.End} {
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil || !strings.HasSuffix(s, "Z") {
			t.Errorf("time %q is not RFC 3339 UTC (%v)", s, err)
		}
	}
	if times.Start != "2026-11-21T08:00:00Z" {
		t.Errorf("start_time %q", times.Start)
	}
	for key, m := range map[string]proto.Message{smp.KeyConfig: d.Config, smp.KeyResult: d.Result, smp.KeyMesh: d.Mesh, smp.KeyEnvironment: d.Environment} {
		want, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var w, g bytes.Buffer
		if err := json.Compact(&w, want); err != nil {
			t.Fatal(err)
		}
		if err := json.Compact(&g, doc[key]); err != nil {
			t.Fatal(err)
		}
		if w.String() != g.String() {
			t.Errorf("%s differs from protojson's:\n got %s\nwant %s", key, g.String(), w.String())
		}
	}
	if string(doc["smp_version"]) != `"v0.6.1"` {
		t.Errorf("smp_version %s", doc["smp_version"])
	}
}

// Exporting the same stored run twice gives the same documents, ids included; another
// run gets other ids.
func TestIDsAreStable(t *testing.T) {
	a := marshal(t, sharedDocs(t), smp.FormatJSON)
	b := marshal(t, build(t, partialRun()), smp.FormatJSON)
	if !bytes.Equal(a, b) {
		t.Fatal("two exports of one run differ")
	}
	other := build(t, perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a"}, Seed: 7}))
	this := sharedDocs(t)
	if other.Result.GetId() == this.Result.GetId() || other.Config.GetId() == this.Config.GetId() {
		t.Error("two runs share document ids")
	}
}

func TestReadRejects(t *testing.T) {
	good := marshal(t, sharedDocs(t), smp.FormatJSON)
	if _, err := smp.Read(good); err != nil {
		t.Fatal(err)
	}
	// edit decodes the good document, changes it and re-encodes it.
	edit := func(f func(doc map[string]any)) []byte {
		var doc map[string]any
		if err := json.Unmarshal(good, &doc); err != nil {
			t.Fatal(err)
		}
		f(doc)
		b, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	part := func(doc map[string]any, key string) map[string]any { return doc[key].(map[string]any) }
	goodYAML, err := yaml.JSONToYAML(good)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"unknown field in the result": edit(func(d map[string]any) { part(d, smp.KeyResult)["cpu"] = map[string]any{"cpu_mcores": 5} }),
		"unknown field in the config": edit(func(d map[string]any) { part(d, smp.KeyConfig)["mesh"] = "istio" }),
		"unknown field in a client": edit(func(d map[string]any) {
			part(d, smp.KeyConfig)["clients"].([]any)[0].(map[string]any)["method"] = "GET"
		}),
		"unknown field in the mesh":      edit(func(d map[string]any) { part(d, smp.KeyMesh)["sidecars"] = 2 }),
		"unknown field in the env":       edit(func(d map[string]any) { part(d, smp.KeyEnvironment)["node_count"] = 3 }),
		"unknown field in the extension": edit(func(d map[string]any) { part(d, smp.KeyExtension)["extra"] = true }),
		"unknown field in an extension node": edit(func(d map[string]any) {
			part(d, smp.KeyExtension)["nodes"].([]any)[0].(map[string]any)["cpu"] = 1
		}),
		"unknown top-level key":  edit(func(d map[string]any) { d["metrics"] = map[string]any{} }),
		"missing part":           edit(func(d map[string]any) { delete(d, smp.KeyMesh) }),
		"missing extension":      edit(func(d map[string]any) { delete(d, smp.KeyExtension) }),
		"wrong spec version":     edit(func(d map[string]any) { d["smp_version"] = "test_smp_version" }),
		"placeholder test id":    edit(func(d map[string]any) { part(d, smp.KeyResult)["test_id"] = "test_test_id" }),
		"part of another run":    edit(func(d map[string]any) { part(d, smp.KeyMesh)["id"] = uuid.NewString() }),
		"wrong part version":     edit(func(d map[string]any) { part(d, smp.KeyEnvironment)["smp_version"] = "v0.0.1" }),
		"wrong extension format": edit(func(d map[string]any) { part(d, smp.KeyExtension)["format"] = "x/v9" }),
		"bad enum":               edit(func(d map[string]any) { part(d, smp.KeyMesh)["mesh_type"] = map[string]any{"type": "ISTIOO"} }),
		"damaged histogram": edit(func(d map[string]any) {
			part(d, smp.KeyExtension)["run"].(map[string]any)["through_sidecar"].(map[string]any)["histogram"] = "HISTFAAAAB"
		}),
		"trailing data": append(append([]byte{}, good...), []byte(`{"a":1}`)...),
		"yaml with an unknown field": bytes.Replace(goodYAML, []byte("performance_test_result:\n"),
			[]byte("performance_test_result:\n  bogus: 1\n"), 1),
		"empty":      nil,
		"not smp":    []byte(`{"apiVersion": "v1", "kind": "ConfigMap"}`),
		"stored run": must(perfrun.Marshal(partialRun())),
		"binary":     []byte("\x89PNG\r\n\x1a\n"),
	}
	for name, b := range cases {
		if _, err := smp.Read(b); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if _, err := smp.Read(goodYAML); err != nil {
		t.Errorf("the YAML form is refused: %v", err)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// A run on which every node failed still exports: the errors are in the extension and the
// standard result has no latencies rather than zeros presented as measured.
func TestEveryNodeFailed(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"only"}, FailNode: "only", Seed: 3})
	d := build(t, r)
	back, err := smp.Read(marshal(t, d, smp.FormatYAML))
	if err != nil {
		t.Fatal(err)
	}
	if back.Result.GetLatenciesMs() != nil || back.Result.GetActualQps() != 0 || len(back.Config.GetClients()) != 0 || back.Mesh.GetSidecar() != nil {
		t.Errorf("standard part from no results: %v %v", back.Result, back.Mesh)
	}
	if back.Extension.NodesFailed != 1 || back.Extension.Nodes[0].Error == "" || back.Extension.Run.Through != nil {
		t.Errorf("extension: %+v", back.Extension)
	}
}

func TestBuildRefusesDamagedRuns(t *testing.T) {
	if _, err := smp.Build(nil); err == nil {
		t.Error("nil run accepted")
	}
	r := partialRun()
	r.Id = "test_test_id"
	if _, err := smp.Build(r); err == nil {
		t.Error("run without a UUID accepted")
	}
}

func TestMeshType(t *testing.T) {
	for name, want := range map[string]smpspec.ServiceMesh_Type{
		"istio": smpspec.ServiceMesh_ISTIO, "linkerd": smpspec.ServiceMesh_LINKERD, "kuma": smpspec.ServiceMesh_KUMA,
		"consul": smpspec.ServiceMesh_CONSUL, "osm": smpspec.ServiceMesh_OPEN_SERVICE_MESH,
		"nginx": smpspec.ServiceMesh_NGINX_SERVICE_MESH, "cilium": smpspec.ServiceMesh_CILIUM_SERVICE_MESH,
		"traefik": smpspec.ServiceMesh_TRAEFIK_MESH, "Istio": smpspec.ServiceMesh_ISTIO,
		"": smpspec.ServiceMesh_INVALID_MESH, "kong-mesh": smpspec.ServiceMesh_INVALID_MESH,
	} {
		if got := smp.MeshType(name); got != want {
			t.Errorf("MeshType(%q) = %v, want %v", name, got, want)
		}
	}
	r := partialRun()
	r.Mesh = &perfrun.Mesh{Name: "kong-mesh", Version: "2.9.0"}
	d := build(t, r)
	if d.Mesh.GetMeshType().GetType() != smpspec.ServiceMesh_INVALID_MESH || d.Mesh.GetLabels()[smp.LabelMeshName] != "kong-mesh" || d.Extension.Mesh.Name != "kong-mesh" {
		t.Errorf("unknown mesh: %v / %+v", d.Mesh, d.Extension.Mesh)
	}
}

// The client maps every load setting SMP has a field for, and keeps credentials out of a
// document made to be shared.
func TestClientMapping(t *testing.T) {
	r := partialRun()
	r.Load = &agentapi.LoadSpec{Protocol: agentapi.Protocol_PROTOCOL_HTTP2, Rate: 0, Connections: 8,
		Duration: durationpb.New(30 * time.Second), Method: "POST", Path: "/api?x=1",
		Headers: map[string]string{"Authorization": "Bearer s3cr3t", "Cookie": "session=abc; theme=dark",
			"Content-Type": "application/json", "X-Trace": "on", "X-Auth-Token": "t0k"},
		Body: []byte{0xff, 0x00, 0x01}}
	for _, n := range r.Nodes {
		if n.Result != nil {
			n.Result.Load = r.Load
		}
	}
	d := build(t, r)
	b := marshal(t, d, smp.FormatJSON)
	for _, secret := range []string{"s3cr3t", "abc", "t0k"} {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("document holds %q", secret)
		}
	}
	cl := d.Config.GetClients()[0]
	if cl.GetRps() != 0 || cl.GetConnections() != 8 || cl.GetContentType() != "application/json" ||
		cl.GetHeaders()["X-Trace"] != "on" || cl.GetHeaders()["Authorization"] != smp.Redacted || cl.GetHeaders()["X-Auth-Token"] != smp.Redacted ||
		!reflect.DeepEqual(cl.GetCookies(), map[string]string{"session": smp.Redacted, "theme": smp.Redacted}) ||
		cl.GetBody() != "/wAB" || cl.GetAdditionalOptions() != "http_version=2 method=POST closed_loop=true body_encoding=base64" ||
		cl.GetEndpointUrls()[0] != "http://web-0.demo:8080/api?x=1" {
		t.Errorf("client: %v", cl)
	}
	if d.Config.GetDuration() != "30s" {
		t.Errorf("duration %q", d.Config.GetDuration())
	}

	r.Load = &agentapi.LoadSpec{Protocol: agentapi.Protocol_PROTOCOL_GRPC, Rate: 100.4, Connections: 1,
		Path: "/grpc.health.v1.Health/Check", Body: []byte("plain")}
	for _, n := range r.Nodes {
		if n.Result != nil {
			n.Result.Load = r.Load
		}
	}
	cl = build(t, r).Config.GetClients()[1]
	if cl.GetProtocol() != smpspec.PerformanceTestConfig_Client_PROTOCOL_GRPC || cl.GetRps() != 100 || cl.GetBody() != "plain" ||
		cl.GetEndpointUrls()[0] != "grpc://web-1.demo:8080/grpc.health.v1.Health/Check" || cl.GetAdditionalOptions() != "" {
		t.Errorf("gRPC client: %v", cl)
	}
}

func TestWriteDirReadsBack(t *testing.T) {
	d := sharedDocs(t)
	for _, format := range smp.Formats {
		t.Run(format, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			paths, err := smp.WriteDirFormat(dir, d, format)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, p := range paths {
				names = append(names, filepath.Base(p))
			}
			ext := ".json"
			if format == smp.FormatYAML {
				ext = ".yaml"
			}
			id := d.Extension.RunID
			want := []string{id + ".performance_test_config" + ext, id + ".performance_test_result" + ext,
				id + ".service_mesh_config" + ext, id + ".environment_config" + ext, id + ".x-kubectl-mesh" + ext}
			if !slices.Equal(names, want) {
				t.Fatalf("files %v, want %v", names, want)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != len(want) {
				t.Errorf("%d entries in the directory (temporary files left?)", len(entries))
			}
			// Each standard file is the SMP message alone, for any SMP reader.
			b, err := os.ReadFile(paths[1])
			if err != nil {
				t.Fatal(err)
			}
			if format == smp.FormatYAML {
				if b, err = yaml.YAMLToJSON(b); err != nil {
					t.Fatal(err)
				}
			}
			var res smpspec.PerformanceTestResult
			if err := protojson.Unmarshal(b, &res); err != nil || !proto.Equal(&res, d.Result) {
				t.Fatalf("result file: %v", err)
			}
			back, err := smp.ReadDir(dir, id)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(back.Config, d.Config) || !proto.Equal(back.Mesh, d.Mesh) || !proto.Equal(back.Environment, d.Environment) ||
				!reflect.DeepEqual(back.Extension, d.Extension) {
				t.Error("documents changed on the way through files")
			}
			if _, err := smp.ReadDir(dir, uuid.NewString()); err == nil {
				t.Error("ReadDir found documents for another run")
			}
		})
	}
	if _, err := smp.WriteDirFormat(t.TempDir(), d, "html"); err == nil {
		t.Error("unknown format accepted")
	}
	if _, err := smp.Marshal(d, "json"); err == nil {
		t.Error("unknown format accepted")
	}
}

func TestDecodeHistogramRefusesForeignInput(t *testing.T) {
	other := hdrhistogram.New(1, 1000, 2)
	_ = other.RecordValue(5)
	enc, err := other.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{
		"counts past the layout": pastTheLayout(t),
		"other layout":           string(enc),
		"empty":                  "",
		"not base64":             "HIST!!!",
		"short":                  "HISTFAAA",
		"truncated":              string(enc[:len(enc)/2]),
		"too long":               strings.Repeat("A", 2<<20),
	} {
		if _, err := smp.DecodeHistogram(s); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// pastTheLayout encodes, in the agents' layout, a run of empty buckets longer than the
// layout followed by a count: the HDR library indexes out of range on it.
func pastTheLayout(t *testing.T) string {
	h := histogram.New()
	histogram.Record(h, time.Millisecond)
	enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(string(enc))
	z, err := zlib.NewReader(bytes.NewReader(raw[8:]))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	// Zigzag LEB128: -10^7 (ten million empty buckets), then a count of 1.
	payload := append(plain[40:], binary.AppendUvarint(nil, uint64(2*10_000_000-1))...)
	payload = append(payload, 2)
	binary.BigEndian.PutUint32(plain[4:], uint32(len(payload)))
	plain = append(plain[:40], payload...)
	var zb bytes.Buffer
	zw := zlib.NewWriter(&zb)
	zw.Write(plain)
	zw.Close()
	out := binary.BigEndian.AppendUint32(nil, binary.BigEndian.Uint32(raw))
	out = binary.BigEndian.AppendUint32(out, uint32(zb.Len()))
	out = append(out, zb.Bytes()...)
	s := base64.StdEncoding.EncodeToString(out)
	// The library itself must fail on it, or the case tests nothing.
	func() {
		defer func() { _ = recover() }()
		if _, err := hdrhistogram.Decode([]byte(s)); err == nil {
			t.Fatal("hostile histogram decodes")
		}
	}()
	return s
}

func TestGolden(t *testing.T) {
	got := marshal(t, sharedDocs(t), smp.FormatJSON)
	path := filepath.Join("testdata", "run.golden.smp.json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/smp -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("document differs from %s; run go test ./pkg/smp -update and review the diff\n--- got ---\n%s", path, got)
	}
	if _, err := smp.Read(want); err != nil {
		t.Errorf("golden file does not read back: %v", err)
	}
}

// A figure no JSON can hold (only a broken agent would send one) does not stop the export.
func TestNonFiniteFiguresStillExport(t *testing.T) {
	r := partialRun()
	r.Nodes[0].Result.AchievedRate = math.NaN()
	r.Nodes[1].Result.Agent.CpuMillicores = math.Inf(1)
	d := build(t, r)
	back, err := smp.Read(marshal(t, d, smp.FormatJSON))
	if err != nil {
		t.Fatal(err)
	}
	if back.Extension.Nodes[0].AchievedRPS != 0 || back.Extension.Run.AchievedRPS != 0 || back.Result.GetActualQps() != 0 {
		t.Errorf("NaN rate exported as %v / %v / %v", back.Extension.Nodes[0].AchievedRPS, back.Extension.Run.AchievedRPS, back.Result.GetActualQps())
	}
}

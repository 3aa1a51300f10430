package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun/perfruntest"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/runstore"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/smp"
)

const (
	// runB's id starts differently from runA's so that a short prefix names it.
	runAID = "00000000-0000-4000-8000-000000000001"
	runBID = "9c41b7e2-5d3a-4f6e-8a1b-2c3d4e5f6a7b"
)

// savedRuns keeps two runs in a fresh local store: A with a small added latency on two
// nodes, and B an hour later with a much larger one, where node-b failed and node-c joined.
func savedRuns(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	start := time.Date(2026, 11, 21, 8, 0, 0, 0, time.UTC)
	a := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a", "node-b"}, Added: 50 * time.Microsecond, Seed: 1, Start: start, Requests: 300})
	b := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a", "node-b", "node-c"}, Added: 500 * time.Microsecond, Seed: 2,
		Start: start.Add(time.Hour), FailNode: "node-b", Requests: 300})
	b.Id = runBID
	for _, n := range b.GetNodes() {
		if n.GetResult() != nil {
			n.GetResult().RunId = runBID
		}
	}
	for _, r := range []*perfrun.Run{a, b} {
		if _, err := runstore.Local(dir).Save(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readOptions(dir string) (perfReadOptions, *bytes.Buffer, *bytes.Buffer) {
	streams, out, errOut := testStreams()
	o := perfReadOptions{
		IOStreams:      streams,
		AgentNamespace: manifests.DefaultNamespace,
		reach: agentReach{newCluster: func() (*cluster, error) {
			return nil, errors.New("the cluster is not asked for local runs")
		}},
	}
	o.Store = "local"
	o.dir = dir
	return o, out, errOut
}

func TestPerfList(t *testing.T) {
	dir := savedRuns(t)
	ro, out, errOut := readOptions(dir)
	o := &PerfListOptions{perfReadOptions: ro}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		"ID|STARTED|TARGET|MESH|NODES|STATE|WHERE",
		"9c41b7e2|2026-11-21T09:00:00Z|deploy/web -n demo port 8080|istio 1.24.0|3|1 node failed|" + filepath.Join(dir, runBID+".json"),
		"00000000|2026-11-21T08:00:00Z|deploy/web -n demo port 8080|istio 1.24.0|2|complete|" + filepath.Join(dir, runAID+".json"),
	}
	if len(lines) != len(want) {
		t.Fatalf("list:\n%s", out)
	}
	for i, w := range want {
		if got := strings.Join(cells(lines[i]), "|"); got != w {
			t.Errorf("row %d: %s, want %s", i, got, w)
		}
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr %q", errOut)
	}

	// A stray file is a warning; the runs still list.
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	ro, out, errOut = readOptions(dir)
	o = &PerfListOptions{perfReadOptions: ro, Output: outputJSON}
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var entries []runstore.Entry
	if err := json.Unmarshal(out.Bytes(), &entries); err != nil || len(entries) != 2 || entries[0].ID != runBID || entries[1].FailedNodes != 0 {
		t.Errorf("-o json: %v %+v", err, entries)
	}
	if !strings.Contains(errOut.String(), "warning: ") || !strings.Contains(errOut.String(), "notes.txt") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestPerfListEmpty(t *testing.T) {
	ro, out, errOut := readOptions(filepath.Join(t.TempDir(), "none"))
	o := &PerfListOptions{perfReadOptions: ro}
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), "\n") != 1 || !strings.Contains(errOut.String(), "No stored runs. Start one with `kubectl mesh perf run`.") {
		t.Errorf("stdout %q stderr %q", out, errOut)
	}
	o.Output = "table"
	if err := o.Validate(); err == nil {
		t.Error("perf list -o table accepted")
	}
}

func showRun(t *testing.T, dir, ref, format string) (string, error) {
	t.Helper()
	ro, out, _ := readOptions(dir)
	o := &PerfShowOptions{perfReadOptions: ro, Output: format, ref: ref}
	if err := o.Validate(); err != nil {
		return "", err
	}
	err := o.Run(context.Background())
	return out.String(), err
}

func TestPerfShow(t *testing.T) {
	dir := savedRuns(t)
	for _, ref := range []string{"latest", "9c41", "9C41B7E2", runBID, filepath.Join(dir, runBID+".json")} {
		out, err := showRun(t, dir, ref, "")
		if err != nil {
			t.Errorf("show %s: %v", ref, err)
			continue
		}
		if !strings.HasPrefix(out, "Run "+runBID+"\n") || !strings.Contains(out, "node-b") || !strings.Contains(out, "failed (see below)") ||
			!strings.Contains(out, "node-b: agent unreachable: port-forward: connection refused") {
			t.Errorf("show %s:\n%s", ref, out)
		}
	}
	out, err := showRun(t, dir, "0000", outputJSON)
	if err != nil {
		t.Fatal(err)
	}
	r, err := perfrun.Unmarshal([]byte(out))
	if err != nil || r.GetId() != runAID {
		t.Errorf("show -o json: %v %s", err, r.GetId())
	}
	out, err = showRun(t, dir, runAID, outputSMPYAML)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := smp.Read([]byte(out)); err != nil {
		t.Errorf("show -o smp-yaml does not read back: %v", err)
	}
}

func TestPerfShowBadRefs(t *testing.T) {
	dir := savedRuns(t)
	foreign := filepath.Join(t.TempDir(), "foreign.json")
	if err := os.WriteFile(foreign, []byte(`{"apiVersion": "v1", "kind": "ConfigMap"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(t.TempDir(), "garbage.json")
	if err := os.WriteFile(garbage, []byte("not json at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ ref, want string }{
		{foreign, "not a kubectl-mesh run"},
		{garbage, "not a kubectl-mesh run"},
		{filepath.Join(dir, "missing.json"), "no such file"},
		{"ffff", "ffff"},
		{"ab", "too short"},
		{"zzzz-not-an-id", "neither an existing file nor a run id"},
		{t.TempDir(), "is a directory"},
	} {
		if _, err := showRun(t, dir, c.ref, ""); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("show %s: error %v, want %q", c.ref, err, c.want)
		}
	}
	empty := t.TempDir()
	if _, err := showRun(t, empty, "latest", ""); err == nil || !strings.Contains(err.Error(), "no stored run yet") {
		t.Errorf("latest in an empty store: %v", err)
	}
	// Two runs whose ids share the prefix: the error lists both.
	if _, err := showRun(t, dir, "0000", ""); err != nil {
		t.Fatalf("one match: %v", err)
	}
	c := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a"}, Seed: 3, Requests: 100})
	if _, err := runstore.Local(dir).Save(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	var amb *runstore.AmbiguousError
	if _, err := showRun(t, dir, "0000", ""); !errors.As(err, &amb) || len(amb.Candidates) != 2 {
		t.Errorf("ambiguous prefix: %v", err)
	}
}

func TestPerfCompare(t *testing.T) {
	dir := savedRuns(t)
	ro, out, _ := readOptions(dir)
	o := &PerfCompareOptions{perfReadOptions: ro, refA: "0000", refB: "latest"}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if !strings.HasPrefix(text, "A: "+runAID+"  2026-11-21T08:00:00Z  deploy/web\nB: "+runBID+"  2026-11-21T09:00:00Z  deploy/web\n\n") {
		t.Errorf("header:\n%s", text)
	}
	rows := map[string][]string{}
	for _, l := range strings.Split(text, "\n") {
		f := cells(l)
		if len(f) == 6 {
			rows[f[0]+" "+f[1]] = f
		}
	}
	// The added latency grew tenfold on node-a: far outside both runs' intervals.
	if r := rows["node-a added_p50"]; len(r) != 6 || r[5] != perfrun.Significant || !strings.HasPrefix(r[4], "+") {
		t.Errorf("node-a added_p50 %q\n%s", r, text)
	}
	if r := rows["node-a sidecar_cpu"]; len(r) != 6 || r[5] != perfrun.NoInterval {
		t.Errorf("node-a sidecar_cpu %q", r)
	}
	if r := rows["node-b -"]; len(r) != 6 || r[5] != "failed in run B" {
		t.Errorf("node-b %q\n%s", r, text)
	}
	if r := rows["node-c -"]; len(r) != 6 || r[5] != "not in run A" {
		t.Errorf("node-c %q", r)
	}
	if r := rows["TOTAL latency_p50"]; len(r) != 6 || r[5] != perfrun.Significant {
		t.Errorf("TOTAL latency_p50 %q", r)
	}

	ro, out, _ = readOptions(dir)
	o = &PerfCompareOptions{perfReadOptions: ro, Output: outputJSON, refA: runAID, refB: "9c41"}
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var rep ComparisonReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.A != runAID || rep.B != runBID || len(rep.Nodes) != 3 || len(rep.Total.Changes) == 0 {
		t.Errorf("%+v", rep)
	}
}

func TestPerfCompareBadRef(t *testing.T) {
	dir := savedRuns(t)
	foreign := filepath.Join(t.TempDir(), "foreign.json")
	_ = os.WriteFile(foreign, []byte(`{"hello": 1}`), 0o600)
	for _, c := range []struct{ a, b, want string }{
		{foreign, runAID, "run A: "},
		{runAID, foreign, "run B: "},
		{runAID, "dddd", "run B: "},
	} {
		ro, _, _ := readOptions(dir)
		o := &PerfCompareOptions{perfReadOptions: ro, refA: c.a, refB: c.b}
		_ = o.Validate()
		if err := o.Run(context.Background()); err == nil || !strings.HasPrefix(err.Error(), c.want) ||
			(c.a == foreign || c.b == foreign) && !strings.Contains(err.Error(), "not a kubectl-mesh run") {
			t.Errorf("compare %s %s: error %v, want %q", c.a, c.b, err, c.want)
		}
	}
}

func TestPerfExport(t *testing.T) {
	dir := savedRuns(t)
	export := func(ref, format string) (string, error) {
		ro, out, _ := readOptions(dir)
		o := &PerfExportOptions{perfReadOptions: ro, Format: format, ref: ref}
		if err := o.Validate(); err != nil {
			return "", err
		}
		err := o.Run(context.Background())
		return out.String(), err
	}
	html, err := export("latest", outputHTML)
	if err != nil {
		t.Fatal(err)
	}
	if h := strings.ToLower(strings.TrimSpace(html)); !strings.HasPrefix(h, "<!doctype") && !strings.HasPrefix(h, "<html") {
		t.Errorf("html export starts with %q", html[:min(len(html), 40)])
	}
	for _, format := range []string{outputSMPYAML, outputSMPJSON} {
		out, err := export(runAID, format)
		if err != nil {
			t.Fatal(err)
		}
		docs, err := smp.Read([]byte(out))
		if err != nil {
			t.Errorf("%s does not read back: %v", format, err)
			continue
		}
		if docs.Result.GetActualQps() <= 0 {
			t.Errorf("%s: result %v", format, docs.Result)
		}
	}
	out, err := export("9c41", outputJSON)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := perfrun.Unmarshal([]byte(out)); err != nil || r.GetId() != runBID {
		t.Errorf("json export: %v", err)
	}
	if _, err := export(runAID, "pdf"); err == nil || !strings.Contains(err.Error(), `invalid --format "pdf"`) {
		t.Errorf("--format pdf: %v", err)
	}
}

// Bad input fails before anything is sent, with the flag named, through main's exit status.
func TestPerfBadInputCLI(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"perf", "run"}, "no target: give deploy/NAME"},
		{[]string{"perf", "run", "deploy/web", "-l", "app=web"}, "not both"},
		{[]string{"perf", "run", "statefulset/web"}, `invalid target "statefulset/web"`},
		{[]string{"perf", "run", "deploy/web", "--rate", "0"}, "invalid --rate 0"},
		{[]string{"perf", "run", "deploy/web", "--duration", "0s"}, "invalid --warmup"},
		{[]string{"perf", "run", "deploy/web", "--fail-if", "bogus>1"}, "bogus"},
		{[]string{"perf", "run", "deploy/web", "-o", "html"}, `invalid --output "html"`},
		{[]string{"perf", "show"}, "want a run id or file, got 0 arguments"},
		{[]string{"perf", "compare", "a"}, "want two run ids or files, got 1 arguments"},
		{[]string{"perf", "export", "a", "--format", "pdf"}, `invalid --format "pdf"`},
	} {
		code, out, errOut := runCLI(t, c.args...)
		if code != exitFailure || out != "" || !strings.HasPrefix(errOut, "error: ") || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d stdout %q stderr %q, want %q", c.args, code, out, errOut, c.want)
		}
	}
}

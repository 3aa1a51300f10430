package runstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun/perfruntest"
)

const (
	idA1 = "abcd1111-0000-4000-8000-000000000001"
	idA2 = "abcd2222-0000-4000-8000-000000000002"
	idB  = "ef015555-0000-4000-8000-000000000003"
)

var t0 = time.Date(2026, 11, 21, 8, 0, 0, 0, time.UTC)

// run builds a small synthetic run with the given id, started at t0 plus offset.
func run(id string, offset time.Duration) *perfrun.Run {
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a", "node-b"}, Added: time.Millisecond, Requests: 200, Seed: 7, Start: t0.Add(offset)})
	r.Id = id
	return r
}

func mustSave(t *testing.T, s Store, r *perfrun.Run) string {
	t.Helper()
	where, err := s.Save(context.Background(), r)
	if err != nil {
		t.Fatalf("Save(%s) in %s: %v", r.GetId(), s, err)
	}
	return where
}

func checkSame(t *testing.T, got, want *perfrun.Run) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("run read back differs from the one saved:\ngot  %v\nwant %v", got.GetId(), want.GetId())
	}
}

func TestLocalRoundTripAndPermissions(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data", "kubectl-mesh", "runs")
	s := Local(dir)
	r := run(idA1, 0)
	where := mustSave(t, s, r)
	if want := filepath.Join(dir, idA1+".json"); where != want {
		t.Errorf("saved at %s, want %s", where, want)
	}
	if runtime.GOOS != "windows" {
		for path, want := range map[string]os.FileMode{dir: 0o700, where: 0o600} {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("%s has mode %v, want %v", path, got, want)
			}
		}
	}
	got, gotWhere, err := s.Get(ctx, idA1)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got, r)
	if gotWhere != where {
		t.Errorf("Get says %s, want %s", gotWhere, where)
	}

	// Saving again replaces the file and leaves no temporary files behind.
	r.Interrupted = true
	mustSave(t, s, r)
	got, _, err = Open(ctx, "ABCD1", s)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got, r)
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 1 {
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		t.Errorf("store holds %v, want only the run file", names)
	}
	es, errs := s.List(ctx)
	if len(errs) != 0 || len(es) != 1 || es[0].ID != idA1 || !es[0].Interrupted || es[0].Nodes != 2 || !es[0].Start.Equal(t0) ||
		es[0].Target != "deploy/web -n demo port 8080" || es[0].Mesh != "istio 1.24.0" || es[0].Location != where {
		t.Errorf("List = %+v, %v", es, errs)
	}
}

func TestLocalSaveRefusesUnsavableRuns(t *testing.T) {
	s := Local(t.TempDir())
	bad := run("../../etc/passwd", 0)
	if _, err := s.Save(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "not a UUID") {
		t.Errorf("Save with a path as id: %v, want a refusal", err)
	}
	noFormat := run(idA1, 0)
	noFormat.Format = ""
	if _, err := s.Save(context.Background(), noFormat); err == nil {
		t.Error("Save of a run without format succeeded; it could never be read back")
	}
}

func TestLocalListReportsDamagedFilesAndKeepsTheRest(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := Local(dir)
	mustSave(t, s, run(idA1, 0))
	mustSave(t, s, run(idB, time.Hour))
	damaged := filepath.Join(dir, "0123abcd-0000-4000-8000-000000000009.json")
	foreign := filepath.Join(dir, "fedc0000-0000-4000-8000-000000000010.json")
	misnamed := filepath.Join(dir, "aaaa0000-0000-4000-8000-000000000011.json")
	stray := filepath.Join(dir, "notes.txt")
	b, err := perfrun.Marshal(run(idA2, 0))
	if err != nil {
		t.Fatal(err)
	}
	for path, content := range map[string]string{
		damaged:  `{"format": "kubectl-mesh.dev/run/v1", "id": `,
		foreign:  `{"apiVersion": "v1", "kind": "Pod"}`,
		misnamed: string(b),
		stray:    "hello",
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	es, errs := s.List(ctx)
	if len(es) != 2 || es[0].ID != idB || es[1].ID != idA1 {
		t.Errorf("List entries = %+v, want %s then %s (newest first)", es, idB, idA1)
	}
	if len(errs) != 4 {
		t.Fatalf("List errors = %v, want one per bad file (4)", errs)
	}
	all := errors.Join(errs...).Error()
	for _, want := range []string{damaged, foreign, misnamed, stray, "not a kubectl-mesh run", "holds run " + idA2} {
		if !strings.Contains(all, want) {
			t.Errorf("List errors do not mention %q:\n%s", want, all)
		}
	}
	// A damaged file does not hide a good run when resolving a prefix either.
	if _, _, err := Open(ctx, "ef01", s); err != nil {
		t.Errorf("Open(ef01): %v", err)
	}
	if _, _, err := Open(ctx, "0123abcd", s); err == nil || !strings.Contains(err.Error(), damaged) {
		t.Errorf("Open of the damaged run: %v, want an error naming %s", err, damaged)
	}
	if _, _, err := Open(ctx, "0123ABCD-0000-4000-8000-000000000009", s); err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), damaged+": not a kubectl-mesh run") {
		t.Errorf("Open of the damaged run by full id: %v, want the damage named, not \"not found\"", err)
	}
}

func TestOpenFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := run(idA1, 0)
	b, err := perfrun.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "my-run.json")
	foreign := filepath.Join(dir, "foreign.json")
	damaged := filepath.Join(dir, "damaged")
	if err := os.WriteFile(good, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(foreign, []byte(`{"apiVersion": "v1", "kind": "ConfigMap"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(damaged, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	// An empty store: a file is found without any store.
	got, where, err := Open(ctx, good, Local(filepath.Join(dir, "store")))
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got, r)
	if where != good {
		t.Errorf("where = %s, want %s", where, good)
	}

	for _, tc := range []struct {
		ref     string
		want    []string
		notExit bool
	}{
		{ref: foreign, want: []string{foreign + ": not a kubectl-mesh run", "unknown field"}},
		{ref: damaged, want: []string{damaged + ": not a kubectl-mesh run"}},
		{ref: filepath.Join(dir, "missing.json"), want: []string{"missing.json", "no such file"}, notExit: true},
		{ref: filepath.Join(good, "x"), want: []string{"not a directory"}},
		{ref: dir, want: []string{dir + " is a directory"}},
	} {
		_, _, err := Open(ctx, tc.ref, Local(filepath.Join(dir, "store")))
		if err == nil {
			t.Errorf("Open(%s) succeeded", tc.ref)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Open(%s) = %q, want it to mention %q", tc.ref, err, w)
			}
		}
		if tc.notExit && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open(%s) = %v, want the OS's not-exist error", tc.ref, err)
		}
	}
}

func TestOpenPrefixes(t *testing.T) {
	ctx := context.Background()
	s := Local(t.TempDir())
	for _, id := range []string{idA1, idA2, idB} {
		mustSave(t, s, run(id, 0))
	}
	for _, tc := range []struct {
		ref, wantID, wantErr string
		ambiguous, notFound  bool
	}{
		{ref: "abcd1", wantID: idA1},
		{ref: "ABCD2222", wantID: idA2},
		{ref: "ef01", wantID: idB},
		{ref: idB, wantID: idB},
		{ref: "abcd", ambiguous: true, wantErr: idA1 + " (local store"},
		{ref: "0000", notFound: true, wantErr: `no run with id "0000"`},
		{ref: "ffffffff-0000-4000-8000-000000000000", notFound: true},
		{ref: "abc", wantErr: "too short: give at least 4"},
		{ref: "web-run", wantErr: "neither an existing file nor a run id"},
		{ref: "", wantErr: "no run id"},
	} {
		r, _, err := Open(ctx, tc.ref, s)
		if tc.wantID != "" {
			if err != nil || r.GetId() != tc.wantID {
				t.Errorf("Open(%q) = %v, %v; want run %s", tc.ref, r.GetId(), err, tc.wantID)
			}
			continue
		}
		if err == nil {
			t.Errorf("Open(%q) found %s, want an error", tc.ref, r.GetId())
			continue
		}
		var amb *AmbiguousError
		if got := errors.As(err, &amb); got != tc.ambiguous {
			t.Errorf("Open(%q) = %v; ambiguous %v, want %v", tc.ref, err, got, tc.ambiguous)
		}
		if tc.ambiguous && (len(amb.Candidates) != 2 || !strings.Contains(err.Error(), idA2)) {
			t.Errorf("Open(%q) = %v, want both candidates listed", tc.ref, err)
		}
		if got := errors.Is(err, ErrNotFound); got != tc.notFound {
			t.Errorf("Open(%q) = %v; not found %v, want %v", tc.ref, err, got, tc.notFound)
		}
		if !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("Open(%q) = %q, want it to mention %q", tc.ref, err, tc.wantErr)
		}
	}
}

func TestClusterRoundTrip(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	s := Cluster(client, "")
	r := run(idA1, 0)
	where := mustSave(t, s, r)
	if want := "configmap mesh-system/mesh-run-" + idA1; where != want {
		t.Errorf("saved at %s, want %s", where, want)
	}
	cm, err := client.CoreV1().ConfigMaps("mesh-system").Get(ctx, "mesh-run-"+idA1, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"app.kubernetes.io/part-of": "kubectl-mesh", "app.kubernetes.io/managed-by": "kubectl-mesh", "kubectl-mesh.dev/run-id": idA1,
	} {
		if cm.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, cm.Labels[k], v)
		}
	}
	if got := cm.Annotations[AnnotationTarget]; got != "deploy/web -n demo port 8080" {
		t.Errorf("target annotation = %q", got)
	}
	if got := cm.Annotations[AnnotationStart]; got != "2026-11-21T08:00:00Z" {
		t.Errorf("start annotation = %q", got)
	}
	if _, ok := cm.Data[KeyJSON]; !ok || len(cm.BinaryData) != 0 {
		t.Errorf("a small run should be plain JSON in data[%s]; data keys %v, binaryData keys %d", KeyJSON, len(cm.Data), len(cm.BinaryData))
	}
	got, gotWhere, err := s.Get(ctx, idA1)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got, r)
	if gotWhere != where {
		t.Errorf("Get says %s, want %s", gotWhere, where)
	}
	// Saving again updates the ConfigMap.
	r.Interrupted = true
	mustSave(t, s, r)
	mustSave(t, s, run(idB, time.Minute))
	es, errs := s.List(ctx)
	if len(errs) != 0 || len(es) != 2 || es[0].ID != idB || es[1].ID != idA1 || !es[1].Interrupted || es[1].Location != where {
		t.Errorf("List = %+v, %v", es, errs)
	}
	got, _, err = Open(ctx, "abcd", s)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got, r)
}

func TestClusterListReportsDamagedConfigMaps(t *testing.T) {
	ctx := context.Background()
	bad := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName(idA2), Namespace: "team", Labels: map[string]string{
			"app.kubernetes.io/part-of": "kubectl-mesh", "app.kubernetes.io/managed-by": "kubectl-mesh", LabelRunID: idA2}},
		Data: map[string]string{"notes": "hello"},
	}
	unrelated := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert", Namespace: "team"}}
	client := fake.NewClientset(bad, unrelated)
	s := Cluster(client, "team")
	mustSave(t, s, run(idA1, 0))
	es, errs := s.List(ctx)
	if len(es) != 1 || es[0].ID != idA1 {
		t.Errorf("List entries = %+v, want only %s", es, idA1)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "configmap team/"+ConfigMapName(idA2)+": holds no run") {
		t.Errorf("List errors = %v, want one naming the damaged ConfigMap", errs)
	}
}

func TestClusterLargeRunIsGzipped(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	s := Cluster(client, "mesh-system")
	r := run(idA1, 0)
	// Repetitive text, as large request bodies and many-node runs are: it compresses well.
	r.Load.Body = []byte(strings.Repeat(`{"user": "someone", "items": [1, 2, 3]} `, (MaxConfigMapData+100_000)/40))
	b, err := perfrun.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) <= MaxConfigMapData {
		t.Fatalf("test run is only %d bytes; it must exceed the limit", len(b))
	}
	mustSave(t, s, r)
	cm, err := client.CoreV1().ConfigMaps("mesh-system").Get(ctx, ConfigMapName(idA1), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	z, ok := cm.BinaryData[KeyGzip]
	if !ok || len(cm.Data) != 0 {
		t.Fatalf("a large run should be gzipped into binaryData[%s]", KeyGzip)
	}
	if len(z) > MaxConfigMapData {
		t.Errorf("gzipped run is %d bytes, over the limit", len(z))
	}
	got, _, err := s.Get(ctx, idA1)
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got, r)

	// Re-saving it small replaces the gzipped form rather than keeping both.
	r.Load.Body = nil
	mustSave(t, s, r)
	cm, _ = client.CoreV1().ConfigMaps("mesh-system").Get(ctx, ConfigMapName(idA1), metav1.GetOptions{})
	if len(cm.BinaryData) != 0 || cm.Data[KeyJSON] == "" {
		t.Errorf("after re-saving small: data %d keys, binaryData %d keys", len(cm.Data), len(cm.BinaryData))
	}

	// Incompressible content that is too large even gzipped: a clear error, nothing stored.
	huge := run(idB, 0)
	huge.Load.Body = make([]byte, MaxConfigMapData+1)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range huge.Load.Body {
		huge.Load.Body[i] = byte(rng.Uint32())
	}
	_, err = s.Save(ctx, huge)
	if err == nil {
		t.Fatal("saving a run too large for a ConfigMap succeeded")
	}
	for _, want := range []string{"too large for a ConfigMap", "bytes gzipped", "limit is 1048576 bytes", idB} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, _, err := s.Get(ctx, idB); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of the unsaved run: %v, want not found", err)
	}
}

func TestOpenSearchesLocalThenCluster(t *testing.T) {
	ctx := context.Background()
	local := Local(t.TempDir())
	client := fake.NewClientset()
	cluster := Cluster(client, "mesh-system")
	shared := run(idA1, 0)
	mustSave(t, local, shared)
	mustSave(t, cluster, shared)
	mustSave(t, cluster, run(idB, 0))

	// The same run in both stores is one match, read from the local store.
	r, where, err := Open(ctx, "abcd", local, cluster)
	if err != nil || r.GetId() != idA1 || where != local.Path(idA1) {
		t.Errorf("Open(abcd) = %s at %s, %v; want the local copy of %s", r.GetId(), where, err, idA1)
	}
	// A run only in the cluster is found there.
	r, where, err = Open(ctx, "ef01", local, cluster)
	if err != nil || r.GetId() != idB || !strings.HasPrefix(where, "configmap ") {
		t.Errorf("Open(ef01) = %s at %s, %v; want %s from the cluster", r.GetId(), where, err, idB)
	}
	// A prefix matching one run locally and another in the cluster is ambiguous.
	mustSave(t, cluster, run(idA2, 0))
	_, _, err = Open(ctx, "abcd", local, cluster)
	var amb *AmbiguousError
	if !errors.As(err, &amb) || !strings.Contains(err.Error(), idA2+" (cluster store") {
		t.Errorf("Open(abcd) = %v, want ambiguity naming the cluster's run", err)
	}
	// All runs listed, newest first, once per store.
	es, errs := List(ctx, local, cluster)
	if len(errs) != 0 || len(es) != 4 {
		t.Errorf("List = %+v, %v; want 4 entries", es, errs)
	}

	// An unreachable cluster does not stop a local match; with no match its error is shown.
	client.PrependReactor("*", "configmaps", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if r, _, err := Open(ctx, "abcd1", local, cluster); err != nil || r.GetId() != idA1 {
		t.Errorf("Open(abcd1) with the cluster down = %v, %v", r.GetId(), err)
	}
	if r, _, err := Open(ctx, idA1, local, cluster); err != nil || r.GetId() != idA1 {
		t.Errorf("Open(full id) with the cluster down = %v, %v", r.GetId(), err)
	}
	if _, _, err := Open(ctx, idB, local, cluster); err == nil || !strings.Contains(err.Error(), "reading run "+idB+" from cluster store (namespace mesh-system): connection refused") {
		t.Errorf("Open(full id) only in the unreachable cluster = %v", err)
	}
	_, _, err = Open(ctx, "ef01", local, cluster)
	if err == nil || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Open(ef01) with the cluster down = %v, want not found and the cluster's error", err)
	}
	es, errs = List(ctx, local, cluster)
	if len(es) != 1 || len(errs) != 1 || !strings.Contains(errs[0].Error(), "connection refused") {
		t.Errorf("List with the cluster down = %+v, %v; want the local run and the cluster's error", es, errs)
	}
}

func TestDefaultDir(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("the fallback under test is the Unix one")
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_DATA_HOME", "/srv/data")
	if d, err := DefaultDir(); err != nil || d != filepath.Join("/srv/data", "kubectl-mesh", "runs") {
		t.Errorf("DefaultDir with XDG_DATA_HOME = %s, %v", d, err)
	}
	// The XDG spec: a relative XDG_DATA_HOME is invalid and ignored.
	for _, v := range []string{"", "relative/dir"} {
		t.Setenv("XDG_DATA_HOME", v)
		if d, err := DefaultDir(); err != nil || d != filepath.Join(home, ".local", "share", "kubectl-mesh", "runs") {
			t.Errorf("DefaultDir with XDG_DATA_HOME=%q = %s, %v", v, d, err)
		}
	}
}

func TestDescribeTarget(t *testing.T) {
	for _, tc := range []struct {
		t    *perfrun.Target
		want string
	}{
		{&perfrun.Target{Kind: "svc", Namespace: "shop", Name: "cart", Port: 80}, "svc/cart -n shop port 80"},
		{&perfrun.Target{Kind: "selector", Namespace: "shop", Selector: "app=cart,tier=web", Port: 9090}, "-l app=cart,tier=web -n shop port 9090"},
		{nil, ""},
	} {
		if got := DescribeTarget(tc.t); got != tc.want {
			t.Errorf("DescribeTarget(%v) = %q, want %q", tc.t, got, tc.want)
		}
	}
	// Entries of runs without a start time sort last rather than failing.
	r := run(idA1, 0)
	r.StartTime = nil
	es := []Entry{NewEntry(r, "x"), NewEntry(run(idB, 0), "y")}
	sortEntries(es)
	if es[0].ID != idB {
		t.Errorf("entries sorted %v, want the one with a start time first", es)
	}
}

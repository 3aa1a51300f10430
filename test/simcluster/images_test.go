package simcluster

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestBuildImage checks that an image is cached by its content, that a changed spec replaces
// the older tarball of the same repository only, and what the layer holds.
func TestBuildImage(t *testing.T) {
	dir := t.TempDir()
	spec := ImageSpec{
		Ref:        "localhost/kubectl-mesh/thing:dev",
		Files:      []ImageFile{{Path: "usr/bin/thing", Data: []byte("#!/bin/true\n"), Mode: 0o755}, {Path: "tmp", Dir: true, Mode: 0o1777}},
		Entrypoint: []string{"/usr/bin/thing"},
		User:       "1337:1337",
	}
	other := ImageSpec{Ref: "localhost/other/thing:dev", Files: []ImageFile{{Path: "x", Data: []byte("x")}}}
	otherPath, err := buildImage(dir, other)
	if err != nil {
		t.Fatal(err)
	}
	first, err := buildImage(dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := buildImage(dir, spec)
	if err != nil || again != first {
		t.Fatalf("rebuild of an unchanged spec: %s, %v (first %s)", again, err, first)
	}
	spec.Files[0].Data = []byte("#!/bin/false\n")
	second, err := buildImage(dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatal("changed content, same tarball")
	}
	if _, err := os.Stat(first); !os.IsNotExist(err) {
		t.Errorf("older tarball %s not pruned", first)
	}
	if _, err := os.Stat(otherPath); err != nil {
		t.Errorf("tarball of another repository pruned: %v", err)
	}
	if got := filepath.Base(second); got[:len("img-localhost_kubectl-mesh_thing-")] != "img-localhost_kubectl-mesh_thing-" {
		t.Errorf("tarball name %s", got)
	}

	tag, _ := name.NewTag(spec.Ref)
	img, err := tarball.ImageFromPath(second, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "1337:1337" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/usr/bin/thing" {
		t.Errorf("config %+v", cf.Config)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]int64{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h.Mode
	}
	want := map[string]int64{"tmp/": 0o1777, "usr/": 0o755, "usr/bin/": 0o755, "usr/bin/thing": 0o755}
	if len(got) != len(want) {
		t.Errorf("layer entries %v, want %v", got, want)
	}
	for n, m := range want {
		if got[n] != m {
			t.Errorf("layer entry %s mode %o (present: %v), want %o", n, got[n], got, m)
		}
	}
}

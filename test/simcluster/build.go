package simcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

const (
	// AgentImage is the tag under which the locally built agent is imported into the real node.
	AgentImage = "ghcr.io/kubectl-mesh/mesh-agent:dev"
	// pauseImage is containerd's sandbox_image; a local name, since nothing can be pulled.
	pauseImage = "localhost/kubectl-mesh/pause:dev"

	kwokModule = "sigs.k8s.io/kwok/cmd/kwok@v0.8.0"
)

// kubeBinaries are built from k8s.io/kubernetes by the wrapper module test/k8sbin.
var kubeBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"}

// artifacts are the paths EnsureBuilt produced.
type artifacts struct {
	bin        string // <cache>/bin
	agentBin   string // static mesh-agent, run directly as the kwok nodes' agents
	agentImage string // docker-save tarball of AgentImage
	pauseImage string // docker-save tarball of pauseImage
}

func (a artifacts) tool(name string) string { return filepath.Join(a.bin, name) }

// EnsureBuilt builds and caches everything the cluster runs: the Kubernetes components and kwok
// (once; they are pinned), and the agent and pause binaries and their images (every call, since
// the agent source changes; the Go build cache makes an unchanged rebuild take about a second,
// and the image tarballs are keyed by the binaries' content hashes).
func EnsureBuilt(ctx context.Context, cacheDir string) error {
	_, err := ensureBuilt(ctx, cacheDir, io.Discard)
	return err
}

func ensureBuilt(ctx context.Context, cacheDir string, log io.Writer) (artifacts, error) {
	root, err := repoRoot()
	if err != nil {
		return artifacts{}, err
	}
	if cacheDir == "" {
		cacheDir = defaultCacheDir(root)
	}
	a := artifacts{bin: filepath.Join(cacheDir, "bin")}
	if err := os.MkdirAll(a.bin, 0o755); err != nil {
		return a, err
	}
	// Concurrent test binaries (go test ./... runs packages in parallel) must not build into the
	// same files at once.
	unlock, err := flock(ctx, filepath.Join(cacheDir, "build.lock"))
	if err != nil {
		return a, err
	}
	defer unlock()

	if err := ensureKube(ctx, root, a.bin, log); err != nil {
		return a, err
	}
	if _, err := os.Stat(a.tool("kwok")); err != nil {
		fmt.Fprintf(log, "simcluster: installing %s\n", kwokModule)
		if err := goCmd(ctx, root, []string{"GOBIN=" + a.bin}, log, "install", kwokModule); err != nil {
			return a, fmt.Errorf("build kwok: %w", err)
		}
	}

	work := filepath.Join(cacheDir, "build")
	imgDir := filepath.Join(cacheDir, "images")
	for _, d := range []string{work, imgDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return a, err
		}
	}
	static := []string{"CGO_ENABLED=0"}
	a.agentBin = filepath.Join(work, "mesh-agent")
	// The source's own version, as `make build` and the e2e tests give the plugin: no skew.
	if err := goCmd(ctx, root, static, log, "build", "-trimpath", "-o", a.agentBin, "./agent"); err != nil {
		return a, fmt.Errorf("build mesh-agent: %w", err)
	}
	pauseBin := filepath.Join(work, "pause")
	if err := goCmd(ctx, root, static, log, "build", "-trimpath", "-o", pauseBin, "./test/simcluster/pause"); err != nil {
		return a, fmt.Errorf("build pause: %w", err)
	}
	for _, img := range []struct {
		path     *string
		ref, bin string
	}{{&a.agentImage, AgentImage, a.agentBin}, {&a.pauseImage, pauseImage, pauseBin}} {
		spec, err := binaryImage(img.ref, img.bin)
		if err != nil {
			return a, err
		}
		if *img.path, err = buildImage(imgDir, spec); err != nil {
			return a, err
		}
	}
	return a, nil
}

// ensureKube builds the Kubernetes components with the version of k8s.io/kubernetes that
// test/k8sbin requires, stamped into the binaries the way the upstream release build does:
// without it they report v0.0.0-master+$Format:%H$, which kubectl refuses to parse. A stamp
// file records the version the cached binaries were built with.
func ensureKube(ctx context.Context, root, bin string, log io.Writer) error {
	modDir := filepath.Join(root, "test", "k8sbin")
	gomod, err := os.ReadFile(filepath.Join(modDir, "go.mod"))
	if err != nil {
		return err
	}
	m := regexp.MustCompile(`(?m)^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v(\d+)\.(\d+)\.\d+\S*)`).FindSubmatch(gomod)
	if m == nil {
		return fmt.Errorf("%s does not require k8s.io/kubernetes", filepath.Join(modDir, "go.mod"))
	}
	version, major, minor := string(m[1]), string(m[2]), string(m[3])
	stamp := filepath.Join(bin, ".kubernetes-version")
	upToDate := true
	if b, err := os.ReadFile(stamp); err != nil || strings.TrimSpace(string(b)) != version {
		upToDate = false
	}
	var pkgs []string
	for _, b := range kubeBinaries {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			upToDate = false
		}
		pkgs = append(pkgs, "k8s.io/kubernetes/cmd/"+b)
	}
	if upToDate {
		return nil
	}
	fmt.Fprintf(log, "simcluster: building Kubernetes %s components (3-4 minutes the first time, then cached)\n", version)
	var ldflags []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ldflags = append(ldflags, "-X "+pkg+".gitVersion="+version, "-X "+pkg+".gitMajor="+major,
			"-X "+pkg+".gitMinor="+minor, "-X "+pkg+".gitTreeState=clean")
	}
	args := append([]string{"build", "-ldflags", strings.Join(ldflags, " "), "-o", bin + "/"}, pkgs...)
	if err := goCmd(ctx, modDir, nil, log, args...); err != nil {
		return fmt.Errorf("build kubernetes components: %w", err)
	}
	return os.WriteFile(stamp, []byte(version+"\n"), 0o644)
}

func goCmd(ctx context.Context, dir string, env []string, log io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, log)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

// binaryImage is the image of one static binary at /<name of bin>, its entrypoint; /tmp
// because Go programs (and gRPC's health client in exec probes) may want a temp dir.
func binaryImage(ref, bin string) (ImageSpec, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return ImageSpec{}, err
	}
	name := filepath.Base(bin)
	return ImageSpec{
		Ref: ref,
		Files: []ImageFile{
			{Path: "tmp", Dir: true, Mode: 0o1777},
			{Path: name, Data: data, Mode: 0o755},
		},
		Entrypoint: []string{"/" + name},
		Env:        []string{"PATH=/"},
	}, nil
}

// repoRoot finds the module root from the working directory (tests run in their package
// directory, the command usually at the root).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/kubectl-mesh/kubectl-mesh\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("simcluster: not inside the kubectl-mesh repository (no go.mod of github.com/kubectl-mesh/kubectl-mesh above the working directory)")
		}
		dir = parent
	}
}

func defaultCacheDir(root string) string {
	if d := os.Getenv("MESH_SIM_CACHE"); d != "" {
		return d
	}
	return filepath.Join(root, ".cache")
}

// flock takes an exclusive lock on path, waiting for it until ctx ends.
func flock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tryFlock takes an exclusive lock on path without waiting; ok is false if another process
// holds it. The lock is held until release (or this process's exit).
func tryFlock(path string) (lock *os.File, ok bool, err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return f, true, nil
}

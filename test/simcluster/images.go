package simcluster

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ImageFile is one entry of a locally built image's single layer.
type ImageFile struct {
	// Path inside the image, without a leading slash ("usr/sbin/nginx"). Parent directories
	// are added as needed.
	Path string
	Data []byte
	// Mode is the permission bits; 0 means 0644 for files and 0755 for directories.
	Mode int64
	// Dir makes an empty directory (Data is ignored), e.g. "tmp" with Mode 01777.
	Dir bool
}

// ImageSpec describes an image built on this machine (nothing can be pulled here).
type ImageSpec struct {
	// Ref is the tag the image is imported under, e.g. "localhost/kubectl-mesh/nginx:dev".
	Ref        string
	Files      []ImageFile
	Entrypoint []string
	Cmd        []string
	Env        []string
	// User is the image's default user ("1337:1337"); empty means root.
	User string
}

// HostFile reads a file of this machine for an image, following symlinks: the image gets the
// content at the path given (ldd's paths are often symlinks, and the image has no merged /usr).
func HostFile(hostPath string, mode int64) (ImageFile, error) {
	b, err := os.ReadFile(hostPath)
	if err != nil {
		return ImageFile{}, err
	}
	if mode == 0 {
		fi, err := os.Stat(hostPath)
		if err != nil {
			return ImageFile{}, err
		}
		mode = int64(fi.Mode().Perm())
	}
	return ImageFile{Path: strings.TrimPrefix(hostPath, "/"), Data: b, Mode: mode}, nil
}

// HostBinaryWithLibs returns a dynamically linked host binary together with the shared
// libraries and the loader `ldd` lists for it, each at the path ldd gives.
func HostBinaryWithLibs(ctx context.Context, bin string) ([]ImageFile, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	paths := []string{bin}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			paths = append(paths, f[2]) // libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			paths = append(paths, f[0]) // the loader: /lib64/ld-linux-x86-64.so.2 (0x...)
		}
	}
	var files []ImageFile
	for _, p := range paths {
		f, err := HostFile(p, 0o755)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// EnsureImage builds the image (cached in <cache>/images by the hash of the spec) and imports
// it into the real node's containerd, so that pods can use it with imagePullPolicy Never or
// IfNotPresent.
func (c *Cluster) EnsureImage(ctx context.Context, spec ImageSpec) error {
	if c.state.ContainerdSocket == "" {
		return errors.New("simcluster: EnsureImage needs the real node (Options.RealNode)")
	}
	// Under the build lock: another test binary may be pruning older tarballs of the same
	// image between this build and the import.
	unlock, err := flock(ctx, filepath.Join(c.opts.CacheDir, "build.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	tarPath, err := buildImage(filepath.Join(c.opts.CacheDir, "images"), spec)
	if err != nil {
		return err
	}
	key := importKey{c, spec.Ref}
	if last, ok := imported.Load(key); ok && last == tarPath {
		return nil
	}
	out, err := exec.CommandContext(ctx, "ctr", "-a", c.state.ContainerdSocket, "-n", "k8s.io",
		"images", "import", "--all-platforms", tarPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s into containerd: %w: %s", tarPath, err, bytes.TrimSpace(out))
	}
	imported.Store(key, tarPath)
	c.logf("image %s imported", spec.Ref)
	return nil
}

// imported remembers, per cluster and tag, the tarball (named by content) last imported under
// the tag, so that deploying a workload again costs no import.
var imported sync.Map

type importKey struct {
	c   *Cluster
	ref string
}

// GoBinary builds a static (CGO_ENABLED=0) binary of a package of this repository
// ("./test/delayproxy") into <cache>/build and returns its path. The Go build cache makes an
// unchanged rebuild quick.
func (c *Cluster) GoBinary(ctx context.Context, pkg string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	unlock, err := flock(ctx, filepath.Join(c.opts.CacheDir, "build.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	out := filepath.Join(c.opts.CacheDir, "build", path.Base(pkg))
	if err := goCmd(ctx, root, []string{"CGO_ENABLED=0"}, io.Discard, "build", "-trimpath", "-o", out, pkg); err != nil {
		return "", err
	}
	return out, nil
}

// CacheDir is the cache directory of built binaries and images the cluster uses.
func (c *Cluster) CacheDir() string { return c.opts.CacheDir }

// CgroupRoot is the real node kubelet's cgroup root ("/meshsim0"): pods' containers are in
// <hierarchy>/<root>/kubepods/<qos>/pod<uid>/<container id>. Everything under it is removed
// by Stop.
func (c *Cluster) CgroupRoot() string { return c.state.CgroupRoot }

// PodCIDR is the real node's pod subnet, on the cluster's bridge.
func (c *Cluster) PodCIDR() string { return c.state.PodCIDR }

// imageStem names an image's tarballs after its repository:
// "localhost/kubectl-mesh/nginx:dev" -> "img-localhost_kubectl-mesh_nginx".
func imageStem(ref string) string {
	repo := ref
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	return "img-" + strings.NewReplacer("/", "_", ":", "_", "@", "_").Replace(repo)
}

func buildImage(dir string, spec ImageSpec) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tag, err := name.NewTag(spec.Ref)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if err := json.NewEncoder(h).Encode(spec); err != nil {
		return "", err
	}
	stem := imageStem(spec.Ref)
	tarPath := filepath.Join(dir, fmt.Sprintf("%s-%s.tar", stem, hex.EncodeToString(h.Sum(nil)[:8])))
	if _, err := os.Stat(tarPath); err == nil {
		return tarPath, nil
	}
	img, err := specImage(spec)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", spec.Ref, err)
	}
	f, err := os.CreateTemp(dir, stem+"-*.tmp")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	f.Close()
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write image %s: %w", spec.Ref, err)
	}
	if err := os.Rename(tmp, tarPath); err != nil {
		return "", err
	}
	own := regexp.MustCompile("^" + regexp.QuoteMeta(stem) + "-[0-9a-f]{16}\\.tar$")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if own.MatchString(e.Name()) && filepath.Join(dir, e.Name()) != tarPath {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return tarPath, nil
}

func specImage(spec ImageSpec) (v1.Image, error) {
	files := append([]ImageFile(nil), spec.Files...)
	// Parent directories first, each once, in a stable order: the layer digest is a function
	// of the spec alone.
	seen := map[string]bool{}
	for _, f := range files {
		if f.Dir {
			seen[strings.Trim(f.Path, "/")] = true
		}
	}
	var dirs []ImageFile
	for _, f := range files {
		for d := path.Dir(strings.Trim(f.Path, "/")); d != "." && d != "/" && !seen[d]; d = path.Dir(d) {
			seen[d] = true
			dirs = append(dirs, ImageFile{Path: d, Dir: true, Mode: 0o755})
		}
	}
	files = append(dirs, files...)
	sort.SliceStable(files, func(i, j int) bool { return strings.Trim(files[i].Path, "/") < strings.Trim(files[j].Path, "/") })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, f := range files {
		p := strings.Trim(f.Path, "/")
		hdr := &tar.Header{Name: p, Mode: f.Mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.Data))}
		if f.Dir {
			hdr.Name, hdr.Typeflag, hdr.Size = p+"/", tar.TypeDir, 0
			if hdr.Mode == 0 {
				hdr.Mode = 0o755
			}
		} else if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if !f.Dir {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: mtime}
	cf.Config.Entrypoint = spec.Entrypoint
	cf.Config.Cmd = spec.Cmd
	cf.Config.Env = spec.Env
	cf.Config.User = spec.User
	return mutate.ConfigFile(img, cf)
}

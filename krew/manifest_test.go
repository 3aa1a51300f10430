// Package krew holds the krew plugin manifest template; its test renders the template the
// way krew-release-bot does and checks the result against krew-index's rules.
package krew

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"text/template"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/version"
	"sigs.k8s.io/krew/pkg/constants"
	"sigs.k8s.io/krew/pkg/index"
	"sigs.k8s.io/yaml"
)

// render fills the template as krew-release-bot's pkg/source/template.go does: .TagName,
// and addURIAndSha, which downloads the asset and prints "uri: …" and "sha256: …" at a
// four-space indent. There is no release to download here, so the digest is that of the
// URL itself: the format is what is under test, not the asset.
func render(t *testing.T, tag string) []byte {
	t.Helper()
	src, err := os.ReadFile("mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	funcs := template.FuncMap{
		"addURIAndSha": func(urlTemplate, tag string) (string, error) {
			var url bytes.Buffer
			if err := template.Must(template.New("url").Parse(urlTemplate)).Execute(&url, struct{ TagName string }{tag}); err != nil {
				return "", err
			}
			sum := sha256.Sum256(url.Bytes())
			return fmt.Sprintf("uri: %s\n    sha256: %s", url.String(), hex.EncodeToString(sum[:])), nil
		},
	}
	tmpl, err := template.New("mesh.yaml").Funcs(funcs).Parse(string(src))
	if err != nil {
		t.Fatalf("template does not parse: %v", err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, struct{ TagName string }{tag}); err != nil {
		t.Fatalf("template does not render: %v", err)
	}
	return out.Bytes()
}

func TestManifestRendersToAValidPlugin(t *testing.T) {
	out := render(t, "v0.1.0")
	if bytes.Contains(out, []byte("{{")) {
		t.Fatalf("rendered manifest still holds template actions:\n%s", out)
	}
	var p index.Plugin
	if err := yaml.UnmarshalStrict(out, &p); err != nil {
		t.Fatalf("rendered manifest is not a krew Plugin: %v\n%s", err, out)
	}
	if err := validatePlugin("mesh", p); err != nil {
		t.Fatalf("krew-index would refuse the manifest: %v", err)
	}
	if err := validatePlatformCoverage(p); err != nil {
		t.Fatal(err)
	}
	for _, want := range [][2]string{
		{"linux", "amd64"}, {"linux", "arm64"}, {"darwin", "amd64"},
		{"darwin", "arm64"}, {"windows", "amd64"}, {"windows", "arm64"},
	} {
		pl := platformFor(p, want[0], want[1])
		if pl == nil {
			t.Errorf("no platform for %s/%s", want[0], want[1])
			continue
		}
		suffix := fmt.Sprintf("_v0.1.0_%s_%s.tar.gz", want[0], want[1])
		bin := "kubectl-mesh"
		if want[0] == "windows" {
			suffix, bin = fmt.Sprintf("_v0.1.0_%s_%s.zip", want[0], want[1]), "kubectl-mesh.exe"
		}
		if !strings.HasSuffix(pl.URI, suffix) {
			t.Errorf("%s/%s: uri %q does not name the %s archive", want[0], want[1], pl.URI, suffix)
		}
		if pl.Bin != bin {
			t.Errorf("%s/%s: bin %q, want %q", want[0], want[1], pl.Bin, bin)
		}
		if !shipsLicense(pl) {
			t.Errorf("%s/%s: the archive's LICENSE is not extracted (krew-index requires it)", want[0], want[1])
		}
	}
}

// The rules must reject what krew-index rejects, or the test above proves nothing.
func TestValidationRejectsBrokenManifests(t *testing.T) {
	var good index.Plugin
	if err := yaml.UnmarshalStrict(render(t, "v0.1.0"), &good); err != nil {
		t.Fatal(err)
	}
	for name, breakIt := range map[string]func(p *index.Plugin){
		"wrong apiVersion":     func(p *index.Plugin) { p.APIVersion = "krew.googlecontainertools.github.com/v1alpha1" },
		"wrong kind":           func(p *index.Plugin) { p.Kind = "Tool" },
		"name differs":         func(p *index.Plugin) { p.Name = "mesh2" },
		"no short description": func(p *index.Plugin) { p.Spec.ShortDescription = "" },
		"multi-line short":     func(p *index.Plugin) { p.Spec.ShortDescription = "a\nb" },
		"version without v":    func(p *index.Plugin) { p.Spec.Version = "0.1.0" },
		"version not semver":   func(p *index.Plugin) { p.Spec.Version = "v1" },
		"no platforms":         func(p *index.Plugin) { p.Spec.Platforms = nil },
		"no uri":               func(p *index.Plugin) { p.Spec.Platforms[0].URI = "" },
		"bad sha256":           func(p *index.Plugin) { p.Spec.Platforms[0].Sha256 = strings.ToUpper(p.Spec.Platforms[0].Sha256) },
		"no bin":               func(p *index.Plugin) { p.Spec.Platforms[0].Bin = "" },
		"empty files":          func(p *index.Plugin) { p.Spec.Platforms[0].Files = []index.FileOperation{} },
		"file without to":      func(p *index.Plugin) { p.Spec.Platforms[0].Files[0].To = "" },
		"nil selector":         func(p *index.Plugin) { p.Spec.Platforms[0].Selector = nil },
		"foreign selector key": func(p *index.Plugin) { p.Spec.Platforms[0].Selector.MatchLabels["distro"] = "debian" },
		"empty matchLabels": func(p *index.Plugin) {
			p.Spec.Platforms[0].Selector = &metav1.LabelSelector{MatchLabels: map[string]string{}}
		},
	} {
		t.Run(name, func(t *testing.T) {
			var p index.Plugin
			out, _ := yaml.Marshal(good)
			if err := yaml.Unmarshal(out, &p); err != nil {
				t.Fatal(err)
			}
			breakIt(&p)
			if validatePlugin("mesh", p) == nil {
				t.Fatal("accepted")
			}
		})
	}
	t.Run("two platforms for one os/arch", func(t *testing.T) {
		p := good
		p.Spec.Platforms = append([]index.Platform{}, good.Spec.Platforms...)
		p.Spec.Platforms = append(p.Spec.Platforms, good.Spec.Platforms[0])
		if validatePlatformCoverage(p) == nil {
			t.Fatal("accepted")
		}
	})
	t.Run("unsupported os", func(t *testing.T) {
		p := good
		p.Spec.Platforms = []index.Platform{good.Spec.Platforms[0]}
		p.Spec.Platforms[0].Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"os": "plan9"}}
		if validatePlatformCoverage(p) == nil {
			t.Fatal("accepted")
		}
	})
}

// What follows mirrors krew's internal/index/validation (ValidatePlugin and its helpers),
// which Go will not let us import, and the platform checks of cmd/validate-krew-manifest.

var (
	safePluginName = regexp.MustCompile(`^[\w-]+$`)
	validSHA256    = regexp.MustCompile(`^[a-f0-9]{64}$`)
	windowsNames   = []string{"CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5",
		"COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9"}
	// validate-krew-manifest's list of <os, arch> pairs krew runs on.
	supportedPlatforms = map[string][]string{
		"windows": {"386", "amd64", "arm64"},
		"linux":   {"386", "amd64", "arm", "arm64", "ppc64le"},
		"darwin":  {"386", "amd64", "arm64"},
	}
)

func validatePlugin(name string, p index.Plugin) error {
	if p.APIVersion != constants.CurrentAPIVersion {
		return fmt.Errorf("apiVersion %q is not %q", p.APIVersion, constants.CurrentAPIVersion)
	}
	if p.Kind != constants.PluginKind {
		return fmt.Errorf("kind %q is not %q", p.Kind, constants.PluginKind)
	}
	if !safePluginName.MatchString(name) {
		return fmt.Errorf("plugin name %q must match %s", name, safePluginName)
	}
	for _, w := range windowsNames {
		if strings.EqualFold(w, name) {
			return fmt.Errorf("plugin name %q is reserved on Windows", name)
		}
	}
	if p.Name != name {
		return fmt.Errorf("plugin should be named %q, not %q", name, p.Name)
	}
	if p.Spec.ShortDescription == "" {
		return errors.New("no short description")
	}
	if strings.ContainsAny(p.Spec.ShortDescription, "\r\n") {
		return errors.New("line break in the short description")
	}
	if len(p.Spec.Platforms) == 0 {
		return errors.New("no platform")
	}
	if !strings.HasPrefix(p.Spec.Version, "v") {
		return fmt.Errorf("version %q does not start with v", p.Spec.Version)
	}
	if _, err := version.ParseSemantic(p.Spec.Version); err != nil {
		return fmt.Errorf("version: %w", err)
	}
	for i, pl := range p.Spec.Platforms {
		if err := validatePlatform(pl); err != nil {
			return fmt.Errorf("platform %d: %w", i, err)
		}
	}
	return nil
}

func validatePlatform(p index.Platform) error {
	switch {
	case p.URI == "":
		return errors.New("uri is not set")
	case !validSHA256.MatchString(p.Sha256):
		return fmt.Errorf("sha256 %q is not 64 lowercase hex digits", p.Sha256)
	case p.Bin == "":
		return errors.New("bin is not set")
	}
	if p.Files != nil && len(p.Files) == 0 {
		return errors.New("files is set but empty")
	}
	for _, f := range p.Files {
		if f.From == "" || f.To == "" {
			return fmt.Errorf("file operation %+v lacks from or to", f)
		}
	}
	sel := p.Selector
	if sel == nil {
		return errors.New("no selector")
	}
	if sel.MatchLabels == nil && len(sel.MatchExpressions) == 0 {
		return errors.New("empty selector")
	}
	if sel.MatchLabels != nil && len(sel.MatchLabels) == 0 {
		return errors.New("matchLabels set but empty")
	}
	if sel.MatchExpressions != nil && len(sel.MatchExpressions) == 0 {
		return errors.New("matchExpressions set but empty")
	}
	for k := range sel.MatchLabels {
		if k != "os" && k != "arch" {
			return fmt.Errorf("selector key %q is not os or arch", k)
		}
	}
	for _, e := range sel.MatchExpressions {
		if e.Key != "os" && e.Key != "arch" {
			return fmt.Errorf("selector key %q is not os or arch", e.Key)
		}
	}
	return nil
}

// validatePlatformCoverage: every platform matches some supported <os, arch>, and no
// <os, arch> is matched twice.
func validatePlatformCoverage(p index.Plugin) error {
	seen := map[string]int{}
	for i, pl := range p.Spec.Platforms {
		sel, err := metav1.LabelSelectorAsSelector(pl.Selector)
		if err != nil {
			return fmt.Errorf("platform %d: %w", i, err)
		}
		matched := false
		for goos, arches := range supportedPlatforms {
			for _, arch := range arches {
				if !sel.Matches(labels.Set{"os": goos, "arch": arch}) {
					continue
				}
				matched = true
				key := goos + "/" + arch
				if j, dup := seen[key]; dup {
					return fmt.Errorf("platforms %d and %d both match %s", j, i, key)
				}
				seen[key] = i
			}
		}
		if !matched {
			return fmt.Errorf("platform %d matches no os/arch krew supports", i)
		}
	}
	return nil
}

func platformFor(p index.Plugin, goos, arch string) *index.Platform {
	for i, pl := range p.Spec.Platforms {
		sel, err := metav1.LabelSelectorAsSelector(pl.Selector)
		if err == nil && sel.Matches(labels.Set{"os": goos, "arch": arch}) {
			return &p.Spec.Platforms[i]
		}
	}
	return nil
}

// krew-index requires the licence to be installed with the plugin.
func shipsLicense(p *index.Platform) bool {
	if p.Files == nil {
		return true // krew's default copies the whole archive
	}
	for _, f := range p.Files {
		if strings.EqualFold(f.From, "LICENSE") || f.From == "*" {
			return true
		}
	}
	return false
}

// Every operating system the manifest offers must build: the plugin shares packages with
// the Linux-only agent, and a Linux-only dependency would break the release for the others.
// One architecture per system is enough to catch that.
func TestPluginBuildsForEverySystem(t *testing.T) {
	var p index.Plugin
	if err := yaml.UnmarshalStrict(render(t, "v0.1.0"), &p); err != nil {
		t.Fatal(err)
	}
	built := map[string]bool{}
	for _, pl := range p.Spec.Platforms {
		goos, goarch := pl.Selector.MatchLabels["os"], pl.Selector.MatchLabels["arch"]
		if built[goos] {
			continue
		}
		built[goos] = true
		t.Run(goos+"/"+goarch, func(t *testing.T) {
			cmd := exec.Command("go", "build", "-o", os.DevNull, "./plugin")
			cmd.Dir = ".."
			cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go build for %s/%s: %v\n%s", goos, goarch, err, out)
			}
		})
	}
}

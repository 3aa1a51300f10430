package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/version"
)

// Options are the per-install choices; everything else in the manifests is fixed.
type Options struct {
	// Image is the agent image reference; empty means DefaultImage().
	Image string
	// Namespace receives the DaemonSet and ServiceAccount; empty means DefaultNamespace.
	Namespace string
	// NodeSelector is added to the DaemonSet's nodeSelector (kubernetes.io/os=linux stays
	// unless overridden).
	NodeSelector map[string]string
}

// DefaultImage is the agent image released together with this plugin.
func DefaultImage() string {
	return DefaultImageRepository + ":" + version.Version
}

// ValidateImage accepts what a container runtime can pull: a repository with an optional
// registry, and an optional tag or digest. The error names the part that is wrong.
func ValidateImage(image string) error {
	if image == "" {
		return errors.New("image must not be empty")
	}
	if strings.TrimSpace(image) != image {
		return fmt.Errorf("image %q has leading or trailing spaces", image)
	}
	// ParseReference alone reports only "could not parse reference"; parsing as the form the
	// string claims to be yields the precise reason (bad tag, bad digest, upper-case repository).
	var (
		repo name.Repository
		tag  string
		err  error
	)
	if before, _, ok := strings.Cut(image, "@"); ok {
		var d name.Digest
		d, err = name.NewDigest(image)
		repo = d.Repository
		if err == nil && strings.Contains(before[strings.LastIndex(before, "/")+1:], ":") {
			tag = before[strings.LastIndex(before, ":")+1:]
		}
	} else {
		var t name.Tag
		t, err = name.NewTag(image)
		repo, tag = t.Repository, t.TagStr()
	}
	if err != nil {
		return fmt.Errorf("image %q is not a valid reference: %w", image, err)
	}
	// go-containerregistry checks characters only; the distribution grammar that registries
	// and runtimes enforce also fixes where separators may appear.
	for _, part := range strings.Split(repo.RepositoryStr(), "/") {
		if !pathComponent.MatchString(part) {
			return fmt.Errorf("image %q is not a valid reference: repository path component %q must be lower-case alphanumerics separated by '.', '_', '__' or '-'", image, part)
		}
	}
	if tag != "" && !tagPattern.MatchString(tag) {
		return fmt.Errorf("image %q is not a valid reference: tag %q must start with a letter, digit or '_' and hold at most 128 of [A-Za-z0-9_.-]", image, tag)
	}
	return nil
}

var (
	pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagPattern    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ValidateNamespace checks the name the API server would accept for a Namespace.
func ValidateNamespace(ns string) error {
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return fmt.Errorf("namespace %q is not a valid name: %s", ns, strings.Join(errs, "; "))
	}
	return nil
}

// ParseNodeSelector reads "key=value,key2=value2". A DaemonSet nodeSelector can only express
// equality, so set-based forms (in, !=, exists) are refused rather than silently dropped.
func ParseNodeSelector(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for term := range strings.SplitSeq(s, ",") {
		term = strings.TrimSpace(term)
		key, value, ok := strings.Cut(term, "=")
		if !ok || strings.HasPrefix(value, "=") || strings.HasSuffix(key, "!") {
			return nil, fmt.Errorf("%q is not key=value (a nodeSelector can only match labels exactly)", term)
		}
		if errs := validation.IsQualifiedName(key); len(errs) > 0 {
			return nil, fmt.Errorf("label key %q: %s", key, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(value); len(errs) > 0 {
			return nil, fmt.Errorf("label value %q for key %q: %s", value, key, strings.Join(errs, "; "))
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("label key %q is given twice", key)
		}
		out[key] = value
	}
	return out, nil
}

func (o Options) withDefaults() Options {
	if o.Image == "" {
		o.Image = DefaultImage()
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	return o
}

// Validate reports the first option the API server or the runtime would refuse.
func (o Options) Validate() error {
	o = o.withDefaults()
	if err := ValidateImage(o.Image); err != nil {
		return err
	}
	if err := ValidateNamespace(o.Namespace); err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(o.NodeSelector)) {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("node selector key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(o.NodeSelector[k]); len(errs) > 0 {
			return fmt.Errorf("node selector value %q: %s", o.NodeSelector[k], strings.Join(errs, "; "))
		}
	}
	return nil
}

// Decode returns the embedded objects exactly as written, in apply order.
func Decode() ([]*unstructured.Unstructured, error) {
	return decode(agentYAML)
}

func decode(data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading embedded manifests: %w", err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("embedded manifest document %d: %w", len(objs)+1, err)
		}
		if len(bytes.TrimSpace(js)) == 0 || string(bytes.TrimSpace(js)) == "null" {
			continue // a document holding only comments
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("embedded manifest document %d: %w", len(objs)+1, err)
		}
		objs = append(objs, u)
	}
}

// Render returns the objects to apply for o, in dependency order: Namespace, ServiceAccount,
// ClusterRole, ClusterRoleBinding, DaemonSet.
func Render(o Options) ([]*unstructured.Unstructured, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	objs, err := Decode()
	if err != nil {
		return nil, err
	}
	for _, u := range objs {
		switch u.GetKind() {
		case "Namespace":
			u.SetName(o.Namespace)
		case "ClusterRole":
		case "ClusterRoleBinding":
			if err := setSubjectNamespace(u, o.Namespace); err != nil {
				return nil, err
			}
		case "DaemonSet":
			u.SetNamespace(o.Namespace)
			if err := setAgentImage(u, o.Image); err != nil {
				return nil, err
			}
			if err := mergeNodeSelector(u, o.NodeSelector); err != nil {
				return nil, err
			}
		default:
			u.SetNamespace(o.Namespace)
		}
	}
	return objs, nil
}

func setSubjectNamespace(u *unstructured.Unstructured, ns string) error {
	subjects, _, err := unstructured.NestedSlice(u.Object, "subjects")
	if err != nil {
		return fmt.Errorf("%s/%s: %w", u.GetKind(), u.GetName(), err)
	}
	for _, s := range subjects {
		if m, ok := s.(map[string]any); ok && m["kind"] == "ServiceAccount" {
			m["namespace"] = ns
		}
	}
	return unstructured.SetNestedSlice(u.Object, subjects, "subjects")
}

func setAgentImage(u *unstructured.Unstructured, image string) error {
	containers, _, err := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
	if err != nil {
		return fmt.Errorf("DaemonSet/%s: %w", u.GetName(), err)
	}
	found := false
	for _, c := range containers {
		if m, ok := c.(map[string]any); ok && m["name"] == ContainerName {
			m["image"] = image
			found = true
		}
	}
	if !found {
		return fmt.Errorf("DaemonSet/%s has no container named %q", u.GetName(), ContainerName)
	}
	return unstructured.SetNestedSlice(u.Object, containers, "spec", "template", "spec", "containers")
}

func mergeNodeSelector(u *unstructured.Unstructured, extra map[string]string) error {
	if len(extra) == 0 {
		return nil
	}
	sel, _, err := unstructured.NestedStringMap(u.Object, "spec", "template", "spec", "nodeSelector")
	if err != nil {
		return fmt.Errorf("DaemonSet/%s: %w", u.GetName(), err)
	}
	if sel == nil {
		sel = map[string]string{}
	}
	maps.Copy(sel, extra)
	return unstructured.SetNestedStringMap(u.Object, sel, "spec", "template", "spec", "nodeSelector")
}

// Kinds lists the kinds the manifests create, cluster-scoped ones included, in apply order.
func Kinds() ([]schema.GroupVersionKind, error) {
	objs, err := Decode()
	if err != nil {
		return nil, err
	}
	var kinds []schema.GroupVersionKind
	for _, u := range objs {
		gvk := u.GroupVersionKind()
		if !slices.Contains(kinds, gvk) {
			kinds = append(kinds, gvk)
		}
	}
	return kinds, nil
}

// YAML writes objs as one multi-document stream, as `kubectl apply -f` reads it.
func YAML(objs []*unstructured.Unstructured) ([]byte, error) {
	var buf bytes.Buffer
	for i, u := range objs {
		if i > 0 {
			buf.WriteString("---\n")
		}
		b, err := yaml.Marshal(u.Object)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", u.GetKind(), u.GetName(), err)
		}
		buf.Write(b)
	}
	return buf.Bytes(), nil
}

package smp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
	smp "github.com/layer5io/service-mesh-performance/spec"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// Output formats, as -o and perf export name them.
const (
	FormatJSON = "smp-json"
	FormatYAML = "smp-yaml"
)

// Formats lists the output formats.
var Formats = []string{FormatJSON, FormatYAML}

// document is the combined document's layout; the standard parts are kept as the SMP
// types' own JSON.
type document struct {
	SMPVersion  string          `json:"smp_version"`
	Config      json.RawMessage `json:"performance_test_config"`
	Result      json.RawMessage `json:"performance_test_result"`
	Mesh        json.RawMessage `json:"service_mesh_config"`
	Environment json.RawMessage `json:"environment_config"`
	Extension   *Extension      `json:"x-kubectl-mesh"`
}

// marshalProto is protojson with the proto field names, the encoding the SMP types define.
// protojson varies its whitespace on purpose, so it is compacted here and indented with the
// rest of the document.
func marshalProto(m proto.Message) (json.RawMessage, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var c bytes.Buffer
	if err := json.Compact(&c, b); err != nil {
		return nil, err
	}
	return c.Bytes(), nil
}

// encodeJSON writes v indented, leaving <, > and & as they are (encoding/json would
// escape them, also inside the protojson parts).
func encodeJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func (d *Documents) check() error {
	if d == nil || d.Config == nil || d.Result == nil || d.Mesh == nil || d.Environment == nil || d.Extension == nil {
		return errors.New("smp: incomplete documents")
	}
	return nil
}

// Marshal encodes the documents as one: the spec's version, the four standard documents
// under their message names in snake case, and the extension under "x-kubectl-mesh".
// format is FormatJSON or FormatYAML (YAML is the JSON converted, key for key).
func Marshal(d *Documents, format string) ([]byte, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	doc := document{SMPVersion: Version, Extension: d.Extension}
	for _, p := range []struct {
		dst *json.RawMessage
		m   proto.Message
	}{{&doc.Config, d.Config}, {&doc.Result, d.Result}, {&doc.Mesh, d.Mesh}, {&doc.Environment, d.Environment}} {
		b, err := marshalProto(p.m)
		if err != nil {
			return nil, fmt.Errorf("smp: %w", err)
		}
		*p.dst = b
	}
	b, err := encodeJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("smp: %w", err)
	}
	return convert(b, format)
}

func convert(jsonDoc []byte, format string) ([]byte, error) {
	switch format {
	case FormatJSON:
		return jsonDoc, nil
	case FormatYAML:
		return yaml.JSONToYAML(jsonDoc)
	}
	return nil, fmt.Errorf("smp: unknown format %q (want %s)", format, strings.Join(Formats, " or "))
}

// toJSON accepts JSON or YAML.
func toJSON(b []byte) ([]byte, error) {
	t := bytes.TrimSpace(b)
	if len(t) == 0 {
		return nil, errors.New("empty document")
	}
	if t[0] == '{' {
		return t, nil
	}
	j, err := yaml.YAMLToJSON(t)
	if err != nil {
		return nil, fmt.Errorf("neither JSON nor YAML: %w", err)
	}
	return j, nil
}

// strictJSON decodes one JSON value into v, rejecting unknown fields and trailing data.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the document")
	}
	return nil
}

// Read decodes a combined document (JSON or YAML) strictly: the standard parts with the
// SMP types (an unknown field is an error), the extension and the envelope with unknown
// fields refused too, and the ids and versions that tie the parts together checked.
func Read(b []byte) (*Documents, error) {
	j, err := toJSON(b)
	if err != nil {
		return nil, fmt.Errorf("smp: %w", err)
	}
	var doc document
	if err := strictJSON(j, &doc); err != nil {
		return nil, fmt.Errorf("smp: not an SMP document of kubectl-mesh: %w", err)
	}
	if doc.SMPVersion != Version {
		return nil, fmt.Errorf("smp: smp_version %q, want %q", doc.SMPVersion, Version)
	}
	d := &Documents{Config: &smp.PerformanceTestConfig{}, Result: &smp.PerformanceTestResult{},
		Mesh: &smp.ServiceMeshConfig{}, Environment: &smp.EnvironmentConfig{}, Extension: doc.Extension}
	for _, p := range []struct {
		key string
		raw json.RawMessage
		m   proto.Message
	}{{KeyConfig, doc.Config, d.Config}, {KeyResult, doc.Result, d.Result}, {KeyMesh, doc.Mesh, d.Mesh}, {KeyEnvironment, doc.Environment, d.Environment}} {
		if err := readProto(p.key, p.raw, p.m); err != nil {
			return nil, err
		}
	}
	if d.Extension == nil {
		return nil, fmt.Errorf("smp: no %q", KeyExtension)
	}
	if err := d.validate(); err != nil {
		return nil, err
	}
	return d, nil
}

func readProto(key string, raw json.RawMessage, m proto.Message) error {
	if len(raw) == 0 || string(raw) == "null" {
		return fmt.Errorf("smp: no %q", key)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(raw, m); err != nil {
		return fmt.Errorf("smp: %s: %w", key, err)
	}
	return nil
}

// validate checks what ties the documents together, so that parts of two runs or a
// hand-edited file are not taken for one run.
func (d *Documents) validate() error {
	x := d.Extension
	if x.Format != ExtensionFormat {
		return fmt.Errorf("smp: %s format %q, want %q", KeyExtension, x.Format, ExtensionFormat)
	}
	runID, err := uuid.Parse(x.RunID)
	if err != nil {
		return fmt.Errorf("smp: %s run_id %q: %v", KeyExtension, x.RunID, err)
	}
	for _, p := range []struct {
		key, version, id string
	}{
		{KeyConfig, d.Config.GetSmpVersion(), d.Config.GetId()},
		{KeyResult, d.Result.GetSmpVersion(), d.Result.GetId()},
		{KeyMesh, d.Mesh.GetSmpVersion(), d.Mesh.GetId()},
		{KeyEnvironment, d.Environment.GetSmpVersion(), d.Environment.GetId()},
	} {
		if p.version != Version {
			return fmt.Errorf("smp: %s smp_version %q, want %q", p.key, p.version, Version)
		}
		if want := DocumentID(runID, p.key); p.id != want {
			return fmt.Errorf("smp: %s id %q is not run %s's (%s)", p.key, p.id, x.RunID, want)
		}
	}
	r := d.Result
	if r.GetTestId() != d.Config.GetId() || r.GetMeshConfigId() != d.Mesh.GetId() || r.GetEnvId() != d.Environment.GetId() {
		return fmt.Errorf("smp: %s does not refer to the documents beside it", KeyResult)
	}
	for _, f := range x.figures() {
		for _, l := range f.latencies() {
			if _, err := DecodeHistogram(l.Histogram); err != nil {
				return fmt.Errorf("smp: %s: %w", KeyExtension, err)
			}
		}
	}
	return nil
}

func (x *Extension) figures() []*Figures {
	out := []*Figures{&x.Run}
	for i := range x.Nodes {
		out = append(out, &x.Nodes[i].Figures)
	}
	return out
}

func (f *Figures) latencies() []*Latency {
	var out []*Latency
	for _, l := range []*Latency{f.Through, f.Around} {
		if l != nil {
			out = append(out, l)
		}
	}
	if f.AddedResidency != nil {
		out = append(out, &f.AddedResidency.Latency)
	}
	return out
}

// FileName is the name WriteDir gives one part of a run's documents (key is one of the
// Key constants): RUN-ID.KEY.json, or .yaml.
func FileName(runID, key, format string) string {
	ext := ".json"
	if format == FormatYAML {
		ext = ".yaml"
	}
	return runID + "." + key + ext
}

// WriteDir writes each standard document and the extension to its own JSON file in dir
// (created if missing), named by FileName, and returns the paths.
func WriteDir(dir string, d *Documents) ([]string, error) {
	return WriteDirFormat(dir, d, FormatJSON)
}

// WriteDirFormat is WriteDir in either format. Each standard file is the SMP message alone,
// so any SMP reader takes it; each file is written whole or not at all.
func WriteDirFormat(dir string, d *Documents, format string) ([]string, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	if format != FormatJSON && format != FormatYAML {
		return nil, fmt.Errorf("smp: unknown format %q (want %s)", format, strings.Join(Formats, " or "))
	}
	parts, err := d.parts()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("smp: %w", err)
	}
	var paths []string
	for _, p := range parts {
		b, err := encodeJSON(json.RawMessage(p.json))
		if err == nil {
			b, err = convert(b, format)
		}
		if err != nil {
			return paths, fmt.Errorf("smp: %s: %w", p.key, err)
		}
		path := filepath.Join(dir, FileName(d.Extension.RunID, p.key, format))
		if err := writeFile(path, b); err != nil {
			return paths, fmt.Errorf("smp: %w", err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}

type part struct {
	key  string
	json []byte
}

// parts are the five documents in WriteDir's order, each as compact JSON.
func (d *Documents) parts() ([]part, error) {
	var out []part
	for _, p := range []struct {
		key string
		m   proto.Message
	}{{KeyConfig, d.Config}, {KeyResult, d.Result}, {KeyMesh, d.Mesh}, {KeyEnvironment, d.Environment}} {
		b, err := marshalProto(p.m)
		if err != nil {
			return nil, fmt.Errorf("smp: %s: %w", p.key, err)
		}
		out = append(out, part{p.key, b})
	}
	x, err := json.Marshal(d.Extension)
	if err != nil {
		return nil, fmt.Errorf("smp: %s: %w", KeyExtension, err)
	}
	return append(out, part{KeyExtension, x}), nil
}

func writeFile(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// ReadDir reads back the files WriteDir (or WriteDirFormat) wrote for a run, as strictly
// as Read.
func ReadDir(dir, runID string) (*Documents, error) {
	d := &Documents{Config: &smp.PerformanceTestConfig{}, Result: &smp.PerformanceTestResult{},
		Mesh: &smp.ServiceMeshConfig{}, Environment: &smp.EnvironmentConfig{}, Extension: &Extension{}}
	read := func(key string) ([]byte, error) {
		var errs []error
		for _, format := range Formats {
			b, err := os.ReadFile(filepath.Join(dir, FileName(runID, key, format)))
			if err == nil {
				j, err := toJSON(b)
				if err != nil {
					return nil, fmt.Errorf("smp: %s: %w", key, err)
				}
				return j, nil
			}
			errs = append(errs, err)
		}
		return nil, fmt.Errorf("smp: %w", errors.Join(errs...))
	}
	for _, p := range []struct {
		key string
		m   proto.Message
	}{{KeyConfig, d.Config}, {KeyResult, d.Result}, {KeyMesh, d.Mesh}, {KeyEnvironment, d.Environment}} {
		b, err := read(p.key)
		if err != nil {
			return nil, err
		}
		if err := readProto(p.key, b, p.m); err != nil {
			return nil, err
		}
	}
	b, err := read(KeyExtension)
	if err != nil {
		return nil, err
	}
	if err := strictJSON(b, d.Extension); err != nil {
		return nil, fmt.Errorf("smp: %s: %w", KeyExtension, err)
	}
	if d.Extension.RunID != runID {
		return nil, fmt.Errorf("smp: %s is for run %q, not %q", KeyExtension, d.Extension.RunID, runID)
	}
	if err := d.validate(); err != nil {
		return nil, err
	}
	return d, nil
}

// Package perfrun holds a performance run as the plugin stores it (the Run message) and the
// figures every view of a run is computed from: per node and for the whole run, the latency
// through and around the sidecars, the added latency by each method, and the sidecars' cost.
package perfrun

import (
	"errors"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
)

// Format marks a stored run; a file without it is not one of ours.
const Format = "kubectl-mesh.dev/run/v1"

// NewID returns a fresh run id: a random UUID.
func NewID() string { return uuid.NewString() }

// Marshal encodes a run for storage: indented JSON with the proto field names.
func Marshal(r *Run) ([]byte, error) {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}.Marshal(r)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Unmarshal decodes a stored run strictly: unknown fields, another format or no id are
// errors, so a foreign or damaged file is never shown as a run.
func Unmarshal(b []byte) (*Run, error) {
	r := &Run{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("not a kubectl-mesh run: %w", err)
	}
	switch {
	case r.GetFormat() == "":
		return nil, errors.New("not a kubectl-mesh run: no \"format\" field")
	case r.GetFormat() != Format:
		return nil, fmt.Errorf("run format %q is not %q (written by another version of kubectl-mesh?)", r.GetFormat(), Format)
	case r.GetId() == "":
		return nil, errors.New("damaged run: no id")
	}
	if _, err := uuid.Parse(r.GetId()); err != nil {
		return nil, fmt.Errorf("damaged run: id %q: %v", r.GetId(), err)
	}
	return r, nil
}

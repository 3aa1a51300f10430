package loadgen

import "github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"

// ValidateSpec checks a load as an agent would before running it, so that a client can
// refuse a bad load before sending it anywhere.
func ValidateSpec(spec *agentapi.LoadSpec) error {
	_, err := FromSpec(spec, "127.0.0.1:1")
	return err
}

// Package manifests holds the mesh agent's Kubernetes objects and renders them for one install:
// the YAML is embedded in the plugin so that installing needs nothing but the binary.
package manifests

import _ "embed"

//go:embed agent.yaml
var agentYAML []byte

// Names shared by the manifests, the plugin and the tests; the YAML must agree with them
// (render_test.go checks it does).
const (
	DefaultNamespace = "mesh-system"
	// AgentName names the DaemonSet, ServiceAccount, ClusterRole and ClusterRoleBinding.
	AgentName     = "mesh-agent"
	ContainerName = "agent"
	FieldManager  = "kubectl-mesh"
	GRPCPort      = 9460

	LabelName      = "app.kubernetes.io/name"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelPartOf    = "app.kubernetes.io/part-of"

	// ManagedBySelector matches every object the plugin created, whatever its kind.
	ManagedBySelector = LabelManagedBy + "=kubectl-mesh"
	// AgentPodSelector matches the agent pods.
	AgentPodSelector = LabelName + "=" + AgentName

	DefaultImageRepository = "ghcr.io/kubectl-mesh/mesh-agent"
)

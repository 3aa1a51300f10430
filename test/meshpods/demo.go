package meshpods

import (
	"context"
	"fmt"
	"io"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// The demo's mesh, as `make demo` and the end-to-end tests set it up.
const (
	DemoNamespace    = "demo"
	DemoName         = "web"
	DemoIstioVersion = "1.24.2"
)

// DeployDemo meshes two of the cluster's three nodes: an Istio-shaped control plane (on the
// last kwok node, where kwok plays its pod), and the Deployment DemoName in DemoNamespace
// with one pod on the real node (real containers) and one on the first kwok node (stand-in
// processes). The last kwok node runs no sidecar. The cluster needs a real node and at
// least two kwok nodes.
func DeployDemo(ctx context.Context, c *simcluster.Cluster, log io.Writer) (*Workload, error) {
	kwok := c.KwokNodeNames()
	if c.RealNodeName() == "" || len(kwok) < 2 {
		return nil, fmt.Errorf("meshpods: the demo needs a real node and two kwok nodes, the cluster has %d kwok nodes", len(kwok))
	}
	if err := DeployIstioControlPlane(ctx, c, kwok[len(kwok)-1], DemoIstioVersion); err != nil {
		return nil, err
	}
	return Deploy(ctx, c, Options{Namespace: DemoNamespace, Name: DemoName, KwokNodes: kwok[:1], Log: log})
}

package meshdetect

import (
	smp "github.com/layer5io/service-mesh-performance/spec"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
)

var smpTypes = map[discovery.Mesh]smp.ServiceMesh_Type{
	discovery.MeshIstio:   smp.ServiceMesh_ISTIO,
	discovery.MeshLinkerd: smp.ServiceMesh_LINKERD,
	discovery.MeshKuma:    smp.ServiceMesh_KUMA,
	discovery.MeshConsul:  smp.ServiceMesh_CONSUL,
	discovery.MeshOSM:     smp.ServiceMesh_OPEN_SERVICE_MESH,
	discovery.MeshNGINX:   smp.ServiceMesh_NGINX_SERVICE_MESH,
	MeshCilium:            smp.ServiceMesh_CILIUM_SERVICE_MESH,
	MeshTraefik:           smp.ServiceMesh_TRAEFIK_MESH,
}

// SMPType is the SMP spec's mesh type for a mesh id; INVALID_MESH for one the spec does not
// name.
func SMPType(mesh discovery.Mesh) smp.ServiceMesh_Type {
	if t, ok := smpTypes[mesh]; ok {
		return t
	}
	return smp.ServiceMesh_INVALID_MESH
}

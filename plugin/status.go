package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/meshdetect"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// MeshStatusOptions holds `status`'s flags.
type MeshStatusOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Output string
	reach  agentReach
}

func NewCmdStatus(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &MeshStatusOptions{configFlags: flags, IOStreams: streams, reach: defaultReach(flags)}
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "Show which service meshes run in the cluster: control plane, version and data plane",
		Long: `Status finds the service meshes installed in the cluster from their control-plane workloads,
their API groups (CRDs) and their sidecar-injection webhooks: Istio, Linkerd, Consul, Kuma,
OSM, Cilium, Traefik Mesh and NGINX Service Mesh. For each it shows the namespace, the
version, every control-plane pod with its component, version and readiness, and the data
plane: meshed pods and sidecars per namespace.

It needs no agent. What RBAC does not let it read is named in a warning; when no mesh is
found it says so and exits 1.`,
		Example: fmt.Sprintf(`  %[1]s status
  %[1]s status -o yaml`, displayName),
		Args: cobra.NoArgs,
		RunE: runE(o),
	}
	addOutputFlag(cmd, &o.Output, []string{outputJSON, outputYAML}, "Output format.")
	return cmd
}

func (o *MeshStatusOptions) Complete(*cobra.Command, []string) error { return nil }

func (o *MeshStatusOptions) Validate() error {
	if o.Output != "" {
		return validateChoice("output", o.Output, []string{outputJSON, outputYAML})
	}
	return nil
}

func (o *MeshStatusOptions) Run(ctx context.Context) error {
	c, err := o.reach.newCluster()
	if err != nil {
		return err
	}
	if err := c.ping(); err != nil {
		return err
	}
	rep, err := meshdetect.Detect(ctx, c.clientset, meshdetect.Options{})
	if err != nil {
		return fmt.Errorf("detecting meshes: %w", err)
	}
	if o.Output != "" {
		err = writeData(o.Out, o.Output, rep)
	} else {
		err = writeMeshStatus(o.Out, rep)
	}
	if err != nil {
		return err
	}
	for _, w := range rep.Warnings {
		fmt.Fprintf(o.ErrOut, "warning: %s\n", w)
	}
	if len(rep.Meshes) == 0 {
		return fmt.Errorf("no service mesh detected: no known control plane, mesh API group, injection webhook or sidecar found%s", partly(rep))
	}
	return nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func partly(rep *meshdetect.Report) string {
	if len(rep.Warnings) > 0 {
		return " (some objects could not be read; see the warnings)"
	}
	return ""
}

func writeMeshStatus(w io.Writer, rep *meshdetect.Report) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "MESH\tNAMESPACE\tVERSION\tCONTROL PLANE\tDATA PLANE")
	for _, m := range rep.Meshes {
		ready := 0
		for _, p := range m.ControlPlane {
			if p.ReadyContainers == p.Containers && p.Containers > 0 {
				ready++
			}
		}
		sidecars, meshed := 0, 0
		for _, d := range m.DataPlane {
			sidecars += d.Sidecars
			meshed += d.MeshedPods
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d pods ready\t%d meshed pods, %d sidecars in %s\n",
			m.DisplayName, dash(m.Namespace), dash(m.Version), ready, len(m.ControlPlane), meshed, sidecars, plural(len(m.DataPlane), "namespace"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, m := range rep.Meshes {
		fmt.Fprintf(w, "\n%s %s\n", m.DisplayName, m.Version)
		if len(m.ControlPlane) > 0 {
			fmt.Fprintln(w, "  Control plane:")
			tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "    POD\tCOMPONENT\tVERSION\tREADY\tSTATUS\tRESTARTS\tNODE")
			for _, p := range m.ControlPlane {
				fmt.Fprintf(tw, "    %s/%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.Namespace, p.Name, p.Component, dash(p.Version), p.Ready(), p.Phase, p.Restarts, dash(p.Node))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		if len(m.DataPlane) > 0 {
			fmt.Fprintln(w, "  Data plane:")
			tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "    NAMESPACE\tMESHED PODS\tSIDECARS\tREADY\tPROXY VERSIONS")
			for _, d := range m.DataPlane {
				fmt.Fprintf(tw, "    %s\t%d\t%d\t%d\t%s\n", d.Namespace, d.MeshedPods, d.Sidecars, d.ReadySidecars, dash(strings.Join(d.ProxyVersions, ",")))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		var ev []string
		if n := len(m.Evidence.Resources); n > 0 {
			ev = append(ev, fmt.Sprintf("%d CRDs (%s)", n, strings.Join(m.Evidence.APIGroups, ", ")))
		}
		if len(m.Evidence.Webhooks) > 0 {
			ev = append(ev, "webhooks "+strings.Join(m.Evidence.Webhooks, ", "))
		}
		if len(ev) > 0 {
			fmt.Fprintf(w, "  Found by: %s\n", strings.Join(ev, "; "))
		}
		for _, n := range m.Notes {
			fmt.Fprintf(w, "  Note: %s\n", n)
		}
	}
	return nil
}

// detectMesh names the mesh of the target's sidecars, with the version and namespace its
// control plane shows. A mesh whose control plane is not found is still named, with a
// warning, since the sidecars are what is measured.
func detectMesh(ctx context.Context, c *cluster, name discovery.Mesh, warn io.Writer) *perfrun.Mesh {
	out := &perfrun.Mesh{Name: string(name)}
	rep, err := meshdetect.Detect(ctx, c.clientset, meshdetect.Options{})
	if err != nil {
		fmt.Fprintf(warn, "warning: detecting the mesh's control plane: %v\n", err)
		return out
	}
	m, err := rep.Find(name)
	if err != nil {
		fmt.Fprintf(warn, "warning: the target's sidecars are %s's, but %v; the run records no mesh version\n", name, err)
		return out
	}
	out.Version, out.Namespace = m.Version, m.Namespace
	return out
}

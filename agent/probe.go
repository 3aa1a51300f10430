package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// newProbeCommand is the DaemonSet's exec liveness and readiness probe: distroless images
// have no grpc_health_probe, and an exec probe reaches the loopback-only port.
func newProbeCommand() *cobra.Command {
	var (
		addr    string
		service string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Check a running agent's gRPC health; exit 0 when it is SERVING",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			st, err := checkHealth(ctx, addr, service)
			if err != nil {
				return err
			}
			if st != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("agent at %s is %s", addr, st)
			}
			fmt.Fprintln(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:9460", "agent gRPC address")
	cmd.Flags().StringVar(&service, "service", "", "service to check; empty means the whole server")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "give up after this long")
	return cmd
}

func checkHealth(ctx context.Context, addr, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return 0, fmt.Errorf("health check %s: %w", addr, err)
	}
	return resp.GetStatus(), nil
}

// Command kubectl-mesh is the kubectl plugin of kubectl-mesh. kubectl runs it as `kubectl mesh`
// when the binary is on PATH; it also works on its own as `kubectl-mesh`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	// Cloud auth plugins (OIDC, Azure, GCP exec) that kubeconfigs may name.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

func main() {
	// kubectl passes every argument through; no library may register flags behind our back.
	pflag.CommandLine = pflag.NewFlagSet("kubectl-mesh", pflag.ExitOnError)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	stop()
	os.Exit(code)
}

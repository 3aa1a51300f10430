#!/usr/bin/env bash
# The main job on the embedded default: a simulated cluster (a real node running real
# containers, plus two kwok nodes whose agents are real local processes), the agent installed
# with `kubectl mesh agent install`, and `kubectl mesh agent status` for every node.
set -euo pipefail
cd "$(dirname "$0")/.."
sim="go run ./test/simcluster/cmd/simcluster"

echo "==> starting the simulated cluster (1 real node, 2 kwok nodes)" >&2
kubeconfig=$($sim start --kwok-nodes 2)
export KUBECONFIG=$kubeconfig
export PATH="$PWD/bin:$PATH"   # kubectl finds kubectl-mesh here, as it would from krew
kubectl get nodes -o wide

echo "==> kubectl mesh agent install" >&2
kubectl mesh agent install --image ghcr.io/kubectl-mesh/mesh-agent:dev --timeout 3m

echo "==> kubectl mesh agent status" >&2
kubectl mesh agent status

cat >&2 <<MSG

The cluster is still running. Try:
  export KUBECONFIG=$kubeconfig PATH=$PWD/bin:\$PATH
  kubectl mesh version
  kubectl mesh agent status -o yaml
Stop it with: make demo-stop
MSG

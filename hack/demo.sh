#!/usr/bin/env bash
# The main job on the embedded default: a simulated cluster of three nodes (a real node
# running real containers, and two kwok nodes whose agents are real local processes), two of
# them meshed by an Istio-shaped control plane and a meshed Deployment (real pods on the real
# node, network-namespace pods on a kwok node), the agent installed, and then what an admin
# runs: mesh status, sidecar overhead per node, and a load run with its HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
sim="go run ./test/simcluster/cmd/simcluster"
out=.cache/demo
mkdir -p "$out"

echo "==> starting the simulated cluster (1 real node, 2 kwok nodes, meshed demo workload)" >&2
kubeconfig=$($sim start --kwok-nodes 2 --mesh-demo)
export KUBECONFIG=$kubeconfig
export PATH="$PWD/bin:$PATH"   # kubectl finds kubectl-mesh here, as it would from krew
kubectl get nodes -o wide
kubectl get pods -A -o wide

echo "==> kubectl mesh agent install" >&2
kubectl mesh agent install --image ghcr.io/kubectl-mesh/mesh-agent:dev --timeout 3m

echo "==> kubectl mesh agent status" >&2
kubectl mesh agent status

echo "==> kubectl mesh status" >&2
kubectl mesh status

echo "==> kubectl mesh overhead" >&2
kubectl mesh overhead
kubectl mesh overhead --pods -A

echo "==> kubectl mesh perf run deploy/web -n demo --rate 500 --duration 10s" >&2
kubectl mesh perf run deploy/web -n demo --rate 500 --duration 10s --out "$out/smp"
kubectl mesh perf export latest --format html > "$out/report.html"

cat >&2 <<MSG

HTML report: $PWD/$out/report.html
SMP documents: $PWD/$out/smp

The cluster is still running. Try:
  export KUBECONFIG=$kubeconfig PATH=$PWD/bin:\$PATH
  kubectl mesh perf list
  kubectl mesh perf show latest -o smp-yaml
  kubectl mesh perf run deploy/web -n demo --rate 200 --duration 20s --fail-if 'added_p99>2ms'
Stop it with: make demo-stop
MSG

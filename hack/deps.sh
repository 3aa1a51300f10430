#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, test and demo kubectl-mesh: the
# simulated cluster's Debian packages and the Kubernetes, kwok and protoc-plugin binaries
# built from source into the cache. Idempotent and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium renders the HTML report in its tests; wrk is the load generator's peer in
# make bench.
packages=(etcd-server containerd runc containernetworking-plugins iptables iproute2 nginx clang llvm libbpf-dev protobuf-compiler chromium wrk)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing Debian packages (${missing[*]}); run as root or: sudo apt-get install ${missing[*]}" >&2
		exit 1
	fi
	echo "deps: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The simulated cluster builds (and caches) the Kubernetes components, kwok, the pause and
# agent images on first use; doing it here keeps that cost out of the first test's time.
go run ./test/simcluster/cmd/simcluster build

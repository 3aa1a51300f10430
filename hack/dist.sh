#!/usr/bin/env bash
# Builds the release archives krew/mesh.yaml names: kubectl-mesh, its completion shim and
# the LICENSE for each os/arch, with their sha256 sums.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: dist.sh VERSION}
ldflags="-X github.com/kubectl-mesh/kubectl-mesh/pkg/version.Version=$version"
rm -rf dist && mkdir -p dist
for platform in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64; do
	os=${platform%/*} arch=${platform#*/}
	stage=$(mktemp -d)
	bin=kubectl-mesh
	[ "$os" = windows ] && bin=kubectl-mesh.exe
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -ldflags "$ldflags" -o "$stage/$bin" ./plugin
	cp LICENSE plugin/kubectl_complete-mesh "$stage/"
	name=kubectl-mesh_${version}_${os}_${arch}
	if [ "$os" = windows ]; then
		(cd "$stage" && zip -q "$OLDPWD/dist/$name.zip" ./*)
	else
		tar -C "$stage" -czf "dist/$name.tar.gz" .
	fi
	rm -rf "$stage"
done
(cd dist && sha256sum ./* > SHA256SUMS)
ls -l dist

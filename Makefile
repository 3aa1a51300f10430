# kubectl-mesh: the kubectl plugin and the per-node mesh-agent.
GO      ?= go
# Releases set VERSION=vX.Y.Z; otherwise the source's own version, which the simulated
# cluster's agent image also carries, so the demo shows no version skew.
VERSION ?= $(shell sed -n 's/^var Version = "\(.*\)"/\1/p' pkg/version/version.go)
PKG     := github.com/kubectl-mesh/kubectl-mesh
LDFLAGS := -X $(PKG)/pkg/version.Version=$(VERSION)
IMAGE   ?= ghcr.io/kubectl-mesh/mesh-agent:$(VERSION)
SIM     := $(GO) run ./test/simcluster/cmd/simcluster

.PHONY: all build deps generate test bench demo demo-stop image dist clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/kubectl-mesh ./plugin
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/mesh-agent ./agent
	cp plugin/kubectl_complete-mesh bin/

# Debian packages and the simulated cluster's binaries (needs root on a fresh machine).
deps:
	hack/deps.sh

# Regenerates the committed gRPC and eBPF code (needs protoc and clang; `make deps` has them).
generate:
	$(GO) build -o .cache/bin/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	$(GO) generate ./pkg/agentapi/ ./agent/...

# Everything, including the eBPF, network-namespace and simulated-cluster tests: run as root.
test: deps
	$(GO) vet ./...
	# One package at a time: the ground-truth tests time microseconds and must not share
	# the two cores with a simulated cluster starting next door.
	$(GO) test -p 1 -count=1 -timeout 45m ./...

# Measurement programs: print figures, assert nothing about speed. The load generator is
# compared with fortio (built into the cache; later releases need a module the proxy refuses)
# and Debian's wrk (make deps installs it).
bench: deps
	test -x .cache/bin/fortio || GOBIN=$(CURDIR)/.cache/bin $(GO) install fortio.org/fortio@v1.66.5
	$(GO) test -run '^$$' -bench . ./pkg/agents ./plugin
	$(GO) run ./test/bench
	$(GO) run ./test/loadbench
	$(GO) run ./test/agentbench

# The simulated cluster with the agent installed, and its status for every node.
demo: deps build
	hack/demo.sh

demo-stop:
	$(SIM) stop

image:
	docker build -f agent/Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# Release archives, as krew/mesh.yaml names them.
dist:
	hack/dist.sh $(VERSION)

clean:
	rm -rf bin dist

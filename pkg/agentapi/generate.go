// Package agentapi holds the gRPC API between the plugin and the mesh-agent.
package agentapi

//go:generate protoc --plugin=protoc-gen-go=../../.cache/bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../../.cache/bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative agent.proto

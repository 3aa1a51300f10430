// Package echopb holds a unary gRPC echo service used as a load target, and its server.
package echopb

//go:generate protoc --plugin=protoc-gen-go=../../../.cache/bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../.cache/bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative echo.proto

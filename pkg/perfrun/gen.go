package perfrun

//go:generate protoc -I . -I ../agentapi --plugin=protoc-gen-go=../../.cache/bin/protoc-gen-go --go_out=. --go_opt=paths=source_relative run.proto

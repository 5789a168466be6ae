module storagecp.dev/storctl

go 1.26.8

require (
	golang.org/x/sys v0.48.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
	storagecp.dev/gen v0.0.0
	storagecp.dev/platform v0.0.0
)

require (
	github.com/spiffe/go-spiffe/v2 v2.9.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260928230214-8a89bd6388cc // indirect
)

replace (
	storagecp.dev/gen => ../../gen
	storagecp.dev/platform => ../platform
)

module storagecp.dev/integration

go 1.26.8

require (
	github.com/google/uuid v1.6.0
	github.com/jackc/pgx/v5 v5.12.0
	go.opentelemetry.io/proto/otlp v1.11.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
	storagecp.dev/deploy v0.0.0
	storagecp.dev/gen v0.0.0
	storagecp.dev/platform v0.0.0
	storagecp.dev/storctl v0.0.0
	storagecp.dev/testsupport v0.0.0
)

require (
	github.com/grpc-ecosystem/grpc-gateway/v2 v2.30.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/spiffe/go-spiffe/v2 v2.9.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20260928230214-8a89bd6388cc // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260928230214-8a89bd6388cc // indirect
)

replace (
	storagecp.dev/deploy => ../deploy
	storagecp.dev/gen => ../gen
	storagecp.dev/platform => ../services/platform
	storagecp.dev/storctl => ../services/storctl
	storagecp.dev/testsupport => ../testsupport
)

// Command volume-service serves storage.volume.v1.VolumeService: volumes,
// the target registry and reference counts.
package main

import (
	"context"

	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/server"
	volumeserver "storagecp.dev/volume/internal/server"
	"storagecp.dev/volume/migrations"
)

func main() { server.Main(service()) }

// service is the binary's definition: its flags, with main's caller
// and the example configuration's test.
func service() server.Service {
	return server.Service{
		Name:        "volume-service",
		DefaultAddr: "127.0.0.1:7101",
		EnvPrefix:   "STORAGECP_VOLUME",
		Migrations:  migrations.FS,
		Register: func(ctx context.Context, env *server.Env) error {
			volumev1.RegisterVolumeServiceServer(env.Server, volumeserver.New(env.Pool, env.Logger))
			return nil
		},
	}
}

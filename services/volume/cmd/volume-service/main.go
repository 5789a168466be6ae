// Command volume-service serves storage.volume.v1.VolumeService: volumes,
// the target registry and reference counts.
package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/grpcclient"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/server"
	volumeserver "storagecp.dev/volume/internal/server"
	"storagecp.dev/volume/migrations"
)

func main() { server.Main(service()) }

// service is the binary's definition: its flags, with main's caller
// and the example configuration's test.
func service() server.Service {
	var (
		allocatorAddr    *string
		redundancyPeriod *time.Duration
	)
	return server.Service{
		Name:        "volume-service",
		DefaultAddr: "127.0.0.1:7101",
		EnvPrefix:   "STORAGECP_VOLUME",
		Migrations:  migrations.FS,
		Flags: func(fs *flag.FlagSet) {
			allocatorAddr = fs.String("allocator-addr", "127.0.0.1:7102",
				"region-allocator address: disk states for volume redundancy (ListPhysicalDisks only); empty: no redundancy")
			redundancyPeriod = fs.Duration("redundancy-period", 15*time.Second,
				"how often the storagecp.volume.redundancy gauge is recomputed (reads every live volume); a survey that takes longer than a twentieth of it spaces the next to twenty times its length")
		},
		Register: func(ctx context.Context, env *server.Env) error {
			var disks *volumeserver.Disks
			if *allocatorAddr != "" {
				// Not WaitForReady: redundancy is a view, and a view
				// that cannot read the allocator says so at once.
				conn, err := grpcclient.Dial(*allocatorAddr, env.Transport.DialOption(mtls.RegionAllocator))
				if err != nil {
					return fmt.Errorf("dial region-allocator: %w", err)
				}
				go func() { <-ctx.Done(); _ = conn.Close() }()
				disks = volumeserver.NewDisks(allocatorv1.NewRegionAllocatorServiceClient(conn), volumeserver.DiskTTL)
			}
			s := volumeserver.New(env.Pool, env.Logger, disks)
			volumev1.RegisterVolumeServiceServer(env.Server, s)
			if disks != nil && *redundancyPeriod > 0 {
				go func() {
					if err := s.RunRedundancyMetric(ctx, *redundancyPeriod); err != nil {
						env.Logger.Error("redundancy metric", "err", err)
					}
				}()
			}
			return nil
		},
	}
}

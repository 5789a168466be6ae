// Command region-allocator serves storage.allocator.v1: inventory,
// expungement, region placement and the simulated Crucible agents.
//
// It links the simulation (storagecp.dev/allocator/sim/simagent) because it
// is the only agent implementation there is; `make prod-deps-check` names
// this as its one exception.
package main

import (
	"context"

	allocatorserver "storagecp.dev/allocator/internal/server"
	"storagecp.dev/allocator/migrations"
	"storagecp.dev/allocator/sim/simagent"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/server"
)

func main() {
	server.Main(server.Service{
		Name:        "region-allocator",
		DefaultAddr: "127.0.0.1:7102",
		EnvPrefix:   "STORAGECP_ALLOCATOR",
		Migrations:  migrations.FS,
		Register: func(ctx context.Context, env *server.Env) error {
			faults := &simagent.Faults{}
			agents := simagent.NewSim(env.Pool, faults)
			s := allocatorserver.New(env.Pool, env.Logger, agents, faults, agents)
			allocatorv1.RegisterRegionAllocatorServiceServer(env.Server, s)
			if env.Dev {
				allocatorv1.RegisterAgentFaultServiceServer(env.Server, s.Faults())
				allocatorv1.RegisterAgentDataServiceServer(env.Server, s.Data())
			}
			return nil
		},
	})
}

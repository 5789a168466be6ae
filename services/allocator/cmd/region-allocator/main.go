// Command region-allocator serves storage.allocator.v1: inventory,
// expungement and region placement, creating and destroying regions
// through the Crucible agents it reaches at --agent-addr
// (storage.agent.v1; sim-agent in development).
package main

import (
	"context"
	"errors"
	"flag"

	"storagecp.dev/allocator/internal/agentclient"
	"storagecp.dev/allocator/internal/agentfault"
	allocatorserver "storagecp.dev/allocator/internal/server"
	"storagecp.dev/allocator/migrations"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/server"
)

func main() { server.Main(service()) }

// service is the binary's definition: its flags, with main's caller
// and the example configuration's test.
func service() server.Service {
	var agentAddr *string
	return server.Service{
		Name:        "region-allocator",
		DefaultAddr: "127.0.0.1:7102",
		EnvPrefix:   "STORAGECP_ALLOCATOR",
		Migrations:  migrations.FS,
		Flags: func(fs *flag.FlagSet) {
			agentAddr = fs.String("agent-addr", "", "host:port of the Crucible agents' endpoint, storage.agent.v1")
		},
		Register: func(_ context.Context, env *server.Env) error {
			if *agentAddr == "" {
				return errors.New("no agents: set --agent-addr (agent-addr in the --config file, or STORAGECP_ALLOCATOR_AGENT_ADDR)")
			}
			conn, err := agentclient.Dial(*agentAddr, env.Transport)
			if err != nil {
				return err
			}
			// conn lives as long as the process: in-flight calls drain
			// through it after ctx is cancelled.
			agents := agentclient.New(conn)
			if !env.Dev {
				allocatorv1.RegisterRegionAllocatorServiceServer(env.Server, allocatorserver.New(env.Pool, env.Logger, agents))
				return nil
			}
			s := allocatorserver.NewDev(env.Pool, env.Logger, agents, allocatorserver.Dev{
				Faults: &agentfault.Faults{},
				Data:   allocatorv1.NewAgentDataServiceClient(conn),
			})
			allocatorv1.RegisterRegionAllocatorServiceServer(env.Server, s)
			allocatorv1.RegisterAgentFaultServiceServer(env.Server, s.Faults())
			allocatorv1.RegisterAgentDataServiceServer(env.Server, s.Data())
			return nil
		},
	}
}

// Command sim-agent simulates the Crucible agents of every dataset: it
// serves storage.agent.v1.AgentService, which the region-allocator calls
// (its --agent-addr), and the data path sim-upstairs drives through the
// allocator (storage.allocator.v1.AgentDataService).
//
// The simulated agents keep their state in the allocator's database (the
// allocator's migrations create their tables; whichever of the two starts
// first applies them) and read its inventory there: an agent is gone
// exactly when the allocator has expunged its disk or sled.
package main

import (
	"context"

	"storagecp.dev/allocator/migrations"
	"storagecp.dev/allocator/sim/agentserver"
	"storagecp.dev/allocator/sim/simagent"
	"storagecp.dev/platform/server"
)

func main() {
	server.Main(server.Service{
		Name:        "sim-agent",
		DefaultAddr: "127.0.0.1:7105",
		EnvPrefix:   "STORAGECP_SIM_AGENT",
		Migrations:  migrations.FS,
		Register: func(_ context.Context, env *server.Env) error {
			agentserver.Register(env.Server, simagent.NewSim(env.Pool), env.Logger)
			return nil
		},
	})
}

// Command sim-upstairs stands in for a Propolis or Pantry Upstairs: it holds
// activated volumes, answers ReplaceVolume as Crucible does, reports repairs
// to the notifier, probes its targets' data path through the allocator and
// checks what they serve (the data-loss and content oracles), and takes
// test writes.
package main

import (
	"context"
	"flag"
	"time"

	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	"storagecp.dev/notifier/sim/internal/simupstairs"
	"storagecp.dev/platform/server"
)

func main() {
	var notifierAddr, allocatorAddr *string
	var repairDelay, probeInterval *time.Duration
	server.Main(server.Service{
		Name:        "sim-upstairs",
		DefaultAddr: "127.0.0.1:7110",
		EnvPrefix:   "STORAGECP_SIM_UPSTAIRS",
		Flags: func(fs *flag.FlagSet) {
			notifierAddr = fs.String("notifier-addr", "127.0.0.1:7103", "upstairs-notifier address (repair reports)")
			allocatorAddr = fs.String("allocator-addr", "127.0.0.1:7102", "region-allocator address (data-path probes, writes and repairs; empty: no data path)")
			repairDelay = fs.Duration("repair-delay", simupstairs.DefaultRepairDelay, "how long a simulated live repair or reconciliation takes")
			probeInterval = fs.Duration("probe-interval", simupstairs.DefaultProbeInterval, "data-path probe period (0 disables probing)")
		},
		Register: func(ctx context.Context, env *server.Env) error {
			s, err := simupstairs.New(env.Logger, env.Transport, *notifierAddr, *allocatorAddr,
				simupstairs.WithRepairDelay(*repairDelay), simupstairs.WithProbeInterval(*probeInterval))
			if err != nil {
				return err
			}
			go s.Run(ctx)
			upstairsv1.RegisterUpstairsServiceServer(env.Server, s)
			if env.Dev {
				upstairsv1.RegisterUpstairsFaultServiceServer(env.Server, s.Faults())
			}
			return nil
		},
	})
}

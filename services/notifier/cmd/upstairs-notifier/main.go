// Command upstairs-notifier serves storage.notifier.v1: the only door to
// running Upstairs.
package main

import (
	"context"
	"flag"
	"time"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	notifierserver "storagecp.dev/notifier/internal/server"
	"storagecp.dev/notifier/migrations"
	"storagecp.dev/platform/server"
)

func main() { server.Main(service()) }

// service is the binary's definition: its flags, with main's caller
// and the example configuration's test.
func service() server.Service {
	var volumeAddr *string
	var upstairsTimeout *time.Duration
	return server.Service{
		Name:        "upstairs-notifier",
		DefaultAddr: "127.0.0.1:7103",
		EnvPrefix:   "STORAGECP_NOTIFIER",
		Migrations:  migrations.FS,
		Flags: func(fs *flag.FlagSet) {
			volumeAddr = fs.String("volume-addr", "127.0.0.1:7101", "volume-service address")
			upstairsTimeout = fs.Duration("upstairs-timeout", notifierserver.DefaultUpstairsCallTimeout,
				"bound on each call to an Upstairs (activate, deactivate, replace); an Upstairs that does not answer in time counts as unreachable")
		},
		Register: func(ctx context.Context, env *server.Env) error {
			s, err := notifierserver.New(env.Pool, env.Logger, *volumeAddr, env.Transport, notifierserver.WithUpstairsCallTimeout(*upstairsTimeout))
			if err != nil {
				return err
			}
			notifierv1.RegisterUpstairsNotifierServiceServer(env.Server, s)
			return nil
		},
	}
}

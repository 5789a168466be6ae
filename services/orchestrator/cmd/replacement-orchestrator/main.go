// Command replacement-orchestrator is the saga execution coordinator: it
// holds the volume repair locks, the replacement records and the saga log,
// and (as leader) runs sagas and background tasks.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/internal/app"
	"storagecp.dev/orchestrator/internal/background/tasks"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	orchestratorserver "storagecp.dev/orchestrator/internal/server"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/server"
)

func main() { server.Main(service()) }

// service is the binary's definition: its flags, with main's caller
// and the example configuration's test.
func service() server.Service {
	var cfg app.Config
	return server.Service{
		Name:        "replacement-orchestrator",
		DefaultAddr: "127.0.0.1:7104",
		EnvPrefix:   "STORAGECP_ORCHESTRATOR",
		Migrations:  migrations.FS,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfg.VolumeAddr, "volume-addr", "127.0.0.1:7101", "volume-service address")
			fs.StringVar(&cfg.AllocatorAddr, "allocator-addr", "127.0.0.1:7102", "region-allocator address")
			fs.StringVar(&cfg.NotifierAddr, "notifier-addr", "127.0.0.1:7103", "upstairs-notifier address")
			fs.StringVar(&cfg.SECID, "sec-id", "", "this process's id as lease holder and saga owner (default: random per start)")
			fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", 6*time.Second, "leader lease duration")
			fs.DurationVar(&cfg.TaskPeriod, "task-period", 30*time.Second, "background tasks' safety-net period")
			fs.IntVar(&cfg.MaxSagasPerTask, "max-sagas-per-task", 64, "sagas each background task keeps in flight")
			fs.IntVar(&cfg.StepBatch, "step-batch", 256,
				"steps of a read-only replacement swapped by one ro-replacement-step-batch saga when their volume has no Upstairs attached (at most 1000; 0: one saga per step, the way back)")
			fs.DurationVar(&cfg.Retry.Initial, "retry-backoff-initial", tasks.DefaultRetryInitial,
				"wait before retrying a request or step whose saga unwound once; doubles with each further failed attempt")
			fs.DurationVar(&cfg.Retry.Max, "retry-backoff-max", tasks.DefaultRetryMax, "longest wait before retrying a request or step whose saga unwound")
			fs.IntVar(&cfg.RWBounds.MaxDriveAttempts, "rw-max-drive-attempts", tasks.DefaultMaxDriveAttempts,
				"repair starts (live-repair notifications or Pantry reconciliations) after which a rw replacement that never finished ends needs_operator")
			fs.DurationVar(&cfg.RWBounds.StallTimeout, "rw-stall-timeout", tasks.DefaultStallTimeout,
				"time without a drive attempt or a repair report after which a rw replacement ends needs_operator")
			fs.IntVar(&cfg.ActionRetry.MaxAttempts, "saga-action-attempts", saga.DefaultActionRetry().MaxAttempts,
				"runs of a saga action that fails with a retryable error (UNAVAILABLE, a broken connection…) before its node fails and the saga unwinds")
			fs.DurationVar(&cfg.ActionRetry.MaxElapsed, "saga-action-retry-window", saga.DefaultActionRetry().MaxElapsed,
				"no new run of a failing saga action starts once this long has passed since its first run")
			fs.DurationVar(&cfg.UnwindGrace, "unwind-grace", saga.DefaultUnwindGrace,
				"how long an operator's abandon (AbandonSaga) lets a saga's actions in flight finish before cancelling them")
			fs.StringVar(&cfg.DBMonitor, "db-monitor", "",
				"pg_auto_failover monitor's connection string, when the database is a formation: AdminService/GetDatabaseFormation adds every node as the monitor sees it")
			fs.IntVar(&cfg.Budgets.RackRebuilds, "budget-rack-rebuilds", tasks.DefaultBudgets.RackRebuilds,
				"region clones plus live repairs in flight rack-wide (0: unlimited; AdminService/SetRebuildBudgets overrides at runtime)")
			fs.IntVar(&cfg.Budgets.SourceSledRebuilds, "budget-source-sled-rebuilds", tasks.DefaultBudgets.SourceSledRebuilds,
				"rebuilds reading from one sled (0: unlimited)")
			fs.IntVar(&cfg.Budgets.DestSledRebuilds, "budget-dest-sled-rebuilds", tasks.DefaultBudgets.DestSledRebuilds,
				"rebuilds writing a new region to one sled (0: unlimited)")
			fs.IntVar(&cfg.Budgets.RackSteps, "budget-rack-steps", tasks.DefaultBudgets.RackSteps,
				"read-only replacement steps in flight rack-wide (0: unlimited)")
			fs.Func("pantry-addrs", "comma-separated Pantry-like Upstairs hosts used to reconcile volumes with no consumer", func(v string) error {
				for _, a := range strings.Split(v, ",") {
					if a = strings.TrimSpace(a); a != "" {
						cfg.PantryEndpoints = append(cfg.PantryEndpoints, a)
					}
				}
				return nil
			})
		},
		Register: func(ctx context.Context, env *server.Env) error {
			// The crash and failure hooks (saga.CrashEnv, saga.FailEnv)
			// end or fail sagas on purpose: read here, once, and only in
			// development mode; the saga engine never reads them itself.
			for _, h := range []struct {
				name string
				dst  *string
			}{{saga.CrashEnv, &cfg.CrashAt}, {saga.FailEnv, &cfg.FailAt}} {
				if v := os.Getenv(h.name); v != "" {
					if !env.Dev {
						env.Logger.Warn("ignoring "+h.name+": crash and failure hooks need --dev", "value", v)
						continue
					}
					*h.dst = v
					env.Logger.Warn("saga fault hook on", h.name, v)
				}
			}
			// Sabotage hooks are test hooks: read once, at start, and
			// honoured only in development mode, so a production process
			// with the variable set by mistake runs clean (and says so).
			if v := os.Getenv(sagadef.SabotageEnv); v != "" {
				if !env.Dev {
					env.Logger.Warn("ignoring "+sagadef.SabotageEnv+": sabotage hooks need --dev", "value", v)
				} else {
					sab, err := sagadef.ParseSabotage(v)
					if err != nil {
						return err
					}
					cfg.Sabotage = sab
					env.Logger.Warn("sabotage hooks on: replacements are deliberately wrong", "sabotage", sab.String())
				}
			}
			for name, v := range map[string]int{"budget-rack-rebuilds": cfg.Budgets.RackRebuilds,
				"budget-source-sled-rebuilds": cfg.Budgets.SourceSledRebuilds, "budget-dest-sled-rebuilds": cfg.Budgets.DestSledRebuilds,
				"budget-rack-steps": cfg.Budgets.RackSteps} {
				if v < 0 {
					return fmt.Errorf("--%s: must be 0 (unlimited) or more, got %d", name, v)
				}
			}
			cfg.Transport = env.Transport
			a, err := app.New(env.Pool, env.Logger, cfg)
			if err != nil {
				return err
			}
			s := orchestratorserver.New(a)
			orchestratorv1.RegisterLifecycleServiceServer(env.Server, s.Lifecycle())
			orchestratorv1.RegisterReplacementServiceServer(env.Server, s.Replacement())
			orchestratorv1.RegisterAdminServiceServer(env.Server, s.Admin())
			go a.Run(ctx)
			return nil
		},
	}
}

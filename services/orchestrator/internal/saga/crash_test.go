package saga_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
)

// Environment of the re-executed test binary that runs a saga and crashes.
const (
	helperEnv       = "SAGA_CRASH_HELPER"
	helperDSNEnv    = "SAGA_CRASH_DSN"
	helperKeyEnv    = "SAGA_CRASH_KEY"
	helperFailAtEnv = "SAGA_CRASH_FAIL_AT"
	crashSEC        = "crash-sec"
)

// crashHelperMain runs one sample saga under saga.CrashEnv. It returns 0 if
// the saga finished (the crash point never fired), 1 on setup errors; the
// crash itself exits with 137 from inside the engine.
func crashHelperMain() int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, err := db.Open(ctx, os.Getenv(helperDSNEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	app := newSampleApp()
	reg, err := saga.NewRegistry(app.sample, app.stash, app.outer)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sec := saga.NewSEC(pool, crashSEC, reg, pool, nil)
	h := &saga.Hooks{}
	if n := os.Getenv(helperFailAtEnv); n != "" {
		h.InjectError(n)
	}
	o, err := sec.Run(ctx, app.sample, sampleParams{Key: os.Getenv(helperKeyEnv)}, saga.WithHooks(h))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "saga finished without crashing:", o.Kind)
	return 0
}

// TestProcessCrashRecovery kills a real process at each crash point of
// each node (os.Exit(137) from the engine, as SIGKILL would) and recovers
// the saga in a fresh SEC: it must finish, forward or unwound, with every
// action run at least once and the effects consistent.
func TestProcessCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	type crashCase struct {
		node, point, failAt string
	}
	var cases []crashCase
	for _, n := range []string{"create_a", "create_b", "finish"} {
		cases = append(cases, crashCase{n, saga.CrashAfterStarted, ""}, crashCase{n, saga.CrashAfterAction, ""})
	}
	for _, n := range []string{"create_a", "create_c"} {
		cases = append(cases, crashCase{n, saga.CrashAfterUndo, "finish"})
	}

	dsn := pgtest.NewDSN(t, "orchestrator")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool, err := db.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := createEffects(ctx, pool); err != nil {
		t.Fatal(err)
	}
	app := newSampleApp()
	f := &fixture{pool: pool, reg: app.registry(t), app: app}

	for i, c := range cases {
		name := fmt.Sprintf("%s/%s", c.node, c.point)
		if c.failAt != "" {
			name += "/fail_at_" + c.failAt
		}
		t.Run(name, func(t *testing.T) {
			key := fmt.Sprintf("crash-%d", i)
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(),
				helperEnv+"=1", helperDSNEnv+"="+dsn, helperKeyEnv+"="+key, helperFailAtEnv+"="+c.failAt,
				saga.CrashEnv+"=sample/"+c.node+"/"+c.point)
			out, err := cmd.CombinedOutput()
			var exitErr *exec.ExitError
			crashed := errors.As(err, &exitErr) && exitErr.ExitCode() == 137
			if !crashed {
				t.Fatalf("helper did not crash: %v\n%s", err, out)
			}
			sec := f.sec(t, crashSEC)
			rep, err := sec.Recover(ctx)
			if err != nil || len(rep.Failed) > 0 || len(rep.Abandoned) > 0 {
				t.Fatalf("recover: %+v, %v", rep, err)
			}
			var id = findSaga(t, f, key)
			o := wait(t, sec, id)
			runs := f.runs(t, key)
			effects := f.effects(t, key)
			if c.failAt == "" {
				if o.Kind != saga.Succeeded {
					t.Fatalf("outcome %v", o.Error())
				}
				if !slices.Equal(effects, []string{"a", "b", "c"}) {
					t.Fatalf("effects %v", effects)
				}
				for _, n := range []string{"create_a", "create_b", "create_c", "finish"} {
					if runs[n+"/do"] < 1 {
						t.Fatalf("%s never ran: %v", n, runs)
					}
				}
				if c.point == saga.CrashAfterAction && runs[c.node+"/do"] != 2 {
					t.Fatalf("crashed after the action of %s: ran %d times, want 2 (re-run on recovery)", c.node, runs[c.node+"/do"])
				}
			} else {
				if o.Kind != saga.Failed || o.FailedNode != c.failAt {
					t.Fatalf("outcome %v at %s: %v", o.Kind, o.FailedNode, o.Error())
				}
				if len(effects) != 0 {
					t.Fatalf("effects left after unwinding: %v", effects)
				}
				if c.point == saga.CrashAfterUndo && runs[c.node+"/undo"] != 2 {
					t.Fatalf("crashed after the undo of %s: undo ran %d times, want 2", c.node, runs[c.node+"/undo"])
				}
			}
			if n := sec.InFlight(); n != 0 {
				t.Fatalf("%d sagas still in flight", n)
			}
		})
	}
}

func findSaga(t testing.TB, f *fixture, key string) uuid.UUID {
	t.Helper()
	var id uuid.UUID
	err := f.pool.QueryRow(context.Background(), `SELECT id FROM saga WHERE dag->'params'->>'key' = $1`, key).Scan(&id)
	if err != nil {
		t.Fatalf("find saga %s: %v", key, err)
	}
	return id
}

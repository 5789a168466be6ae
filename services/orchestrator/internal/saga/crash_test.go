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
	helperTmplEnv   = "SAGA_CRASH_TEMPLATE"
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
	// The engine reads no environment: the helper passes the crash point
	// as the orchestrator's main does in development mode.
	sec := saga.NewSEC(pool, crashSEC, reg, pool, nil, saga.WithCrashAt(os.Getenv(saga.CrashEnv)))
	h := &saga.Hooks{}
	if n := os.Getenv(helperFailAtEnv); n != "" {
		h.InjectError(n)
	}
	tmpl := app.sample
	if os.Getenv(helperTmplEnv) == "outer" {
		tmpl = app.outer
	}
	o, err := sec.Run(ctx, tmpl, sampleParams{Key: os.Getenv(helperKeyEnv)}, saga.WithHooks(h))
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
		template            string // default sample
		// eitherWay: the crash may land before or after the injected
		// failure is recorded; without it, recovery (which runs without
		// hooks) legitimately succeeds.
		eitherWay bool
	}
	var cases []crashCase
	for _, n := range []string{"create_a", "create_b", "finish"} {
		cases = append(cases, crashCase{node: n, point: saga.CrashAfterStarted}, crashCase{node: n, point: saga.CrashAfterAction})
	}
	for _, n := range []string{"create_a", "create_c"} {
		cases = append(cases, crashCase{node: n, point: saga.CrashAfterUndo, failAt: "finish"})
	}
	// A sibling in flight when the other fails: re-run in either direction.
	cases = append(cases, crashCase{node: "create_c", point: saga.CrashAfterAction, failAt: "create_b", eitherWay: true})
	// Inside a spliced subsaga.
	for _, p := range []string{saga.CrashAfterStarted, saga.CrashAfterAction} {
		cases = append(cases, crashCase{node: "delete_stash.soft_delete", point: p, template: "outer"})
	}
	cases = append(cases, crashCase{node: "delete_stash.soft_delete", point: saga.CrashAfterUndo, failAt: "after", template: "outer"})

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
		if c.template == "" {
			c.template = "sample"
		}
		name := fmt.Sprintf("%s/%s/%s", c.template, c.node, c.point)
		if c.failAt != "" {
			name += "/fail_at_" + c.failAt
		}
		t.Run(name, func(t *testing.T) {
			key := fmt.Sprintf("crash-%d", i)
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(),
				helperEnv+"=1", helperDSNEnv+"="+dsn, helperKeyEnv+"="+key, helperFailAtEnv+"="+c.failAt,
				helperTmplEnv+"="+c.template, saga.CrashEnv+"="+c.template+"/"+c.node+"/"+c.point)
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
			allDone := []string{"a", "b", "c"}
			actionNodes := []string{"create_a", "create_b", "create_c", "finish"}
			if c.template == "outer" {
				allDone = []string{"first"}
				actionNodes = []string{"first", "delete_stash.soft_delete"}
				effects = append(effects, f.effects(t, key+"-stash")...)
				runs = f.runs(t, key)
				for k, v := range f.runs(t, key+"-stash") {
					runs[k] = v
				}
			}
			if c.template == "outer" && o.Kind == saga.Succeeded {
				allDone = []string{"first", "soft"}
			}
			switch {
			case o.Kind == saga.Succeeded && (c.failAt == "" || c.eitherWay):
				if !slices.Equal(effects, allDone) {
					t.Fatalf("effects %v, want %v", effects, allDone)
				}
				for _, n := range actionNodes {
					if runs[n+"/do"] < 1 {
						t.Fatalf("%s never ran: %v", n, runs)
					}
				}
				if c.point == saga.CrashAfterAction && runs[c.node+"/do"] != 2 {
					t.Fatalf("crashed after the action of %s: ran %d times, want 2 (re-run on recovery)", c.node, runs[c.node+"/do"])
				}
			case o.Kind == saga.Failed && c.failAt != "":
				if o.FailedNode != c.failAt {
					t.Fatalf("failed at %s, want %s: %v", o.FailedNode, c.failAt, o.Error())
				}
				if len(effects) != 0 {
					t.Fatalf("effects left after unwinding: %v", effects)
				}
				if c.point == saga.CrashAfterUndo && runs[c.node+"/undo"] != 2 {
					t.Fatalf("crashed after the undo of %s: undo ran %d times, want 2", c.node, runs[c.node+"/undo"])
				}
				if c.eitherWay && runs[c.node+"/do"] >= 1 && runs[c.node+"/undo"] != 1 {
					t.Fatalf("%s ran but was not undone once: %v", c.node, runs)
				}
			default:
				t.Fatalf("outcome %v: %v (fail at %q)", o.Kind, o.Error(), c.failAt)
			}
			t.Logf("outcome %v, runs %v", o.Kind, runs)
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

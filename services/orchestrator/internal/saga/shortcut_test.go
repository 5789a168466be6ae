package saga_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/platform/pgtest"
)

type shortcutParams struct {
	Skip bool `json:"skip"`
}

// shortcutApp is a saga of three nodes: a Local id node, a node whose
// Shortcut says it has nothing to do when the parameters say Skip, and a
// last node that reports the id it saw (and can be held by a gate).
type shortcutApp struct {
	tmpl    *saga.Template
	effects atomic.Int32 // runs of maybe's effect
	gate    *gate
	mu      sync.Mutex
	seen    []uuid.UUID // ids the last node saw, one per run
}

func newShortcutApp() *shortcutApp {
	app := &shortcutApp{}
	t := saga.NewTemplate("shortcut")
	id := t.Action("id", func(context.Context, *saga.ActionContext) (any, error) { return uuid.New(), nil }, nil).Local()
	maybe := t.Action("maybe", func(context.Context, *saga.ActionContext) (any, error) {
		app.effects.Add(1)
		return "done", nil
	}, nil).Shortcut(func(ac *saga.ActionContext) (any, bool, error) {
		p, err := saga.Params[shortcutParams](ac)
		return "nothing to do", err == nil && p.Skip, err
	})
	last := t.Action("last", func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		v, err := saga.Lookup[uuid.UUID](ac, "id")
		if err != nil {
			return nil, err
		}
		app.mu.Lock()
		app.seen = append(app.seen, v)
		g := app.gate
		app.mu.Unlock()
		if g != nil {
			if err := g.wait(ctx); err != nil {
				return nil, err
			}
		}
		return saga.Lookup[string](ac, "maybe")
	}, nil)
	saga.SetBuild(t, func(b *saga.Builder, _ shortcutParams) error {
		b.Append(id.Node())
		b.Append(maybe.Node())
		b.Append(last.Node())
		return nil
	})
	app.tmpl = t
	return app
}

func (app *shortcutApp) sec(t *testing.T, name string) *saga.SEC {
	t.Helper()
	reg, err := saga.NewRegistry(app.tmpl)
	if err != nil {
		t.Fatal(err)
	}
	sec := saga.NewSEC(pgtest.NewPool(t, "orchestrator"), name, reg, nil, testLogger(t))
	t.Cleanup(func() { _ = sec.Shutdown(context.Background()) })
	return sec
}

// A shortcut node commits with what follows it: with both shortcuts
// taken, the saga is one write at creation (through last's `started`) and
// one at the end, and maybe's effect never runs. Every node is still in
// the log as succeeded, with the shortcut's output.
func TestShortcutNodesShareTheNextCommit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		skip        bool
		hooks       *saga.Hooks
		wantWrites  int64
		wantEffects int32
		wantOutput  string
	}{
		{skip: true, wantWrites: 2, wantEffects: 0, wantOutput: `"nothing to do"`},
		{skip: false, wantWrites: 3, wantEffects: 1, wantOutput: `"done"`},
		// A test hook on the saga runs every node as a task (the three
		// saga tests aim at each node's action): one write per node, and
		// the action still takes its own shortcut.
		{skip: true, hooks: &saga.Hooks{}, wantWrites: 4, wantEffects: 0, wantOutput: `"nothing to do"`},
	} {
		app := newShortcutApp()
		sec := app.sec(t, "sec-1")
		var opts []saga.CreateOption
		if tc.hooks != nil {
			opts = append(opts, saga.WithHooks(tc.hooks))
		}
		o, err := sec.Run(ctx, app.tmpl, shortcutParams{Skip: tc.skip}, opts...)
		if err != nil || o.Kind != saga.Succeeded {
			t.Fatalf("skip=%v hooks=%v: %v %v", tc.skip, tc.hooks != nil, err, o.Error())
		}
		if string(o.Output) != tc.wantOutput {
			t.Errorf("skip=%v hooks=%v: output %s, want %s", tc.skip, tc.hooks != nil, o.Output, tc.wantOutput)
		}
		if n := app.effects.Load(); n != tc.wantEffects {
			t.Errorf("skip=%v hooks=%v: maybe's effect ran %d times, want %d", tc.skip, tc.hooks != nil, n, tc.wantEffects)
		}
		if st := sec.Stats(); st.Writes != tc.wantWrites {
			t.Errorf("skip=%v hooks=%v: %d log writes, want %d", tc.skip, tc.hooks != nil, st.Writes, tc.wantWrites)
		}
		v, err := sec.Get(ctx, o.SagaID)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range v.Nodes {
			if n.Status != "succeeded" {
				t.Errorf("skip=%v: node %s is %s", tc.skip, n.Name, n.Status)
			}
		}
	}
}

// A Local node's output is durable before anything that used it runs: a
// saga shut down while its last node runs recovers with the same id.
func TestLocalNodeOutputSurvivesRecovery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := newShortcutApp()
	app.gate = newGate()
	reg, err := saga.NewRegistry(app.tmpl)
	if err != nil {
		t.Fatal(err)
	}
	pool := pgtest.NewPool(t, "orchestrator")
	sec := saga.NewSEC(pool, "sec-1", reg, nil, testLogger(t))
	id, err := sec.Create(ctx, app.tmpl, shortcutParams{Skip: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { app.mu.Lock(); defer app.mu.Unlock(); return len(app.seen) == 1 })
	if err := sec.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	app.gate.open()
	sec2 := saga.NewSEC(pool, "sec-1", reg, nil, testLogger(t))
	t.Cleanup(func() { _ = sec2.Shutdown(context.Background()) })
	if _, err := sec2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if o := wait(t, sec2, id); o.Kind != saga.Succeeded {
		t.Fatal(o.Error())
	}
	app.mu.Lock()
	defer app.mu.Unlock()
	if len(app.seen) != 2 || app.seen[0] != app.seen[1] {
		t.Fatalf("ids seen by the two runs of last: %v", app.seen)
	}
}

package saga_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/orchestrator/internal/saga"
)

// sampleParams are the parameters of the sample sagas.
type sampleParams struct {
	Key string `json:"key"`
	// Wide adds a parallel stage of that many extra nodes (shape depends
	// on parameters).
	Wide int `json:"wide,omitempty"`
}

type itemOut struct {
	Item string `json:"item"`
}

type finishOut struct {
	Items []string `json:"items"`
}

// sampleApp defines the sample templates. Actions write rows to `effects`
// (idempotently) and count their runs in `runs`; undos delete their row.
type sampleApp struct {
	sample, stash, outer *saga.Template

	mu      sync.Mutex
	gates   map[string]*gate // node → gate the action waits on
	undoLog []string         // undo order
	// undoFaults: node → the error its undo's n-th call (from 1) returns
	// instead of running (nil: it runs)
	undoFaults map[string]func(n int) error
	undoCalls  map[string]int
}

func newSampleApp() *sampleApp {
	app := &sampleApp{gates: map[string]*gate{}, undoFaults: map[string]func(int) error{}, undoCalls: map[string]int{}}
	app.define()
	return app
}

func (app *sampleApp) registry(t testing.TB) *saga.Registry {
	r, err := saga.NewRegistry(app.sample, app.stash, app.outer)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (app *sampleApp) gateFor(node string) *gate {
	app.mu.Lock()
	defer app.mu.Unlock()
	return app.gates[node]
}

func (app *sampleApp) setGate(node string, g *gate) {
	app.mu.Lock()
	defer app.mu.Unlock()
	app.gates[node] = g
}

// setUndoFault makes node's undo call fault(n) on its n-th call and fail
// with what it returns, if not nil.
func (app *sampleApp) setUndoFault(node string, fault func(n int) error) {
	app.mu.Lock()
	defer app.mu.Unlock()
	app.undoFaults[node] = fault
}

// undoFault is the fault of this call of node's undo, if any.
func (app *sampleApp) undoFault(node string) error {
	app.mu.Lock()
	defer app.mu.Unlock()
	app.undoCalls[node]++
	if f := app.undoFaults[node]; f != nil {
		return f(app.undoCalls[node])
	}
	return nil
}

func (app *sampleApp) undos() []string {
	app.mu.Lock()
	defer app.mu.Unlock()
	return append([]string(nil), app.undoLog...)
}

func countRun(ctx context.Context, pool *pgxpool.Pool, key, node, kind string) error {
	_, err := pool.Exec(ctx, `INSERT INTO runs (key, node, kind) VALUES ($1, $2, $3)
		ON CONFLICT (key, node, kind) DO UPDATE SET n = runs.n + 1`, key, node, kind)
	return err
}

// insertItem is an idempotent forward action creating (key, item).
func (app *sampleApp) insertItem(item string) saga.ActionFunc {
	return func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		pool := ac.Deps().(*pgxpool.Pool)
		p, err := saga.Params[sampleParams](ac)
		if err != nil {
			return nil, err
		}
		if g := app.gateFor(ac.NodeName()); g != nil {
			if err := g.wait(ctx); err != nil {
				return nil, err
			}
		}
		if err := countRun(ctx, pool, p.Key, ac.NodeName(), "do"); err != nil {
			return nil, err
		}
		_, err = pool.Exec(ctx, `INSERT INTO effects (key, item) VALUES ($1, $2) ON CONFLICT DO NOTHING`, p.Key, item)
		return itemOut{Item: item}, err
	}
}

// deleteItem is the idempotent undo of insertItem; it reads its own
// output, or when the action failed with its outcome unknown works out the
// item as the action does: planned, or "" for the node's name.
func (app *sampleApp) deleteItem(planned string) saga.UndoFunc {
	return func(ctx context.Context, ac *saga.ActionContext) error {
		pool := ac.Deps().(*pgxpool.Pool)
		p, err := saga.Params[sampleParams](ac)
		if err != nil {
			return err
		}
		var out itemOut
		if ac.OutcomeUnknown() {
			out.Item = planned
			if planned == "" {
				out.Item = ac.NodeName()
			}
		} else if err := ac.Output(&out); err != nil {
			return err
		}
		if err := app.undoFault(ac.NodeName()); err != nil {
			return err
		}
		app.mu.Lock()
		app.undoLog = append(app.undoLog, ac.NodeName())
		app.mu.Unlock()
		if err := countRun(ctx, pool, p.Key, ac.NodeName(), "undo"); err != nil {
			return err
		}
		_, err = pool.Exec(ctx, `DELETE FROM effects WHERE key = $1 AND item = $2`, p.Key, out.Item)
		return err
	}
}

func (app *sampleApp) define() {
	// sample: a → [b, c, wide...] → finish
	s := saga.NewTemplate("sample")
	a := s.Action("create_a", app.insertItem("a"), app.deleteItem("a"))
	b := s.Action("create_b", app.insertItem("b"), app.deleteItem("b"))
	c := s.Action("create_c", app.insertItem("c"), app.deleteItem("c"))
	w := s.Action("create_w", wideItem(app), app.deleteItem(""))
	finish := s.Action("finish", func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		p, err := saga.Params[sampleParams](ac)
		if err != nil {
			return nil, err
		}
		if err := countRun(ctx, ac.Deps().(*pgxpool.Pool), p.Key, ac.NodeName(), "do"); err != nil {
			return nil, err
		}
		var out finishOut
		for _, n := range []string{"create_a", "create_b", "create_c"} {
			it, err := saga.Lookup[itemOut](ac, n)
			if err != nil {
				return nil, err
			}
			out.Items = append(out.Items, it.Item)
		}
		return out, nil
	}, nil)
	saga.SetBuild(s, func(bld *saga.Builder, p sampleParams) error {
		bld.Append(a.Node())
		bld.AppendParallel(b.Node(), c.Node())
		if p.Wide > 0 {
			var nodes []saga.Node
			for i := range p.Wide {
				nodes = append(nodes, saga.ActionNode(fmt.Sprintf("w%d", i), w))
			}
			bld.AppendParallel(nodes...)
		}
		bld.Append(finish.Node())
		return nil
	})
	app.sample = s

	// stash: soft_delete → hard_delete, used as a subsaga.
	st := saga.NewTemplate("stash")
	soft := st.Action("soft_delete", app.insertItem("soft"), app.deleteItem("soft"))
	hard := st.Action("hard_delete", func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		prev, err := saga.Lookup[itemOut](ac, "soft_delete")
		if err != nil {
			return nil, err
		}
		return itemOut{Item: "hard after " + prev.Item}, nil
	}, nil)
	saga.SetBuild(st, func(bld *saga.Builder, p sampleParams) error {
		bld.Append(soft.Node())
		bld.Append(hard.Node())
		return nil
	})
	app.stash = st

	// outer: first → stash_params → delete_stash (subsaga) → after
	o := saga.NewTemplate("outer")
	first := o.Action("first", app.insertItem("first"), app.deleteItem("first"))
	after := o.Action("after", func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		sub, err := saga.Lookup[itemOut](ac, "delete_stash")
		if err != nil {
			return nil, err
		}
		return itemOut{Item: "after: " + sub.Item}, nil
	}, nil)
	saga.SetBuild(o, func(bld *saga.Builder, p sampleParams) error {
		bld.Append(first.Node())
		bld.Append(saga.ConstantNode("stash_params", sampleParams{Key: p.Key + "-stash"}))
		bld.Append(saga.SubsagaNode("delete_stash", st, "stash_params", sampleParams{Key: p.Key + "-stash"}))
		bld.Append(after.Node())
		return nil
	})
	app.outer = o
}

// wideItem is the action of the wide nodes: each inserts an item named like
// its node.
func wideItem(app *sampleApp) saga.ActionFunc {
	return func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		return app.insertItem(ac.NodeName())(ctx, ac)
	}
}

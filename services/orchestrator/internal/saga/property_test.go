package saga_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"pgregory.net/rapid"

	"storagecp.dev/orchestrator/internal/saga"
)

// propShape is the parameter of the property-test saga: its DAG shape.
type propShape struct {
	// Stages lists, per stage, the kinds of its nodes: "a" action, "c"
	// constant, "s" subsaga (preceded automatically by its params constant).
	Stages [][]string `json:"stages"`
}

// propRecorder keeps, per saga, the order in which actions and undos
// finished (sequence numbers across the whole saga).
type propRecorder struct {
	mu   sync.Mutex
	seq  int
	done map[uuid.UUID]map[string]int // "do:node" / "undo:node" → seq
}

func (r *propRecorder) record(id uuid.UUID, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	if r.done[id] == nil {
		r.done[id] = map[string]int{}
	}
	if _, dup := r.done[id][what]; dup {
		r.done[id][what+"#again"] = r.seq
	}
	r.done[id][what] = r.seq
}

func (r *propRecorder) get(id uuid.UUID) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.done[id] {
		out[k] = v
	}
	return out
}

func propTemplates(rec *propRecorder) (outer, inner *saga.Template) {
	do := func(_ context.Context, ac *saga.ActionContext) (any, error) {
		rec.record(ac.SagaID(), "do:"+ac.NodeName())
		return ac.NodeName(), nil
	}
	undo := func(_ context.Context, ac *saga.ActionContext) error {
		var self string
		if err := ac.Output(&self); err != nil || self != ac.NodeName() {
			return fmt.Errorf("undo of %s read its output %q: %v", ac.NodeName(), self, err)
		}
		rec.record(ac.SagaID(), "undo:"+ac.NodeName())
		return nil
	}
	inner = saga.NewTemplate("prop_inner")
	ia := inner.Action("act", do, undo)
	saga.SetBuild(inner, func(b *saga.Builder, _ string) error {
		b.AppendParallel(saga.ActionNode("x", ia), saga.ActionNode("y", ia))
		b.Append(saga.ActionNode("z", ia))
		return nil
	})
	outer = saga.NewTemplate("prop")
	oa := outer.Action("act", do, undo)
	saga.SetBuild(outer, func(b *saga.Builder, p propShape) error {
		for i, stage := range p.Stages {
			var nodes []saga.Node
			for j, kind := range stage {
				name := fmt.Sprintf("n%d_%d", i, j)
				switch kind {
				case "a":
					nodes = append(nodes, saga.ActionNode(name, oa))
				case "c":
					nodes = append(nodes, saga.ConstantNode(name, name))
				case "s":
					b.Append(saga.ConstantNode(name+"_params", name))
					nodes = append(nodes, saga.SubsagaNode(name, inner, name+"_params", name))
				}
			}
			b.AppendParallel(nodes...)
		}
		return nil
	})
	return outer, inner
}

// TestPropertyRandomDAGs runs random DAG shapes with an error injected at
// a random node (or none, or also an undo error) and checks the unwinding rules
// on the recorded order: forward, every action after its parents; on
// failure, exactly the actions that ran are undone, each after all of its
// descendants' undos, and nothing else.
func TestPropertyRandomDAGs(t *testing.T) {
	f := newFixture(t)
	rec := &propRecorder{done: map[uuid.UUID]map[string]int{}}
	outer, inner := propTemplates(rec)
	sec := saga.NewSEC(f.pool, "sec-prop", mustRegistry(t, outer, inner), nil, testLogger(t))
	defer sec.Shutdown(context.Background())
	rapid.Check(t, func(rt *rapid.T) {
		var shape propShape
		nStages := rapid.IntRange(1, 5).Draw(rt, "stages")
		for i := range nStages {
			width := rapid.IntRange(1, 3).Draw(rt, fmt.Sprintf("width%d", i))
			if i == nStages-1 {
				width = 1
			}
			stage := make([]string, width)
			for j := range stage {
				stage[j] = rapid.SampledFrom([]string{"a", "a", "a", "c", "s"}).Draw(rt, fmt.Sprintf("kind%d_%d", i, j))
			}
			shape.Stages = append(shape.Stages, stage)
		}
		d, err := outer.BuildDAG(shape)
		if err != nil {
			rt.Fatalf("build: %v", err)
		}
		actions := d.ActionNodes()
		h := &saga.Hooks{}
		failAt, undoFailAt := "", ""
		if len(actions) > 0 && rapid.Bool().Draw(rt, "fail") {
			failAt = rapid.SampledFrom(actions).Draw(rt, "failAt")
			h.InjectError(failAt)
			if rapid.IntRange(0, 4).Draw(rt, "undoFail") == 0 {
				undoFailAt = rapid.SampledFrom(actions).Draw(rt, "undoFailAt")
				h.InjectUndoError(undoFailAt)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		o, err := sec.Run(ctx, outer, shape, saga.WithHooks(h))
		if err != nil {
			rt.Fatalf("run: %v", err)
		}
		got := rec.get(o.SagaID)
		for k := range got {
			if len(k) > 6 && k[len(k)-6:] == "#again" {
				rt.Fatalf("%s ran twice: %v", k, got)
			}
		}
		// Parents/children over action nodes only (through internal ones).
		idx := map[string]int{}
		for i, n := range d.Nodes {
			idx[n.Name] = i
		}
		anc := make([]map[int]bool, len(d.Nodes))
		for i, n := range d.Nodes {
			anc[i] = map[int]bool{}
			for _, p := range n.Parents {
				anc[i][p] = true
				for a := range anc[p] {
					anc[i][a] = true
				}
			}
		}
		isAnc := func(a, b string) bool { return anc[idx[b]][idx[a]] }

		switch {
		case failAt == "":
			if o.Kind != saga.Succeeded {
				rt.Fatalf("no failure injected: %v", o.Error())
			}
			for _, a := range actions {
				if got["do:"+a] == 0 {
					rt.Fatalf("%s never ran", a)
				}
				if got["undo:"+a] != 0 {
					rt.Fatalf("%s undone in a successful saga", a)
				}
				for _, b := range actions {
					if isAnc(a, b) && got["do:"+a] > got["do:"+b] {
						rt.Fatalf("%s ran before its ancestor %s", b, a)
					}
				}
			}
		case o.Kind == saga.Stuck:
			if undoFailAt == "" || o.UndoNode != undoFailAt || o.FailedNode != failAt {
				rt.Fatalf("stuck %+v, injected failure %s undo failure %s", o, failAt, undoFailAt)
			}
		default:
			if o.Kind != saga.Failed || o.FailedNode != failAt {
				rt.Fatalf("outcome %v at %s, injected at %s", o.Kind, o.FailedNode, failAt)
			}
			if undoFailAt != "" && got["do:"+undoFailAt] != 0 {
				rt.Fatalf("undo error injected at %s, which ran, yet the saga is not stuck", undoFailAt)
			}
			for _, a := range actions {
				ran, undone := got["do:"+a] != 0, got["undo:"+a] != 0
				if ran != undone {
					rt.Fatalf("%s: ran %v undone %v (%v)", a, ran, undone, got)
				}
				if a == failAt && ran {
					rt.Fatalf("the failing node's action ran")
				}
				if isAnc(failAt, a) && ran {
					rt.Fatalf("%s ran although its ancestor %s failed", a, failAt)
				}
				for _, b := range actions {
					if isAnc(a, b) && got["undo:"+b] != 0 && got["undo:"+a] < got["undo:"+b] {
						rt.Fatalf("%s undone before its descendant %s", a, b)
					}
				}
			}
		}
	})
}

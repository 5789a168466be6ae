package saga_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
)

// kindOf is a view's outcome kind, or 0 while it has none.
func kindOf(v saga.SagaView) saga.OutcomeKind {
	if v.Outcome == nil {
		return 0
	}
	return v.Outcome.Kind
}

// List shows every finished saga's outcome (not only Get): succeeded,
// unwound, stuck, and none for running and abandoned ones, the same kind
// Get replays from the log.
func TestListShowsEachOutcome(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func(key string, h *saga.Hooks) uuid.UUID {
		t.Helper()
		o, err := sec.Run(ctx, f.app.sample, sampleParams{Key: key, Wide: 1}, saga.WithHooks(h))
		if err != nil {
			t.Fatal(err)
		}
		return o.SagaID
	}
	want := map[uuid.UUID]saga.OutcomeKind{
		run("ok", &saga.Hooks{}):                                                        saga.Succeeded,
		run("failed", (&saga.Hooks{}).InjectError("finish")):                            saga.Failed,
		run("stuck", (&saga.Hooks{}).InjectError("finish").InjectUndoError("create_b")): saga.Stuck,
	}
	g := newGate()
	defer g.open()
	f.app.setGate("create_a", g)
	running, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "running"})
	if err != nil {
		t.Fatal(err)
	}
	abandoned, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "abandoned"})
	if err != nil {
		t.Fatal(err)
	}
	if err := sec.Abandon(ctx, abandoned, saga.AbandonOperator, "test"); err != nil {
		t.Fatal(err)
	}
	want[running], want[abandoned] = 0, 0

	list, err := sec.List(ctx, saga.ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(want) {
		t.Fatalf("listed %d sagas, want %d", len(list), len(want))
	}
	for _, v := range list {
		full, err := sec.Get(ctx, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if kindOf(v) != want[v.ID] || kindOf(full) != want[v.ID] {
			t.Errorf("saga %s (%s): List says %v, Get says %v, want %v", v.ID, v.State, kindOf(v), kindOf(full), want[v.ID])
		}
	}
	done, err := sec.List(ctx, saga.ListFilter{States: []string{"done"}})
	if err != nil || len(done) != 3 {
		t.Fatalf("done sagas: %d, %v", len(done), err)
	}

	// A finished saga whose log no longer replays still shows the kind
	// its row and end node say, in Get as in List.
	var ok uuid.UUID
	for id, k := range want {
		if k == saga.Succeeded {
			ok = id
		}
	}
	if _, err := f.pool.Exec(ctx, `INSERT INTO saga_node_event (saga_id, node_id, event_type, creator)
		VALUES ($1, 0, 'undo_finished', 'test')`, ok); err != nil {
		t.Fatal(err)
	}
	if v, err := sec.Get(ctx, ok); err != nil || kindOf(v) != saga.Succeeded {
		t.Fatalf("Get of a saga whose log does not replay: %v, %v", kindOf(v), err)
	}
}

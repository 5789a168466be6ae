package saga_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga/sagalog"
	"storagecp.dev/platform/pgtest"
)

// TestAppendManyOwnership: a group write commits the sagas the writer
// still owns and nothing of the others; state changes go with them.
func TestAppendManyOwnership(t *testing.T) {
	pool := pgtest.NewPool(t, "orchestrator")
	st := sagalog.New(pool)
	ctx := context.Background()
	mine, adopted, other := uuid.New(), uuid.New(), uuid.New()
	for _, c := range []struct {
		id  uuid.UUID
		sec string
	}{{mine, "a"}, {adopted, "a"}, {other, "b"}} {
		if err := st.CreateSaga(ctx, c.id, "x", c.sec, sagalog.StateRunning, []byte(`{}`), nil, nil, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	// adopted moves to c (generation 2) but "a" still thinks it has it.
	if _, err := pool.Exec(ctx, `UPDATE saga SET current_sec = 'c', adopt_generation = 2 WHERE id = $1`, adopted); err != nil {
		t.Fatal(err)
	}
	ev := []sagalog.Event{{NodeID: 0, Type: "started"}, {NodeID: 0, Type: "succeeded", Data: []byte(`{"x":1}`)}}
	owned, err := st.AppendMany(ctx, "a", []sagalog.AppendRequest{
		{ID: mine, Generation: 1, Events: ev, NewState: sagalog.StateUnwinding},
		{ID: adopted, Generation: 1, Events: ev, NewState: sagalog.StateDone},
		{ID: other, Generation: 1, Events: ev},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !owned[mine] || owned[adopted] || owned[other] || len(owned) != 1 {
		t.Fatalf("owned %v", owned)
	}
	for id, want := range map[uuid.UUID]int{mine: 2, adopted: 0, other: 0} {
		evs, err := st.Events(ctx, id)
		if err != nil || len(evs) != want {
			t.Fatalf("saga %s: %d events, want %d (%v)", id, len(evs), want, err)
		}
	}
	for id, want := range map[uuid.UUID]string{mine: "unwinding", adopted: "running", other: "running"} {
		row, err := st.Get(ctx, id)
		if err != nil || row.State != want {
			t.Fatalf("saga %s: state %s, want %s (%v)", id, row.State, want, err)
		}
	}
	// Idempotent: the same group again changes nothing and still reports
	// ownership.
	owned, err = st.AppendMany(ctx, "a", []sagalog.AppendRequest{{ID: mine, Generation: 1, Events: ev}})
	if err != nil || !owned[mine] {
		t.Fatalf("retry: %v %v", owned, err)
	}
	// A group mixing a written event with new ones (a retry that also
	// carries what came since) writes the new ones, for every saga in it.
	mine2 := uuid.New()
	if err := st.CreateSaga(ctx, mine2, "x", "a", sagalog.StateRunning, []byte(`{}`), nil, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	owned, err = st.AppendMany(ctx, "a", []sagalog.AppendRequest{
		{ID: mine, Generation: 1, Events: []sagalog.Event{ev[1], {NodeID: 1, Type: "started"}}},
		{ID: mine2, Generation: 1, Events: ev},
	})
	if err != nil || !owned[mine] || !owned[mine2] {
		t.Fatalf("mixed retry: %v %v", owned, err)
	}
	for id, want := range map[uuid.UUID]int{mine: 3, mine2: 2} {
		if evs, err := st.Events(ctx, id); err != nil || len(evs) != want {
			t.Fatalf("saga %s: %d events after the mixed retry, want %d (%v)", id, len(evs), want, err)
		}
	}
	if n, err := st.Reassign(ctx, "a", "d"); err != nil || n != 2 {
		t.Fatalf("reassign: %d %v", n, err)
	}
}

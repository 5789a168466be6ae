package store_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/store"
)

// A request whose saga recovery abandoned (its log could not be read) goes
// back to where its task retries it, with the abandonment as a failed
// attempt; a request held by a live saga is left alone.
func TestReconcileOrphansPutsBackRecordsOfAbandonedSagas(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	pool := s.Pool()
	orphan, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	held, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	dead, live := uuid.New(), uuid.New()
	for _, sg := range []struct {
		id    uuid.UUID
		state string
	}{{dead, "abandoned"}, {live, "running"}} {
		var reason, comment *string
		if sg.state == "abandoned" {
			r, c := "unrecoverable", "log not understood"
			reason, comment = &r, &c
		}
		_, err := pool.Exec(ctx, `INSERT INTO saga (id, name, creator, dag, saga_state, current_sec, abandon_time, abandon_reason, abandon_comment)
			VALUES ($1, 'ro-replacement-start', 'test', '{}', $2, 'sec', CASE WHEN $3::text IS NULL THEN NULL ELSE now() END, $3, $4)`, sg.id, sg.state, reason, comment)
		must(t, err)
	}
	must(t, s.SetROAllocating(ctx, orphan.ID, dead))
	must(t, s.SetROAllocating(ctx, held.ID, live))

	got, err := s.ReconcileOrphans(ctx)
	must(t, err)
	if len(got) != 1 || got[0].ID != orphan.ID || got[0].From != "allocating" || got[0].To != "requested" {
		t.Fatalf("reconciled %+v, want only the orphan, allocating → requested", got)
	}
	r, err := s.GetROReplacement(ctx, orphan.ID)
	must(t, err)
	if r.State != store.RORequested || r.OperatingSagaID != nil || r.Attempts.Attempts != 1 {
		t.Fatalf("orphan: %s, saga %v, %d attempts", r.State, r.OperatingSagaID, r.Attempts.Attempts)
	}
	r, err = s.GetROReplacement(ctx, held.ID)
	must(t, err)
	if r.State != store.ROAllocating || r.OperatingSagaID == nil || *r.OperatingSagaID != live {
		t.Fatalf("the live saga's request was touched: %s, saga %v", r.State, r.OperatingSagaID)
	}
	if again, err := s.ReconcileOrphans(ctx); err != nil || len(again) != 0 {
		t.Fatalf("second pass: %+v, %v", again, err)
	}
}

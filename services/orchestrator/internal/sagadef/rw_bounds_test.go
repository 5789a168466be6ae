package sagadef_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/background/tasks"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

// A rw replacement whose repair can never even start — its volume has no
// running Upstairs and no Pantry is configured to reconcile on — ends
// NeedsOperator once the stall bound has passed since its first drive, and
// releases its volume's lock. (It used to re-drive for ever: the stall
// bound only counted from a repair that had started.)
func TestReadWriteThatCannotStartARepairEndsNeedsOperator(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, testenv.Options{})
	e.SeedRack(t, 4, 1, 100*gib)
	e.Deps.PantryEndpoints = nil
	d := newDrainer(t, e, func(env *tasks.Env) { env.RWBounds.StallTimeout = time.Second })
	disk := createDisk(t, e)
	req := rwRequestFor(t, e, disk)
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.Deps.Wake.All()
		r := rwGet(t, e, req.ID)
		if r.State == store.RWNeedsOperator {
			if r.EndReason == nil || !strings.Contains(*r.EndReason, "no repair could be started") {
				t.Fatalf("end reason %v", r.EndReason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("request still %s after 30s:\n%s", r.State, d.openRecords(t))
		}
		time.Sleep(100 * time.Millisecond)
	}
	holders, err := e.Store.ListLocks(context.Background(), uuid.Nil, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range holders {
		if l.VolumeID == disk {
			t.Fatalf("the volume's lock is still held: %+v", l)
		}
	}
	invariantsHold(t, e)
	validateHolds(t, e)
}

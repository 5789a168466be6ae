package store_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/store"
)

// RegionsWithRWRequest names exactly the asked regions that have a
// request, whatever its state.
func TestRegionsWithRWRequest(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	with, other, without := uuid.New(), uuid.New(), uuid.New()
	for _, region := range []uuid.UUID{with, other} {
		if _, _, err := s.InsertRWReplacement(ctx, store.RWReplacement{ID: uuid.New(), OldRegionID: region, VolumeID: uuid.New()}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.RegionsWithRWRequest(ctx, []uuid.UUID{with, without})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[with] {
		t.Fatalf("got %v, want only %s", got, with)
	}
	if got, err := s.RegionsWithRWRequest(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("no regions: %v, %v", got, err)
	}
}

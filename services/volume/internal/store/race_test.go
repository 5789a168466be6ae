package store

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/apierr"
)

// docs/architecture.md, "Register before create" (snapshot versus disk
// delete): a region snapshot registration racing the soft delete
// of its parent region's volume. Exactly one wins: either the snapshot is
// registered and the region is kept, or the region is freed and the
// registration is refused — never a freed region with a snapshot.
func TestSnapshotRegistrationRacesSoftDeleteOfParentVolume(t *testing.T) {
	f := newFixture(t)
	wins := map[string]int{}
	for i := 0; i < 15; i++ {
		id, rw := f.newDisk(nil)
		var regErr error
		var res SoftDeleteResult
		var delErr error
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			_, regErr = f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRegionSnapshot, RegionID: rw[0].RegionID, SnapshotID: uuid.New()}})
		}()
		go func() {
			defer wg.Done()
			<-start
			res, delErr = f.s.SoftDeleteVolume(f.ctx, id)
		}()
		close(start)
		wg.Wait()
		if delErr != nil {
			t.Fatalf("soft delete: %v", delErr)
		}
		freed := false
		for _, r := range res.Regions {
			if r == rw[0].RegionID {
				freed = true
			}
		}
		switch {
		case regErr == nil && !freed:
			wins["snapshot"]++
		case regErr != nil && freed:
			wantKind(t, regErr, apierr.Precondition)
			wins["delete"]++
		case regErr == nil && freed:
			t.Fatalf("iteration %d: region freed although a snapshot of it was registered", i)
		default:
			t.Fatalf("iteration %d: registration refused (%v) but region kept", i, regErr)
		}
		regions, _, err := f.s.FindDeletedVolumeRegions(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range regions {
			if r == rw[0].ID && regErr == nil {
				t.Fatalf("iteration %d: FindDeletedVolumeRegions frees a region with a snapshot", i)
			}
		}
	}
	t.Logf("winners: %v", wins)
	f.healthy()
}

// Concurrency: 16 goroutines create and soft-delete volumes that share the
// same snapshot targets while the snapshot's own volume is deleted midway.
// Afterwards counts are exact, each target was freed exactly once, and no
// volume was created on a target after it was marked DELETING (such a
// volume could never be soft-deleted: its targets would not resolve).
func TestConcurrentCreateAndSoftDeleteOnSharedSnapshotTargets(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	const workers, rounds = 16, 6
	type outcome struct {
		created, refused int
		freed            []RegionSnapshotRef
		err              error
	}
	results := make([]outcome, workers)
	var wg sync.WaitGroup
	var holderRes SoftDeleteResult
	var holderErr error
	start := make(chan struct{})
	// The snapshot's own volume is deleted once a third of the creates
	// happened, so creates race the moment the targets become DELETING.
	var createdSoFar atomic.Int64
	third := make(chan struct{})
	var thirdOnce sync.Once
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			<-start
			o := &results[w]
			for r := 0; r < rounds; r++ {
				id := uuid.New()
				_, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: volumeNode(snapshotVCR(snaps))})
				if apierr.KindOf(err) == apierr.Precondition {
					o.refused++
					continue
				}
				if err != nil {
					o.err = err
					return
				}
				o.created++
				if createdSoFar.Add(1) == workers*rounds/3 {
					thirdOnce.Do(func() { close(third) })
				}
				res, err := f.s.SoftDeleteVolume(f.ctx, id)
				if err != nil {
					o.err = err
					return
				}
				o.freed = append(o.freed, res.RegionSnapshots...)
			}
		}(w)
	}
	holderDone := make(chan struct{})
	go func() {
		defer close(holderDone)
		<-start
		<-third
		holderRes, holderErr = f.s.SoftDeleteVolume(f.ctx, snapID)
	}()
	close(start)
	wg.Wait()
	thirdOnce.Do(func() { close(third) }) // workers that failed early must not strand it
	<-holderDone
	if holderErr != nil {
		t.Fatal(holderErr)
	}
	freedCount := map[uuid.UUID]int{}
	for _, rs := range holderRes.RegionSnapshots {
		freedCount[snapshotRefTarget(rs)]++
	}
	created, refused := 0, 0
	for w, o := range results {
		if o.err != nil {
			t.Fatalf("worker %d: %v", w, o.err)
		}
		created += o.created
		refused += o.refused
		for _, rs := range o.freed {
			freedCount[snapshotRefTarget(rs)]++
		}
	}
	for _, s := range snaps {
		if freedCount[s.ID] != 1 {
			t.Fatalf("target %s freed %d times", s.ID, freedCount[s.ID])
		}
		tg := f.target(s.ID)
		if tg.State != StateDeleting || tg.RefCount != 0 {
			t.Fatalf("target %s: %s with %d refs", s.ID, tg.State, tg.RefCount)
		}
	}
	if live := f.count(`SELECT count(*) FROM volume WHERE time_deleted IS NULL AND id <> ALL($1)`, []uuid.UUID{}); live != 1 {
		t.Fatalf("%d live volumes, want 1 (the disk)", live)
	}
	t.Logf("created %d, refused after DELETING %d", created, refused)
	f.healthy()
}

// A stash's soft delete keeps the old region while a region snapshot of it
// is registered; the read-only replacement's garbage collection
// unregisters that snapshot and then asks FindDeletedVolumeRegions for
// what that freed. When the two overlap — the soft delete read the
// snapshot, the unregister committed, the find ran before the soft delete
// committed — each saw the other's world as it was before, and nobody
// freed the region: it stayed allocated for the volume, and that volume's
// next rw repair could not allocate (it "already has its regions"). The
// find must be part of the serializable order, so that this interleaving
// fails one transaction, which is then retried.
//
// The soft delete is held open in the middle by running its two
// statements (the snapshot read of softDeleteRW, then the row update) in
// a transaction of the test's own.
func TestFindDeletedVolumeRegionsSerializesWithStashSoftDelete(t *testing.T) {
	f := newFixture(t)
	stash, rw := f.newDisk(nil)
	snap := f.snapshots(rw[:1], uuid.New())[0]
	if _, err := f.s.RetireTargets(f.ctx, []uuid.UUID{snap.ID}); err != nil {
		t.Fatal(err)
	}

	softDelete, err := f.pool.BeginTx(f.ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = softDelete.Rollback(f.ctx) }()
	var pinned int
	if err := softDelete.QueryRow(f.ctx, `SELECT count(DISTINCT region_id) FROM target
		WHERE kind = 'REGION_SNAPSHOT' AND region_id = ANY($1)`, []uuid.UUID{rw[0].RegionID}).Scan(&pinned); err != nil {
		t.Fatal(err)
	}
	if pinned != 1 {
		t.Fatalf("the soft delete sees %d pinned regions, want 1", pinned)
	}
	if _, err := softDelete.Exec(f.ctx, `UPDATE volume SET time_deleted = now() WHERE id = $1`, stash); err != nil {
		t.Fatal(err)
	}

	if _, err := f.s.UnregisterTargets(f.ctx, []uuid.UUID{snap.ID}); err != nil {
		t.Fatalf("unregister the region snapshot: %v", err)
	}
	type found struct {
		regions []uuid.UUID
		err     error
	}
	done := make(chan found, 1)
	go func() {
		regions, _, err := f.s.FindDeletedVolumeRegions(f.ctx)
		done <- found{regions, err}
	}()
	var got found
	select {
	case got = <-done:
	case <-time.After(2 * time.Second):
		// Still retrying behind the open soft delete: let it end first.
	}
	commitErr := softDelete.Commit(f.ctx)
	if got.regions == nil && got.err == nil {
		got = <-done
	}
	if got.err != nil {
		t.Fatalf("FindDeletedVolumeRegions: %v", got.err)
	}
	if commitErr == nil && !slices.Contains(got.regions, rw[0].ID) {
		t.Fatalf("the soft delete committed keeping region %s for its snapshot, and the find that followed the snapshot's unregister did not free it: orphaned", rw[0].ID)
	}
	t.Logf("soft delete commit: %v; found %d regions", commitErr, len(got.regions))
}

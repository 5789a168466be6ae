package store

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/vcr"
)

// StashDelete is what DeleteReadOnlyStashes did to one stash.
type StashDelete int

const (
	// StashRemoved: its usage rows dropped and its row removed now.
	StashRemoved StashDelete = iota + 1
	// StashMissing: no such volume.
	StashMissing
	// StashKept: left untouched, for the per-stash delete.
	StashKept
)

// MaxStashDeletes bounds one DeleteReadOnlyStashes call, as
// MaxReadOnlySwaps bounds a swap batch.
const MaxStashDeletes = MaxReadOnlySwaps

// checkStashIDs validates a DeleteReadOnlyStashes request: the field named
// is the request's.
func checkStashIDs(ids []uuid.UUID) error {
	switch {
	case len(ids) == 0:
		return invalidArgument("volume_ids: required")
	case len(ids) > MaxStashDeletes:
		return invalidArgument("volume_ids: at most %d, got %d", MaxStashDeletes, len(ids))
	}
	seen := make(map[uuid.UUID]int, len(ids))
	for i, id := range ids {
		if id == uuid.Nil {
			return invalidArgument("volume_ids[%d]: required", i)
		}
		if j, dup := seen[id]; dup {
			return invalidArgument("volume_ids[%d]: %s already appears as volume_ids[%d]", i, id, j)
		}
		seen[id] = i
	}
	return nil
}

// DeleteReadOnlyStashes removes many read-only stashes in one transaction,
// each exactly as SoftDeleteVolumeWith(HardIfNothingFreed) removes a stash
// whose delete frees nothing: its usage rows dropped, its row and index
// rows removed. It takes only what that path would remove outright — a
// live stash naming one read-only target and nothing else, owning no rw
// region — and, of those, never the last reference to a target: for a
// target no other volume references, one of its stashes (the last in the
// order given) is kept, so the per-stash delete marks the target DELETING
// and the volume-delete saga destroys it. Everything it does not take is
// answered StashKept, untouched.
//
// The transaction is serializable, like every soft delete: "some other
// volume still references the target" is a read a concurrent delete of
// that other reference conflicts with, so two deletes can never each
// believe the other keeps the target alive.
func (s *Store) DeleteReadOnlyStashes(ctx context.Context, ids []uuid.UUID) ([]StashDelete, error) {
	if err := checkStashIDs(ids); err != nil {
		return nil, err
	}
	var out []StashDelete
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = deleteReadOnlyStashes(ctx, tx, ids)
		return err
	})
	return out, err
}

// stashCandidate is a live stash the batch may remove.
type stashCandidate struct {
	id     uuid.UUID
	addr   string // its one read-only target's canonical address
	refs   int    // how often its VCR names it
	target Target
}

func deleteReadOnlyStashes(ctx context.Context, tx pgx.Tx, ids []uuid.UUID) ([]StashDelete, error) {
	out := make([]StashDelete, len(ids))
	for i := range out {
		out[i] = StashMissing
	}
	at := make(map[uuid.UUID]int, len(ids))
	for i, id := range ids {
		at[id] = i
	}
	rows, err := tx.Query(ctx, `SELECT id, time_deleted, data, purpose FROM volume WHERE id = ANY($1::uuid[])`, ids)
	if err != nil {
		return nil, fmt.Errorf("load stashes: %w", err)
	}
	var cands []stashCandidate
	var (
		id      uuid.UUID
		deleted *time.Time
		data    []byte
		purpose Purpose
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &deleted, &data, &purpose}, func() error {
		out[at[id]] = StashKept
		if deleted != nil {
			// Soft-deleted by a per-stash delete that freed something:
			// the rest of that delete is the volume-delete saga's.
			return nil
		}
		if purpose != PurposeStash {
			return failedPrecondition("volume_ids[%d]: volume %s is a %s volume, not a stash", at[id], id, purpose)
		}
		v, err := vcr.Decode(data)
		if err != nil {
			return internal("volume %s: stored VCR undecodable: %v", id, err)
		}
		if len(vcr.ReadWriteTargets(v)) > 0 {
			return nil
		}
		addrs, err := canonicalAll(vcr.ReadOnlyTargets(v))
		if err != nil || len(uniqueStrings(addrs)) != 1 {
			return nil
		}
		cands = append(cands, stashCandidate{id: id, addr: addrs[0], refs: len(addrs)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(cands) == 0 {
		return out, nil
	}
	// In the order given, so "the last of a target's stashes" is the
	// caller's, whatever order the rows came in.
	slices.SortFunc(cands, func(a, b stashCandidate) int { return at[a.id] - at[b.id] })
	addrs := make([]string, 0, len(cands))
	for _, c := range cands {
		addrs = append(addrs, c.addr)
	}
	resolved, err := resolveAddresses(ctx, tx, uniqueStrings(addrs))
	if err != nil {
		return nil, err
	}
	candIDs := make([]uuid.UUID, 0, len(cands))
	var targetIDs []uuid.UUID
	kept := cands[:0]
	for _, c := range cands {
		t, ok := resolved[c.addr]
		if !ok || !t.Kind.ReadOnly() {
			// The per-stash delete refuses it, naming why.
			continue
		}
		c.target = t
		kept = append(kept, c)
		candIDs = append(candIDs, c.id)
		if !slices.Contains(targetIDs, t.ID) {
			targetIDs = append(targetIDs, t.ID)
		}
	}
	cands = kept
	if len(cands) == 0 {
		return out, nil
	}
	// A stash that owns a rw region (none should) keeps its row for
	// HardDeleteVolume's rule.
	rows, err = tx.Query(ctx, `SELECT DISTINCT owner_volume_id FROM target
		WHERE kind = 'RW_REGION' AND owner_volume_id = ANY($1::uuid[])`, candIDs)
	if err != nil {
		return nil, fmt.Errorf("owned regions of stashes: %w", err)
	}
	owners, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	// The targets some volume outside the batch still references: for
	// these every stash can go. EXISTS stops at the first such row.
	rows, err = tx.Query(ctx, `SELECT t FROM unnest($1::uuid[]) AS t
		WHERE EXISTS (SELECT 1 FROM volume_resource_usage u
			WHERE u.target_id = t AND NOT (u.volume_id = ANY($2::uuid[])))`, targetIDs, candIDs)
	if err != nil {
		return nil, fmt.Errorf("references outside the batch: %w", err)
	}
	heldElsewhere, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	// For the other targets, the last stash holds the last reference.
	last := map[uuid.UUID]uuid.UUID{}
	for _, c := range cands {
		if !slices.Contains(heldElsewhere, c.target.ID) {
			last[c.target.ID] = c.id
		}
	}
	var remove []uuid.UUID
	want := map[uuid.UUID]int{}
	for _, c := range cands {
		if slices.Contains(owners, c.id) || last[c.target.ID] == c.id {
			continue
		}
		remove = append(remove, c.id)
		want[c.id] = c.refs
	}
	if len(remove) == 0 {
		return out, nil
	}
	rows, err = tx.Query(ctx, `DELETE FROM volume_resource_usage WHERE volume_id = ANY($1::uuid[]) RETURNING volume_id`, remove)
	if err != nil {
		return nil, fmt.Errorf("drop usage rows of stashes: %w", err)
	}
	dropped, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	got := map[uuid.UUID]int{}
	for _, v := range dropped {
		got[v]++
	}
	for _, v := range remove {
		if got[v] != want[v] {
			return nil, internal("stash %s: dropped %d usage rows, want %d", v, got[v], want[v])
		}
	}
	var b pgx.Batch
	b.Queue(`DELETE FROM volume_target WHERE volume_id = ANY($1::uuid[])`, remove)
	b.Queue(`DELETE FROM volume WHERE id = ANY($1::uuid[])`, remove)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, fmt.Errorf("remove stashes: %w", err)
	}
	for _, v := range remove {
		out[at[v]] = StashRemoved
	}
	return out, nil
}

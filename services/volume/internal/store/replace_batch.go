package store

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/vcr"
)

// ReadOnlySwap is one volume of a ReplaceReadOnlyTargets batch.
type ReadOnlySwap struct {
	Volume uuid.UUID
	Stash  uuid.UUID
}

// MaxReadOnlySwaps bounds one ReplaceReadOnlyTargets batch: one
// transaction, small enough that a serialization retry repeats little.
const MaxReadOnlySwaps = 1000

// checkReadOnlySwaps validates a batch: the field named is the request's.
func checkReadOnlySwaps(oldID, newID uuid.UUID, swaps []ReadOnlySwap) error {
	switch {
	case oldID == uuid.Nil:
		return invalidArgument("old_target_id: required")
	case newID == uuid.Nil:
		return invalidArgument("new_target_id: required")
	case oldID == newID:
		return invalidArgument("new_target_id: must differ from old_target_id")
	case len(swaps) == 0:
		return invalidArgument("swaps: required")
	case len(swaps) > MaxReadOnlySwaps:
		return invalidArgument("swaps: at most %d, got %d", MaxReadOnlySwaps, len(swaps))
	}
	// A volume or stash named twice would be swapped twice in one
	// transaction (or be both a volume and another volume's stash).
	seen := make(map[uuid.UUID]string, 2*len(swaps))
	for i, sw := range swaps {
		for _, f := range []struct {
			id   uuid.UUID
			name string
		}{{sw.Volume, "volume_id"}, {sw.Stash, "stash_volume_id"}} {
			field := fmt.Sprintf("swaps[%d].%s", i, f.name)
			if f.id == uuid.Nil {
				return invalidArgument("%s: required", field)
			}
			if prev, dup := seen[f.id]; dup {
				return invalidArgument("%s: %s already appears as %s", field, f.id, prev)
			}
			seen[f.id] = field
		}
	}
	return nil
}

// blankStash is the VCR a blank stash is created with (the per-volume
// path's CreateVolume of a volume with no sub-volumes).
func blankStash(id uuid.UUID) *vcr.VCR {
	v := &vcr.VCR{Volume: &vcr.Volume{ID: id.String(), BlockSize: 512}}
	vcr.Canonicalize(v)
	return v
}

// ReplaceReadOnlyTargets is ReplaceReadOnlyTarget for many volumes of one
// fan-out in one transaction, each swap exactly what ReplaceReadOnlyTarget
// does to its volume and stash. With createStashes, a stash that does not
// exist is first created blank (purpose stash), so a batch leaves the state
// the per-volume path's CreateVolume and swap leave. One result per swap,
// in order; any refused swap refuses the batch with nothing written.
//
// It costs a handful of round trips whatever the batch size: the fence and
// every read in one pipeline, the stash inserts and every write in another.
func (s *Store) ReplaceReadOnlyTargets(ctx context.Context, oldID, newID uuid.UUID, swaps []ReadOnlySwap, createStashes bool) ([]ReplaceResult, error) {
	if err := checkReadOnlySwaps(oldID, newID, swaps); err != nil {
		return nil, err
	}
	results := make([]ReplaceResult, len(swaps))
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		clear(results)
		var reads pgx.Batch
		oldT, newT := queueGetTarget(&reads, oldID), queueGetTarget(&reads, newID)
		vols := make([]*loadedVolume, len(swaps))
		stashes := make([]*loadedVolume, len(swaps))
		others := make([]int64, len(swaps))
		for i, sw := range swaps {
			vols[i], stashes[i] = queueLoadVolume(&reads, sw.Volume), queueLoadVolume(&reads, sw.Stash)
			reads.Queue(stashOthersSQL, sw.Stash, newID).QueryRow(func(row pgx.Row) error { return row.Scan(&others[i]) })
		}
		if err := tx.SendBatch(ctx, &reads).Close(); err != nil {
			return err
		}
		var writes pgx.Batch
		var checks []func() error
		for i, sw := range swaps {
			stash := stashes[i]
			if createStashes && !stash.ok {
				// Created here before its swap's writes, in the same
				// pipeline: a blank VCR names no target, so it has no
				// usage or index rows.
				blank := blankStash(sw.Stash)
				data, err := vcr.Encode(blank)
				if err != nil {
					return internal("encode VCR: %v", err)
				}
				writes.Queue(`INSERT INTO volume (id, data, purpose) VALUES ($1, $2, $3)`, sw.Stash, data, PurposeStash)
				stash = &loadedVolume{v: Volume{ID: sw.Stash, VCR: blank, Purpose: PurposeStash}, ok: true}
			}
			in, r, err := replaceInputsOf(vols[i], oldT, newT, false)
			if err != nil {
				return fmt.Errorf("swaps[%d]: %w", i, err)
			}
			if r != 0 {
				results[i] = r
				continue
			}
			w, r, err := planReadOnlySwap(sw.Volume, sw.Stash, in, stash, others[i])
			if err != nil {
				return fmt.Errorf("swaps[%d]: %w", i, err)
			}
			if r != 0 {
				results[i] = r
				continue
			}
			checks = append(checks, queueReadOnlySwap(&writes, w))
			results[i] = ReplaceDone
		}
		if writes.Len() > 0 {
			if err := tx.SendBatch(ctx, &writes).Close(); err != nil {
				return fmt.Errorf("replace %s in %d volumes: %w", oldID, len(swaps), err)
			}
		}
		for _, check := range checks {
			if err := check(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

package store

// CreateVolume: checking the request, building the VCR (as given, with a
// read-only parent copied from another volume, or as a snapshot of one) and
// writing the row with its usage and index rows.

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/vcr"
)

// CreateParams describe CreateVolume. Exactly one of VCR and SnapshotOf is
// set; ReadOnlyParentFrom (optional) only with VCR.
type CreateParams struct {
	ID  uuid.UUID
	VCR *vcr.VCR
	// ReadOnlyParentFrom: check this volume out READ_ONLY_COPY, randomise
	// the copy's ids and make it VCR's read-only parent.
	ReadOnlyParentFrom uuid.UUID
	SnapshotOf         *SnapshotOf
	// Purpose is stored with the row; empty is PurposeData.
	Purpose Purpose
}

// SnapshotOf builds the VCR as a snapshot of Source.
type SnapshotOf struct {
	Source uuid.UUID
	// TargetMap maps rw region address → region snapshot address.
	TargetMap map[string]string
}

// CreateVolume creates a volume in one transaction:
// idempotent on the id (an existing row, live or soft-deleted, is returned
// unchanged with created=false); every target must resolve to a registered
// ACTIVE target (read-only targets to read-only ones, rw targets to rw
// regions owned by this volume) or nothing is written; the usage rows and
// the index rows are written with the row.
func (s *Store) CreateVolume(ctx context.Context, p CreateParams) (Volume, bool, error) {
	if p.ID == uuid.Nil {
		return Volume{}, false, invalidArgument("volume_id: required")
	}
	switch p.Purpose {
	case "":
		p.Purpose = PurposeData
	case PurposeData, PurposeStash, PurposeReference:
	default:
		return Volume{}, false, invalidArgument("purpose: unknown purpose %q", p.Purpose)
	}
	var base *vcr.VCR
	var targetMap map[string]string
	switch {
	case p.SnapshotOf != nil && (p.VCR != nil || p.ReadOnlyParentFrom != uuid.Nil):
		return Volume{}, false, invalidArgument("snapshot_of: excludes vcr and read_only_parent_from_volume_id")
	case p.SnapshotOf != nil:
		if p.SnapshotOf.Source == uuid.Nil {
			return Volume{}, false, invalidArgument("snapshot_of.source_volume_id: required")
		}
		targetMap = make(map[string]string, len(p.SnapshotOf.TargetMap))
		for from, to := range p.SnapshotOf.TargetMap {
			cf, err := vcr.Canonical(from)
			if err != nil {
				return Volume{}, false, invalidArgument("snapshot_of.target_map: key %q: %v", short(from), err)
			}
			ct, err := vcr.Canonical(to)
			if err != nil {
				return Volume{}, false, invalidArgument("snapshot_of.target_map[%s]: %v", cf, err)
			}
			targetMap[cf] = ct
		}
	case p.VCR == nil:
		return Volume{}, false, invalidArgument("vcr: required")
	default:
		if err := vcr.Validate(p.VCR); err != nil {
			return Volume{}, false, err
		}
		if p.ReadOnlyParentFrom != uuid.Nil && p.VCR.Volume == nil {
			return Volume{}, false, invalidArgument("vcr: read_only_parent_from_volume_id needs a top-level volume")
		}
		base = p.VCR.Clone()
		vcr.Canonicalize(base)
	}

	var out Volume
	var created bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		created = false
		existing, ok, err := loadVolume(ctx, tx, p.ID)
		if err != nil {
			return err
		}
		if ok {
			out = existing
			return nil
		}
		v := base.Clone()
		switch {
		case p.SnapshotOf != nil:
			src, err := checkoutInTx(ctx, tx, p.SnapshotOf.Source, ReasonCopyAndModify)
			if err != nil {
				return err
			}
			snap, err := vcr.SnapshotCopy(src, targetMap)
			if err != nil {
				return invalidArgument("snapshot_of: %v", err)
			}
			if err := vcr.Validate(snap); err != nil {
				return invalidArgument("snapshot_of: the snapshot VCR is invalid: %v", err)
			}
			v = snap
		case p.ReadOnlyParentFrom != uuid.Nil:
			src, err := checkoutInTx(ctx, tx, p.ReadOnlyParentFrom, ReasonReadOnlyCopy)
			if err != nil {
				return err
			}
			rop, err := vcr.RandomizeIDs(src)
			if err != nil {
				return failedPrecondition("read_only_parent_from_volume_id %s: %v", p.ReadOnlyParentFrom, err)
			}
			v.Volume.ReadOnlyParent = rop
			if err := vcr.Validate(v); err != nil {
				return err
			}
		}
		createdAt, err := insertVolume(ctx, tx, p.ID, v, p.Purpose)
		if err != nil {
			return err
		}
		out = Volume{ID: p.ID, TimeCreated: createdAt, VCR: v, Purpose: p.Purpose}
		created = true
		return nil
	})
	if err != nil {
		return Volume{}, false, err
	}
	return out, created, nil
}

func insertVolume(ctx context.Context, tx pgx.Tx, id uuid.UUID, v *vcr.VCR, purpose Purpose) (time.Time, error) {
	index, usage, err := resolveVCR(ctx, tx, id, v)
	if err != nil {
		return time.Time{}, err
	}
	data, err := vcr.Encode(v)
	if err != nil {
		return time.Time{}, internal("encode VCR: %v", err)
	}
	// One round trip for the row, its usage rows and its index rows (a new
	// volume has no index rows to clear).
	var b pgx.Batch
	var createdAt time.Time
	b.Queue(`INSERT INTO volume (id, data, purpose) VALUES ($1, $2, $3) RETURNING time_created`, id, data, purpose).
		QueryRow(func(row pgx.Row) error { return row.Scan(&createdAt) })
	if len(usage) > 0 {
		b.Queue(insertUsageSQL, id, usage)
	}
	if len(index) > 0 {
		ids, ro := indexArrays(index)
		b.Queue(insertIndexSQL, id, ids, ro)
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return time.Time{}, fmt.Errorf("insert volume %s: %w", id, err)
	}
	return createdAt, nil
}

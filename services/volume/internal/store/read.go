package store

// Reading volumes: GetVolume and ListVolumes, each volume with the
// registered targets its VCR names (through the volume_target index), in
// VCR order.

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/vcr"
)

// GetVolume returns a volume, soft-deleted ones included, with the
// registered targets its VCR names; withRefCounts also counts each
// target's references (O(references): for operators, not the data path).
func (s *Store) GetVolume(ctx context.Context, id uuid.UUID, withRefCounts bool) (Volume, error) {
	var out Volume
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		// One pipeline with the BEGIN: the notifier reads a volume per
		// step of a fan-out.
		var b pgx.Batch
		v := queueLoadVolume(&b, id)
		var vols []Volume
		b.Queue(volumeTargetsSQL(withRefCounts), []uuid.UUID{id}).Query(func(rows pgx.Rows) error {
			if !v.ok {
				return nil
			}
			vols = []Volume{v.v}
			return scanVolumeTargets(rows, vols)
		})
		if err := tx.SendBatch(ctx, &b).Close(); err != nil {
			return err
		}
		if !v.ok {
			return notFound("volume %s not found", id)
		}
		orderTargets(vols)
		out = vols[0]
		return nil
	})
	return out, err
}

// ListVolumes lists volumes by id after `after`, at most limit.
func (s *Store) ListVolumes(ctx context.Context, after uuid.UUID, limit int, includeDeleted bool) ([]Volume, uuid.UUID, error) {
	limit = pageLimit(limit)
	var out []Volume
	var next uuid.UUID
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		out, next = nil, uuid.Nil
		rows, err := tx.Query(ctx, `SELECT id, time_created, time_deleted, data, purpose FROM volume
			WHERE id > $1 AND ($2 OR time_deleted IS NULL) ORDER BY id LIMIT $3`, after, includeDeleted, limit+1)
		if err != nil {
			return fmt.Errorf("list volumes: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var v Volume
			var data []byte
			if err := rows.Scan(&v.ID, &v.TimeCreated, &v.TimeDeleted, &data, &v.Purpose); err != nil {
				return err
			}
			if v.VCR, err = vcr.Decode(data); err != nil {
				return internal("volume %s: stored VCR undecodable: %v", v.ID, err)
			}
			out = append(out, v)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(out) > limit {
			out = out[:limit]
			next = out[limit-1].ID
		}
		return attachTargets(ctx, tx, out, false)
	})
	return out, next, err
}

// attachTargets fills Volume.Targets from the index, in VCR order, with
// their reference counts if asked.
func attachTargets(ctx context.Context, q db.Querier, vols []Volume, withRefCounts bool) error {
	if len(vols) == 0 {
		return nil
	}
	idList := make([]uuid.UUID, len(vols))
	for i, v := range vols {
		idList[i] = v.ID
	}
	rows, err := q.Query(ctx, volumeTargetsSQL(withRefCounts), idList)
	if err != nil {
		return fmt.Errorf("volume targets: %w", err)
	}
	if err := scanVolumeTargets(rows, vols); err != nil {
		return err
	}
	orderTargets(vols)
	return nil
}

// volumeTargetsSQL lists the targets of the volumes $1 through the index.
func volumeTargetsSQL(withRefCounts bool) string {
	return `SELECT ` + targetColsT + `, ` + refCountColumn(withRefCounts, "t.target_id") + `, vt.volume_id
		FROM volume_target vt JOIN target t ON t.target_id = vt.target_id
		WHERE vt.volume_id = ANY($1)`
}

// scanVolumeTargets appends volumeTargetsSQL's rows to their volumes'
// Targets.
func scanVolumeTargets(rows pgx.Rows, vols []Volume) error {
	defer rows.Close()
	pos := make(map[uuid.UUID]int, len(vols))
	for i, v := range vols {
		pos[v.ID] = i
	}
	for rows.Next() {
		var vid uuid.UUID
		var refs int64
		t, err := scanTarget(rows, &refs, &vid)
		if err != nil {
			return err
		}
		t.RefCount = refs
		i := pos[vid]
		vols[i].Targets = append(vols[i].Targets, t)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("volume targets: %w", err)
	}
	return nil
}

// orderTargets sorts each volume's Targets into VCR order.
func orderTargets(vols []Volume) {
	for i := range vols {
		order := map[string]int{}
		for j, r := range vcr.AllTargets(vols[i].VCR) {
			if c, err := vcr.Canonical(r.Address); err == nil {
				if _, seen := order[c]; !seen {
					order[c] = j
				}
			}
		}
		ts := vols[i].Targets
		sort.SliceStable(ts, func(a, b int) bool { return orderOf(order, ts[a].Address) < orderOf(order, ts[b].Address) })
	}
}

func orderOf(order map[string]int, addr string) int {
	if i, ok := order[addr]; ok {
		return i
	}
	return 1 << 30
}

// VolumeState is whether a volume exists, and when it was soft-deleted.
type VolumeState struct {
	ID          uuid.UUID
	Found       bool
	TimeDeleted *time.Time
}

// MaxVolumeStates bounds one VolumeStates read.
const MaxVolumeStates = 1000

// VolumeStates returns the state of each of ids, in order (an id may
// repeat), in one statement that reads no VCR: the orchestrator asks it of
// every waiting request on every pass of its tasks.
func (s *Store) VolumeStates(ctx context.Context, ids []uuid.UUID) ([]VolumeState, error) {
	rows, err := s.pool.Query(ctx, `SELECT a.id, v.id IS NOT NULL, v.time_deleted
		FROM unnest($1::uuid[]) WITH ORDINALITY AS a(id, n) LEFT JOIN volume v ON v.id = a.id
		ORDER BY a.n`, ids)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (VolumeState, error) {
		var st VolumeState
		err := row.Scan(&st.ID, &st.Found, &st.TimeDeleted)
		return st, err
	})
}

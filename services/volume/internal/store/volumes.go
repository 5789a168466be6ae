package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/ids"
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

func short(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

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

// CheckoutReason is why a volume is checked out.
type CheckoutReason int

// Checkout reasons.
const (
	ReasonReadOnlyCopy CheckoutReason = iota + 1
	ReasonCopyAndModify
	ReasonConstruct
)

// Checkout bumps the generation of every direct Region sub-volume and
// returns the VCR as it was before, optionally with fresh ids (refused
// without bumping anything when any region is rw). Soft-deleted volumes are
// not refused.
func (s *Store) Checkout(ctx context.Context, id uuid.UUID, reason CheckoutReason, randomize bool) (*vcr.VCR, error) {
	if reason < ReasonReadOnlyCopy || reason > ReasonConstruct {
		return nil, invalidArgument("reason: required")
	}
	var out *vcr.VCR
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		v, ok, err := loadVolume(ctx, tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return notFound("volume %s not found", id)
		}
		if randomize {
			if _, err := vcr.RandomizeIDs(v.VCR); err != nil {
				return failedPrecondition("volume %s: cannot copy with fresh ids: %v", id, err)
			}
		}
		out, err = checkoutInTx(ctx, tx, id, reason)
		if err != nil {
			return err
		}
		if randomize {
			out, err = vcr.RandomizeIDs(out)
			if err != nil {
				return failedPrecondition("volume %s: cannot copy with fresh ids: %v", id, err)
			}
		}
		return nil
	})
	return out, err
}

// checkoutInTx admits the checkout, bumps and returns the pre-bump VCR.
func checkoutInTx(ctx context.Context, tx pgx.Tx, id uuid.UUID, reason CheckoutReason) (*vcr.VCR, error) {
	v, ok, err := loadVolume(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound("volume %s not found", id)
	}
	if reason == ReasonReadOnlyCopy {
		ro, err := vcr.IsReadOnly(v.VCR)
		if err != nil {
			return nil, internal("volume %s: invalid volume for a read-only copy: %v", id, err)
		}
		if !ro {
			return nil, failedPrecondition("volume %s has rw regions; a read-only copy is refused", id)
		}
	}
	bumped := v.VCR.Clone()
	changed, err := vcr.BumpDirectRegionGens(bumped)
	if err != nil {
		return nil, internal("volume %s: invalid volume: %v", id, err)
	}
	if changed {
		if err := writeVCR(ctx, tx, id, bumped, false); err != nil {
			return nil, err
		}
	}
	return v.VCR, nil
}

// RegionSnapshotRef identifies a region snapshot.
type RegionSnapshotRef struct {
	DatasetID, RegionID, SnapshotID uuid.UUID
}

// TargetID is the derived target id.
func (r RegionSnapshotRef) TargetID() uuid.UUID {
	return ids.RegionSnapshotTargetID(r.RegionID, r.SnapshotID)
}

// SoftDeleteResult is what a soft delete freed.
type SoftDeleteResult struct {
	Regions         []uuid.UUID
	RegionSnapshots []RegionSnapshotRef
	VolumeMissing   bool
	AlreadyDeleted  bool
	// HardDeleted: SoftDeleteOptions.HardIfNothingFreed applied.
	HardDeleted bool
}

// SoftDeleteOptions change what a soft delete does.
type SoftDeleteOptions struct {
	// HardIfNothingFreed: when the delete frees nothing and the volume owns
	// no rw region, remove the row and its index rows in the same
	// transaction instead of marking it deleted. That is all the
	// volume-delete saga would do next (hard delete once no region
	// names the volume), and a re-run finds the volume missing, which
	// again frees nothing. A fan-out deletes one read-only stash per
	// volume: this saves the second transaction and RPC.
	HardIfNothingFreed bool
	// OnlyPurpose, when set, refuses a live volume of another purpose
	// (FailedPrecondition, nothing changed).
	OnlyPurpose Purpose
}

// crucibleResources is the stored cleanup list, externally tagged by
// version like the reference's; only V3 is written (no legacy rows exist).
type crucibleResources struct {
	V3 *crucibleResourcesV3 `json:"V3,omitempty"`
}

type crucibleResourcesV3 struct {
	Regions         []uuid.UUID        `json:"regions"`
	RegionSnapshots []regionSnapshotV3 `json:"region_snapshots"`
}

type regionSnapshotV3 struct {
	Dataset  uuid.UUID `json:"dataset"`
	Region   uuid.UUID `json:"region"`
	Snapshot uuid.UUID `json:"snapshot"`
}

// SoftDeleteVolume soft-deletes a volume in one transaction.
func (s *Store) SoftDeleteVolume(ctx context.Context, id uuid.UUID) (SoftDeleteResult, error) {
	return s.SoftDeleteVolumeWith(ctx, id, SoftDeleteOptions{})
}

// SoftDeleteVolumeWith is SoftDeleteVolume with options.
func (s *Store) SoftDeleteVolumeWith(ctx context.Context, id uuid.UUID, opts SoftDeleteOptions) (SoftDeleteResult, error) {
	var res SoftDeleteResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		res = SoftDeleteResult{}
		var deleted *time.Time
		var data, stored []byte
		var purpose Purpose
		err := tx.QueryRow(ctx, `SELECT time_deleted, data, resources_to_clean_up, purpose FROM volume WHERE id = $1`, id).
			Scan(&deleted, &data, &stored, &purpose)
		if errors.Is(err, pgx.ErrNoRows) {
			res.VolumeMissing = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("load volume %s: %w", id, err)
		}
		if deleted != nil {
			res.AlreadyDeleted = true
			return decodeResources(stored, &res)
		}
		if opts.OnlyPurpose != "" && purpose != opts.OnlyPurpose {
			return failedPrecondition("volume %s is a %s volume, not a %s one; its replacement deletes it", id, purpose, opts.OnlyPurpose)
		}
		v, err := vcr.Decode(data)
		if err != nil {
			return internal("volume %s: stored VCR undecodable: %v", id, err)
		}
		if _, err := vcr.CountSubVolumes(v); err != nil {
			return internal("volume %s: invalid volume: %v", id, err)
		}
		if err := softDeleteRW(ctx, tx, id, v, &res); err != nil {
			return err
		}
		if err := softDeleteRO(ctx, tx, id, v, &res); err != nil {
			return err
		}
		cr := crucibleResources{V3: &crucibleResourcesV3{Regions: res.Regions, RegionSnapshots: []regionSnapshotV3{}}}
		if cr.V3.Regions == nil {
			cr.V3.Regions = []uuid.UUID{}
		}
		for _, r := range res.RegionSnapshots {
			cr.V3.RegionSnapshots = append(cr.V3.RegionSnapshots, regionSnapshotV3{r.DatasetID, r.RegionID, r.SnapshotID})
		}
		if opts.HardIfNothingFreed && len(res.Regions) == 0 && len(res.RegionSnapshots) == 0 {
			var owns bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM target WHERE kind = 'RW_REGION' AND owner_volume_id = $1)`, id).Scan(&owns); err != nil {
				return fmt.Errorf("owned regions of %s: %w", id, err)
			}
			if !owns {
				res.HardDeleted = true
				return removeVolumeRow(ctx, tx, id)
			}
		}
		js, err := json.Marshal(cr)
		if err != nil {
			return internal("encode cleanup list: %v", err)
		}
		tag, err := tx.Exec(ctx, `UPDATE volume SET time_deleted = now(), resources_to_clean_up = $2
			WHERE id = $1 AND time_deleted IS NULL`, id, js)
		if err != nil {
			return fmt.Errorf("soft delete %s: %w", id, err)
		}
		if tag.RowsAffected() != 1 {
			return internal("soft delete %s: updated %d rows, want 1", id, tag.RowsAffected())
		}
		return nil
	})
	return res, err
}

func decodeResources(stored []byte, res *SoftDeleteResult) error {
	if stored == nil {
		return nil
	}
	var cr crucibleResources
	if err := json.Unmarshal(stored, &cr); err != nil {
		return internal("stored cleanup list undecodable: %v", err)
	}
	if cr.V3 == nil {
		return nil
	}
	res.Regions = cr.V3.Regions
	for _, r := range cr.V3.RegionSnapshots {
		res.RegionSnapshots = append(res.RegionSnapshots, RegionSnapshotRef{r.Dataset, r.Region, r.Snapshot})
	}
	return nil
}

// softDeleteRW: every rw target must resolve to a rw region; a region with
// any region snapshot registered (any state) is kept for
// FindDeletedVolumeRegions, the rest are freed. Reading the snapshot rows is
// what makes a concurrent RegisterTargets of a snapshot conflict.
func softDeleteRW(ctx context.Context, tx pgx.Tx, id uuid.UUID, v *vcr.VCR, res *SoftDeleteResult) error {
	addrs, err := canonicalAll(vcr.ReadWriteTargets(v))
	if err != nil {
		return internal("volume %s: %v", id, err)
	}
	resolved, err := resolveAddresses(ctx, tx, uniqueStrings(addrs))
	if err != nil {
		return err
	}
	var regionIDs []uuid.UUID
	for _, a := range addrs {
		t, ok := resolved[a]
		if !ok || t.Kind != KindRWRegion {
			return failedPrecondition("volume %s: rw target %s does not resolve to a registered rw region", id, a)
		}
		regionIDs = append(regionIDs, t.RegionID)
	}
	if len(regionIDs) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT DISTINCT region_id FROM target
		WHERE kind = 'REGION_SNAPSHOT' AND region_id = ANY($1)`, regionIDs)
	if err != nil {
		return fmt.Errorf("region snapshots of %s: %w", id, err)
	}
	hasSnapshots, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return err
	}
	pinned := map[uuid.UUID]bool{}
	for _, r := range hasSnapshots {
		pinned[r] = true
	}
	for _, r := range regionIDs {
		if !pinned[r] {
			res.Regions = append(res.Regions, r)
		}
	}
	return nil
}

// softDeleteRO drops one usage row per read-only occurrence and marks every
// target whose count reaches zero DELETING (exactly one row each).
func softDeleteRO(ctx context.Context, tx pgx.Tx, id uuid.UUID, v *vcr.VCR, res *SoftDeleteResult) error {
	addrs, err := canonicalAll(vcr.ReadOnlyTargets(v))
	if err != nil {
		return internal("volume %s: %v", id, err)
	}
	if len(addrs) == 0 {
		return nil
	}
	resolved, err := resolveAddresses(ctx, tx, uniqueStrings(addrs))
	if err != nil {
		return err
	}
	targetIDs := make([]uuid.UUID, 0, len(addrs))
	want := map[uuid.UUID]int{}
	byID := map[uuid.UUID]Target{}
	for _, a := range addrs {
		t, ok := resolved[a]
		if !ok || !t.Kind.ReadOnly() {
			return failedPrecondition("volume %s: read-only target %s does not resolve to a registered read-only target", id, a)
		}
		if want[t.ID] == 0 {
			targetIDs = append(targetIDs, t.ID)
		}
		want[t.ID]++
		byID[t.ID] = t
	}
	rows, err := tx.Query(ctx, `DELETE FROM volume_resource_usage WHERE volume_id = $1 AND target_id = ANY($2) RETURNING target_id`, id, targetIDs)
	if err != nil {
		return fmt.Errorf("drop usage rows of %s: %w", id, err)
	}
	dropped, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return err
	}
	got := map[uuid.UUID]int{}
	for _, t := range dropped {
		got[t]++
	}
	for _, t := range targetIDs {
		if got[t] != want[t] {
			return internal("volume %s: target %s: dropped %d usage rows, want %d", id, t, got[t], want[t])
		}
	}
	rows, err = tx.Query(ctx, `SELECT t FROM unnest($1::uuid[]) AS t
		WHERE NOT EXISTS (SELECT 1 FROM volume_resource_usage u WHERE u.target_id = t)`, targetIDs)
	if err != nil {
		return fmt.Errorf("remaining counts: %w", err)
	}
	zero, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return err
	}
	if len(zero) == 0 {
		return nil
	}
	tag, err := tx.Exec(ctx, `UPDATE target SET state = 'DELETING' WHERE target_id = ANY($1) AND state = 'ACTIVE'`, zero)
	if err != nil {
		return fmt.Errorf("mark deleting: %w", err)
	}
	if int(tag.RowsAffected()) != len(zero) {
		return internal("volume %s: marked %d targets deleting, want %d", id, tag.RowsAffected(), len(zero))
	}
	// Keep VCR order in the result.
	isZero := map[uuid.UUID]bool{}
	for _, z := range zero {
		isZero[z] = true
	}
	for _, tid := range targetIDs {
		if !isZero[tid] {
			continue
		}
		t := byID[tid]
		if t.Kind == KindRORegion {
			res.Regions = append(res.Regions, t.RegionID)
		} else {
			res.RegionSnapshots = append(res.RegionSnapshots, RegionSnapshotRef{t.DatasetID, t.RegionID, t.SnapshotID})
		}
	}
	return nil
}

func canonicalAll(in []string) ([]string, error) {
	out := make([]string, len(in))
	for i, a := range in {
		c, err := vcr.Canonical(a)
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", short(a), err)
		}
		out[i] = c
	}
	return out, nil
}

// HardDeleteResult is what HardDeleteVolume did.
type HardDeleteResult struct {
	Kept bool
	// RemainingRegions are the rw targets the volume still owns (Kept).
	RemainingRegions []uuid.UUID
}

// HardDeleteVolume removes a soft-deleted volume row and its index rows.
// Missing ⇒ done; live ⇒ FailedPrecondition (hard-deleting a live volume
// would leak its usage rows); still owning registered rw targets ⇒ Kept.
func (s *Store) HardDeleteVolume(ctx context.Context, id uuid.UUID) (HardDeleteResult, error) {
	var res HardDeleteResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		res = HardDeleteResult{}
		var deleted *time.Time
		err := tx.QueryRow(ctx, `SELECT time_deleted FROM volume WHERE id = $1`, id).Scan(&deleted)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("load volume %s: %w", id, err)
		}
		if deleted == nil {
			return failedPrecondition("volume %s is live; soft-delete it first", id)
		}
		rows, err := tx.Query(ctx, `SELECT target_id FROM target WHERE kind = 'RW_REGION' AND owner_volume_id = $1 ORDER BY target_id`, id)
		if err != nil {
			return fmt.Errorf("owned regions of %s: %w", id, err)
		}
		owned, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return err
		}
		if len(owned) > 0 {
			res.Kept, res.RemainingRegions = true, owned
			return nil
		}
		return removeVolumeRow(ctx, tx, id)
	})
	return res, err
}

// removeVolumeRow deletes a volume's row and its index rows (its usage
// rows are the soft delete's business).
func removeVolumeRow(ctx context.Context, tx pgx.Tx, id uuid.UUID) error {
	var b pgx.Batch
	b.Queue(`DELETE FROM volume_target WHERE volume_id = $1`, id)
	b.Queue(`DELETE FROM volume WHERE id = $1`, id)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("hard delete %s: %w", id, err)
	}
	return nil
}

// FindDeletedVolumeRegions lists rw regions whose owner volume exists and is
// soft-deleted and which have no region snapshot registered (any state), and
// the volumes all of whose rw regions are in that batch.
func (s *Store) FindDeletedVolumeRegions(ctx context.Context) ([]uuid.UUID, []uuid.UUID, error) {
	var regions, volumes []uuid.UUID
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT r.target_id FROM target r
			JOIN volume v ON v.id = r.owner_volume_id AND v.time_deleted IS NOT NULL
			WHERE r.kind = 'RW_REGION'
			  AND NOT EXISTS (SELECT 1 FROM target s WHERE s.kind = 'REGION_SNAPSHOT' AND s.region_id = r.region_id)
			ORDER BY r.target_id`)
		if err != nil {
			return fmt.Errorf("freed regions: %w", err)
		}
		if regions, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT DISTINCT r.owner_volume_id FROM target r
			WHERE r.target_id = ANY($1)
			  AND NOT EXISTS (SELECT 1 FROM target o WHERE o.kind = 'RW_REGION'
			                  AND o.owner_volume_id = r.owner_volume_id AND NOT (o.target_id = ANY($1)))
			ORDER BY 1`, regions)
		if err != nil {
			return fmt.Errorf("freed volumes: %w", err)
		}
		volumes, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		return err
	})
	return regions, volumes, err
}

// VolumeRef is a volume found through the index.
type VolumeRef struct {
	ID          uuid.UUID
	SoftDeleted bool
	Purpose     Purpose
}

// FindVolumesReferencingTarget answers from the volume_target index, by
// volume id after `after`.
func (s *Store) FindVolumesReferencingTarget(ctx context.Context, target uuid.UUID, includeDeleted bool, after uuid.UUID, limit int) ([]VolumeRef, uuid.UUID, error) {
	limit = pageLimit(limit)
	rows, err := s.pool.Query(ctx, `SELECT vt.volume_id, v.time_deleted IS NOT NULL, v.purpose
		FROM volume_target vt JOIN volume v ON v.id = vt.volume_id
		WHERE vt.target_id = $1 AND vt.volume_id > $2 AND ($3 OR v.time_deleted IS NULL)
		ORDER BY vt.volume_id LIMIT $4`, target, after, includeDeleted, limit+1)
	if err != nil {
		return nil, uuid.Nil, fmt.Errorf("volumes referencing %s: %w", target, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (VolumeRef, error) {
		var v VolumeRef
		err := r.Scan(&v.ID, &v.SoftDeleted, &v.Purpose)
		return v, err
	})
	if err != nil {
		return nil, uuid.Nil, err
	}
	var next uuid.UUID
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1].ID
	}
	return out, next, nil
}

// ReadOnlyReference answers VolumeReferencesReadOnlyTarget.
type ReadOnlyReference struct {
	Exists, SoftDeleted, Referenced bool
	// Purpose is empty when the volume does not exist.
	Purpose Purpose
}

// VolumeReferencesReadOnlyTarget reports whether a volume's VCR (soft-deleted
// ones too) names the target as a read-only target. An unregistered target
// is not referenced.
func (s *Store) VolumeReferencesReadOnlyTarget(ctx context.Context, volumeID, targetID uuid.UUID) (ReadOnlyReference, error) {
	var out ReadOnlyReference
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		out = ReadOnlyReference{}
		v, ok, err := loadVolume(ctx, tx, volumeID)
		if err != nil || !ok {
			return err
		}
		out.Exists, out.SoftDeleted, out.Purpose = true, v.SoftDeleted(), v.Purpose
		t, ok, err := getTarget(ctx, tx, targetID)
		if err != nil || !ok || t.Address == "" {
			return err
		}
		out.Referenced, err = vcr.ReadOnlyTargetInVCR(v.VCR, t.Address)
		if err != nil {
			return internal("volume %s: malformed VCR: %v", volumeID, err)
		}
		return nil
	})
	return out, err
}

// RemoveReadOnlyParent moves a volume's read-only parent into a live,
// empty temporary volume; the usage and index rows move with it.
func (s *Store) RemoveReadOnlyParent(ctx context.Context, volumeID, tempID uuid.UUID) (bool, error) {
	if volumeID == tempID {
		return false, invalidArgument("temp_volume_id: must differ from volume_id")
	}
	var removed bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		removed = false
		v, ok, err := loadVolume(ctx, tx, volumeID)
		if err != nil || !ok || v.SoftDeleted() || v.VCR.Volume == nil || v.VCR.Volume.ReadOnlyParent == nil {
			return err
		}
		temp, ok, err := loadVolume(ctx, tx, tempID)
		if err != nil {
			return err
		}
		if !ok || temp.SoftDeleted() {
			return failedPrecondition("temp volume %s does not exist or is soft-deleted", tempID)
		}
		if len(vcr.AllTargets(temp.VCR)) != 0 {
			return failedPrecondition("temp volume %s is not empty", tempID)
		}
		rop := v.VCR.Volume.ReadOnlyParent
		without := v.VCR.Clone()
		without.Volume.ReadOnlyParent = nil
		tempVCR := &vcr.VCR{Volume: &vcr.Volume{ID: tempID.String(), BlockSize: v.VCR.Volume.BlockSize, ReadOnlyParent: rop.Clone()}}
		if err := writeVCR(ctx, tx, volumeID, without, true); err != nil {
			return err
		}
		if err := writeVCR(ctx, tx, tempID, tempVCR, true); err != nil {
			return err
		}
		if err := moveReferences(ctx, tx, volumeID, tempID, vcr.ReadOnlyTargets(tempVCR)); err != nil {
			return err
		}
		if err := reindex(ctx, tx, volumeID, without); err != nil {
			return err
		}
		if err := reindex(ctx, tx, tempID, tempVCR); err != nil {
			return err
		}
		removed = true
		return nil
	})
	return removed, err
}

// moveReferences moves the usage rows of the targets at addrs from one
// volume to another: exactly one row per address.
func moveReferences(ctx context.Context, tx pgx.Tx, from, to uuid.UUID, addrs []string) error {
	canon, err := canonicalAll(addrs)
	if err != nil {
		return internal("%v", err)
	}
	resolved, err := resolveAddresses(ctx, tx, uniqueStrings(canon))
	if err != nil {
		return err
	}
	for _, a := range canon {
		t, ok := resolved[a]
		if !ok {
			return failedPrecondition("read-only target %s does not resolve to a registered target", a)
		}
		tag, err := tx.Exec(ctx, `UPDATE volume_resource_usage SET volume_id = $3 WHERE volume_id = $1 AND target_id = $2`, from, t.ID, to)
		if err != nil {
			return fmt.Errorf("move usage rows: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return internal("volume %s: moved %d usage rows of target %s, want 1", from, tag.RowsAffected(), t.ID)
		}
	}
	return nil
}

// reindex recomputes a live volume's index rows from its VCR.
func reindex(ctx context.Context, tx pgx.Tx, volumeID uuid.UUID, v *vcr.VCR) error {
	index, _, err := resolveVCR(ctx, tx, volumeID, v)
	if err != nil {
		return err
	}
	return writeIndex(ctx, tx, volumeID, index)
}

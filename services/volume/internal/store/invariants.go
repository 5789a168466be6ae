package store

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/vcr"
)

// Violation is one failed consistency check.
type Violation struct {
	Code    string
	Subject string
	Detail  string
}

// Violation codes. Each names one root cause; a corruption is reported once,
// not again through every check it also upsets.
const (
	VVCRUndecodable            = "vcr_undecodable"                        // stored JSON does not decode
	VTopLevelRegion            = "top_level_region"                       // live volume is a bare region
	VRWUnderROP                = "rw_region_under_rop"                    // malformed tree
	VMalformedTarget           = "malformed_target"                       // IPv4 / unparsable target
	VRWTargetUnresolved        = "rw_target_unresolved"                   // rw target is no registered rw region
	VROTargetUnresolved        = "ro_target_unresolved"                   // read-only target is no registered read-only one
	VLiveReferencesDeleting    = "live_volume_references_deleting_target" // a live VCR names a DELETING target
	VDuplicateTargetInRegion   = "duplicate_target_in_region"             // one region set names a target twice
	VROTargetTwiceInVCR        = "duplicate_read_only_target"             // one VCR names a read-only target twice
	VROSnapshotted             = "ro_region_snapshotted"                  // a region snapshot of a read-only region
	VSnapshotWithoutParent     = "region_snapshot_without_parent"         // registry
	VUsageCountMismatch        = "usage_count_mismatch"                   // ledger ≠ what live VCRs name
	VUsageOnDeletedVolume      = "usage_on_deleted_volume"                // a soft-deleted volume holds a reference
	VUsageOrphan               = "usage_orphan"                           // usage row of a missing volume
	VUsageUnknownTarget        = "usage_unknown_target"                   // usage row naming no registered target
	VUsageOnRWTarget           = "usage_on_rw_target"                     // rw regions are not in the ledger
	VDuplicateLiveAddress      = "duplicate_live_address"                 // two non-DELETING targets at one address
	VDuplicateUsageRow         = "duplicate_usage_row"                    // one volume, one target, two ledger rows
	VRWOwnerMismatch           = "rw_owner_mismatch"                      // a live VCR names a rw region it does not own
	VIndexRowMissing           = "index_row_missing"                      // index ≠ VCR
	VIndexRowExtra             = "index_row_extra"                        // index ≠ VCR
	VIndexReadOnlyMismatch     = "index_read_only_mismatch"               // index ≠ VCR
	VIndexOrphan               = "index_orphan"                           // index row of a missing volume
	VTargetStateInconsistent   = "target_state_inconsistent"              // address vs state
	VRWTargetNamedByTwoVolumes = "rw_target_shared"                       // one rw region in two live VCRs
)

type invVolume struct {
	id      uuid.UUID
	deleted bool
	vcr     *vcr.VCR
}

type pair struct{ volume, target uuid.UUID }

// CheckInvariants runs every check that applies to this database (the codes
// above), plus "the volume_target index equals what the VCRs say", over one
// consistent snapshot. Empty means healthy.
//
// Not checked here: repair locks (they live in the orchestrator, and
// ValidateSystem checks them), what one checkout returns and what
// FindDeletedVolumeRegions answers (properties of one call, tested there).
func (s *Store) CheckInvariants(ctx context.Context) ([]Violation, error) {
	var out []Violation
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = checkInvariants(ctx, tx)
		return err
	})
	return out, err
}

func checkInvariants(ctx context.Context, tx pgx.Tx) ([]Violation, error) {
	var out []Violation
	add := func(code string, subject any, format string, args ...any) {
		out = append(out, Violation{Code: code, Subject: fmt.Sprint(subject), Detail: fmt.Sprintf(format, args...)})
	}

	// Load everything (a diagnostic; one snapshot).
	var vols []invVolume
	volByID := map[uuid.UUID]*invVolume{}
	rows, err := tx.Query(ctx, `SELECT id, time_deleted, data FROM volume ORDER BY id`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var v invVolume
		var del *time.Time
		var data []byte
		if err := rows.Scan(&v.id, &del, &data); err != nil {
			rows.Close()
			return nil, err
		}
		v.deleted = del != nil
		if v.vcr, err = vcr.Decode(data); err != nil {
			add(VVCRUndecodable, v.id, "%v", err)
			v.vcr = nil
		}
		vols = append(vols, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range vols {
		volByID[vols[i].id] = &vols[i]
	}

	targets := map[uuid.UUID]Target{}
	live := map[string]Target{}     // address → non-deleting target
	deleting := map[string]Target{} // address → a DELETING target
	rows, err = tx.Query(ctx, `SELECT `+targetCols+` FROM target ORDER BY target_id`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		t, err := scanTarget(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		targets[t.ID] = t
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	ids := sortedIDs(targets)
	for _, id := range ids {
		t := targets[id]
		if (t.State == StatePending) != (t.Address == "") {
			add(VTargetStateInconsistent, t.ID, "state %s with address %q", t.State, t.Address)
		}
		if t.Address == "" {
			continue
		}
		if t.State == StateDeleting {
			deleting[t.Address] = t
			continue
		}
		if other, dup := live[t.Address]; dup {
			add(VDuplicateLiveAddress, t.Address, "targets %s and %s both serve it", other.ID, t.ID)
			continue
		}
		live[t.Address] = t
	}
	for _, id := range ids {
		t := targets[id]
		if t.Kind != KindRegionSnapshot {
			continue
		}
		parent, ok := targets[t.RegionID]
		switch {
		case !ok:
			add(VSnapshotWithoutParent, t.ID, "parent region %s is not registered", t.RegionID)
		case parent.Kind == KindRORegion:
			add(VROSnapshotted, t.ID, "snapshot of read-only region %s", t.RegionID)
		}
	}

	actual := map[pair]int{}
	rows, err = tx.Query(ctx, `SELECT volume_id, target_id FROM volume_resource_usage`)
	if err != nil {
		return nil, err
	}
	var usage []pair
	for rows.Next() {
		var p pair
		if err := rows.Scan(&p.volume, &p.target); err != nil {
			rows.Close()
			return nil, err
		}
		usage = append(usage, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, p := range usage {
		v, vok := volByID[p.volume]
		t, tok := targets[p.target]
		switch {
		case !vok:
			add(VUsageOrphan, p.target, "usage row of missing volume %s", p.volume)
		case v.deleted:
			add(VUsageOnDeletedVolume, p.volume, "soft-deleted volume holds a reference to %s", p.target)
		case !tok:
			add(VUsageUnknownTarget, p.target, "volume %s references an unregistered target", p.volume)
		case t.Kind == KindRWRegion:
			add(VUsageOnRWTarget, p.target, "volume %s has a usage row for rw region", p.volume)
		default:
			actual[p]++
		}
	}

	type idxRow struct{ readOnly bool }
	index := map[pair]idxRow{}
	rows, err = tx.Query(ctx, `SELECT volume_id, target_id, read_only FROM volume_target`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var p pair
		var ro bool
		if err := rows.Scan(&p.volume, &p.target, &ro); err != nil {
			rows.Close()
			return nil, err
		}
		index[p] = idxRow{ro}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for p := range index {
		if _, ok := volByID[p.volume]; !ok {
			add(VIndexOrphan, p.volume, "index row for target %s of a missing volume", p.target)
		}
	}

	rwNamedBy := map[uuid.UUID]uuid.UUID{}
	for i := range vols {
		v := &vols[i]
		if v.vcr == nil {
			continue
		}
		// No target twice in one region set, for every volume.
		healthy := true
		walkRegions(v.vcr, func(r *vcr.Region) {
			seen := map[string]bool{}
			for _, t := range r.Opts.Target {
				c, err := vcr.Canonical(t)
				if err != nil {
					continue
				}
				if seen[c] {
					add(VDuplicateTargetInRegion, v.id, "target %s twice in one region", c)
				}
				seen[c] = true
			}
		})
		if v.deleted {
			// The VCR stays as it was; index rows must still name what it
			// names (targets may be gone or their address reused).
			names := map[string]bool{}
			for _, r := range vcr.AllTargets(v.vcr) {
				if c, err := vcr.Canonical(r.Address); err == nil {
					names[fmt.Sprint(c, r.ReadOnly)] = true
				}
			}
			for p, row := range index {
				if p.volume != v.id {
					continue
				}
				if t, ok := targets[p.target]; ok && t.Address != "" && !names[fmt.Sprint(t.Address, row.readOnly)] {
					add(VIndexRowExtra, v.id, "soft-deleted volume indexed under %s, which its VCR does not name", p.target)
				}
			}
			continue
		}
		if _, err := vcr.CountSubVolumes(v.vcr); err != nil {
			add(VTopLevelRegion, v.id, "live volume is a bare region")
			continue
		}
		expectedIndex := map[uuid.UUID]bool{}
		expectedUsage := map[uuid.UUID]int{}
		roSeen := map[uuid.UUID]bool{}
		// A structurally broken tree is reported as such; resolving and
		// counting its targets would only repeat the same cause.
		broken := false
		walkWithROP(v.vcr, func(r *vcr.Region, underROP bool) {
			if underROP && !r.Opts.ReadOnly {
				add(VRWUnderROP, v.id, "rw region %s under a read-only parent", r.Opts.ID)
				broken = true
			}
			for _, addr := range r.Opts.Target {
				if _, err := vcr.Canonical(addr); err != nil {
					add(VMalformedTarget, v.id, "target %q: %v", short(addr), err)
					broken = true
				}
			}
		})
		if broken {
			continue
		}
		walkWithROP(v.vcr, func(r *vcr.Region, underROP bool) {
			for _, addr := range r.Opts.Target {
				c, _ := vcr.Canonical(addr)
				t, ok := live[c]
				if !ok {
					if d, isDel := deleting[c]; isDel && r.Opts.ReadOnly {
						add(VLiveReferencesDeleting, d.ID, "live volume %s names %s, which is DELETING", v.id, c)
						t, ok = d, true
					}
				}
				switch {
				case !ok && r.Opts.ReadOnly:
					add(VROTargetUnresolved, v.id, "read-only target %s resolves to no registered target", c)
					healthy = false
					continue
				case !ok:
					add(VRWTargetUnresolved, v.id, "rw target %s resolves to no registered rw region", c)
					healthy = false
					continue
				case r.Opts.ReadOnly && !t.Kind.ReadOnly():
					add(VROTargetUnresolved, v.id, "read-only target %s is rw region %s", c, t.ID)
					healthy = false
					continue
				case !r.Opts.ReadOnly && t.Kind != KindRWRegion:
					add(VRWTargetUnresolved, v.id, "rw target %s is read-only target %s", c, t.ID)
					healthy = false
					continue
				}
				if r.Opts.ReadOnly {
					if roSeen[t.ID] {
						add(VROTargetTwiceInVCR, v.id, "read-only target %s named twice", c)
					}
					roSeen[t.ID] = true
					expectedUsage[t.ID]++
				} else {
					if t.OwnerVolumeID != v.id {
						add(VRWOwnerMismatch, t.ID, "live volume %s names rw region owned by %s", v.id, t.OwnerVolumeID)
					}
					if other, dup := rwNamedBy[t.ID]; dup && other != v.id {
						add(VRWTargetNamedByTwoVolumes, t.ID, "named by live volumes %s and %s", other, v.id)
					}
					rwNamedBy[t.ID] = v.id
				}
				if prev, seen := expectedIndex[t.ID]; seen && prev != r.Opts.ReadOnly {
					healthy = false
				}
				expectedIndex[t.ID] = r.Opts.ReadOnly
			}
		})
		// Ledger counts and duplicate ledger rows for this volume.
		for t, want := range expectedUsage {
			got := actual[pair{v.id, t}]
			switch {
			case got > 1 && want == 1:
				add(VDuplicateUsageRow, t, "volume %s holds %d usage rows", v.id, got)
			case got != want:
				add(VUsageCountMismatch, t, "volume %s: VCR names it %d times, %d usage rows", v.id, want, got)
			}
		}
		for p, got := range actual {
			if p.volume == v.id && expectedUsage[p.target] == 0 {
				add(VUsageCountMismatch, p.target, "volume %s: VCR does not name it, %d usage rows", v.id, got)
			}
		}
		if !healthy {
			continue
		}
		for t, ro := range expectedIndex {
			row, ok := index[pair{v.id, t}]
			switch {
			case !ok:
				add(VIndexRowMissing, v.id, "VCR names target %s, index does not", t)
			case row.readOnly != ro:
				add(VIndexReadOnlyMismatch, v.id, "target %s: index read_only=%v, VCR %v", t, row.readOnly, ro)
			}
		}
		for p := range index {
			if p.volume == v.id {
				if _, ok := expectedIndex[p.target]; !ok {
					add(VIndexRowExtra, v.id, "indexed under target %s, which its VCR does not name", p.target)
				}
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Code != out[j].Code {
			return out[i].Code < out[j].Code
		}
		return out[i].Subject < out[j].Subject
	})
	return out, nil
}

func sortedIDs(m map[uuid.UUID]Target) []uuid.UUID {
	out := make([]uuid.UUID, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// walkRegions visits every Region in the tree.
func walkRegions(v *vcr.VCR, fn func(*vcr.Region)) {
	walkWithROP(v, func(r *vcr.Region, _ bool) { fn(r) })
}

// walkWithROP visits every Region with whether it lies under a ROP.
func walkWithROP(v *vcr.VCR, fn func(r *vcr.Region, underROP bool)) {
	var rec func(n *vcr.VCR, under bool, depth int)
	rec = func(n *vcr.VCR, under bool, depth int) {
		if n == nil || depth > vcr.MaxDepth {
			return
		}
		switch {
		case n.Region != nil:
			fn(n.Region, under)
		case n.Volume != nil:
			for _, s := range n.Volume.SubVolumes {
				rec(s, under, depth+1)
			}
			rec(n.Volume.ReadOnlyParent, true, depth+1)
		}
	}
	rec(v, false, 0)
}

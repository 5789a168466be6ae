package server

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/datastore"
)

// ValidateSystem checks what no single service can: that the allocator (where
// bytes are), the registry (who owns and references them), the agents (what
// is served) and the orchestrator's locks and sagas agree.
//
// Register-before-create and unregister-after-destroy make every allocator
// region and region snapshot a registered target at every moment, so that
// check needs no quiet period. The reverse (an ACTIVE target with no row)
// and PENDING targets are judged only when no saga is running, because a
// running saga legitimately holds them between its nodes.
func (a *admin) ValidateSystem(ctx context.Context, _ *orchestratorv1.ValidateSystemRequest) (*orchestratorv1.ValidateSystemResponse, error) {
	v := &validator{a: a}
	if err := v.run(ctx); err != nil {
		return nil, grpcError(err)
	}
	return &orchestratorv1.ValidateSystemResponse{Violations: v.out}, nil
}

type validator struct {
	a   *admin
	out []*commonv1.Violation
}

func (v *validator) add(code, subject, format string, args ...any) {
	v.out = append(v.out, &commonv1.Violation{Code: code, Subject: subject, Detail: fmt.Sprintf(format, args...)})
}

func (v *validator) run(ctx context.Context) error {
	d := v.a.s.deps
	targets := map[string]*commonv1.Target{}
	for token := ""; ; {
		resp, err := d.Volumes.ListTargets(ctx, &volumev1.ListTargetsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("list targets: %w", err)
		}
		for _, t := range resp.Targets {
			targets[t.TargetId] = t
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	type row struct{ address, kind string }
	rows := map[string]row{}
	for token := ""; ; {
		resp, err := d.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("list regions: %w", err)
		}
		for _, r := range resp.Regions {
			kind := commonv1.TargetKind_TARGET_KIND_RW_REGION.String()
			if r.ReadOnly {
				kind = commonv1.TargetKind_TARGET_KIND_RO_REGION.String()
			}
			rows[r.RegionId] = row{address: r.Address, kind: kind}
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	for token := ""; ; {
		resp, err := d.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("list region snapshots: %w", err)
		}
		for _, rs := range resp.RegionSnapshots {
			rows[rs.TargetId] = row{address: rs.Address, kind: commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT.String()}
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	var running int
	if err := v.a.s.pool.QueryRow(ctx, `SELECT count(*) FROM saga WHERE saga_state IN ('running', 'unwinding')`).Scan(&running); err != nil {
		return err
	}
	quiet := running == 0

	for id, r := range rows {
		t, ok := targets[id]
		switch {
		case !ok:
			v.add("unregistered_allocation", id, "the allocator has a %s that the registry does not know (created before registration, or unregistered before destruction)", r.kind)
		case t.Kind.String() != r.kind:
			v.add("kind_mismatch", id, "allocator says %s, registry says %s", r.kind, t.Kind)
		case t.State != commonv1.TargetState_TARGET_STATE_PENDING && r.address != "" && t.Address != r.address:
			v.add("address_mismatch", id, "allocator serves it at %s, registry says %s", r.address, t.Address)
		}
	}
	var probe []string
	for id, t := range targets {
		_, hasRow := rows[id]
		switch t.State {
		case commonv1.TargetState_TARGET_STATE_PENDING:
			if quiet {
				v.add("stuck_pending", id, "%s registered PENDING with no saga running", t.Kind)
			}
		case commonv1.TargetState_TARGET_STATE_ACTIVE:
			if !hasRow {
				if quiet {
					v.add("registered_without_allocation", id, "ACTIVE %s at %s has no allocator row", t.Kind, t.Address)
				}
				continue
			}
			probe = append(probe, t.Address)
		case commonv1.TargetState_TARGET_STATE_DELETING:
			if quiet {
				v.add("stuck_deleting", id, "%s reached zero references but was never destroyed and unregistered", t.Kind)
			}
		}
	}
	if len(probe) > 0 {
		resp, err := d.Allocator.ProbeTargets(ctx, &allocatorv1.ProbeTargetsRequest{Addresses: probe})
		if err != nil {
			return fmt.Errorf("probe targets: %w", err)
		}
		for _, p := range resp.Probes {
			if p.Result == allocatorv1.ProbeResult_PROBE_RESULT_DESTROYED {
				v.add("active_target_not_served", p.Address, "an ACTIVE target's agent serves nothing there")
			}
		}
	}
	return v.locksAndSagas(ctx, quiet)
}

func (v *validator) locksAndSagas(ctx context.Context, quiet bool) error {
	st := v.a.s.store
	for after := uuid.Nil; ; {
		locks, err := st.ListLocks(ctx, after, 1000)
		if err != nil {
			return err
		}
		for _, l := range locks {
			if err := v.lockOwner(ctx, l, quiet); err != nil {
				return err
			}
			after = l.VolumeID
		}
		if len(locks) < 1000 {
			break
		}
	}
	rows, err := v.a.s.pool.Query(ctx, `SELECT DISTINCT s.id, s.name FROM saga s
		JOIN saga_node_event e ON e.saga_id = s.id AND e.event_type = 'undo_failed'
		WHERE s.saga_state <> 'abandoned'`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			return err
		}
		v.add("stuck_saga", id.String(), "%s saga is stuck (an undo failed); an operator must repair and abandon it", name)
	}
	return rows.Err()
}

// lockOwner checks that a lock's holder record exists and is not terminal.
func (v *validator) lockOwner(ctx context.Context, l datastore.Lock, quiet bool) error {
	st := v.a.s.store
	switch l.HolderKind {
	case datastore.HolderReadOnlyReplacement:
		r, err := st.GetReadOnlyRequest(ctx, l.RepairID)
		if err != nil {
			v.add("orphan_lock", l.VolumeID.String(), "held by missing read-only replacement %s", l.RepairID)
		} else if terminal(r.State) {
			v.add("orphan_lock", l.VolumeID.String(), "held by %s read-only replacement %s", r.State, l.RepairID)
		}
	case datastore.HolderStep:
		s, err := st.GetStep(ctx, l.RepairID)
		if err != nil {
			v.add("orphan_lock", l.VolumeID.String(), "held by missing step %s", l.RepairID)
		} else if s.State != datastore.StepRequested && s.State != datastore.StepRunning {
			v.add("orphan_lock", l.VolumeID.String(), "held by %s step %s", s.State, l.RepairID)
		}
	case datastore.HolderRegionReplacement:
		r, err := st.GetRegionRequest(ctx, l.RepairID)
		if err != nil {
			v.add("orphan_lock", l.VolumeID.String(), "held by missing region replacement %s", l.RepairID)
		} else if r.State == datastore.RWComplete {
			v.add("orphan_lock", l.VolumeID.String(), "held by complete region replacement %s", l.RepairID)
		}
	default:
		// Snapshot creation holds its lock for one saga's run.
		if quiet {
			v.add("orphan_lock", l.VolumeID.String(), "%s lock %s with no saga running", l.HolderKind, l.RepairID)
		}
	}
	return nil
}

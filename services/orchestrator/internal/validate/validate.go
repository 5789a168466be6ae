// Package validate is ValidateSystem: the checks no single service can make,
// across the allocator (where bytes are), the registry (who owns and
// references them), the agents (what is served), the notifier's attachments
// and the orchestrator's locks, records and sagas. The admin API serves it;
// tests call Run directly against the same services.
package validate

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// Run checks what no single service can: that the allocator (where
// bytes are), the registry (who owns and references them), the agents (what
// is served), the notifier's attachments and the orchestrator's locks,
// records and sagas agree.
//
// Register-before-create and unregister-after-destroy make every allocator
// region and region snapshot a registered target at every moment, so that
// check needs no quiet period. The reverse (an ACTIVE target with no row),
// PENDING targets, snapshot locks and attachments of deleted volumes are
// judged only when no saga ran at any moment of the validation, because a
// running saga legitimately holds them between its nodes: those findings
// are kept only if no saga was running at the start or at the end and none
// was created in between (saga rows are never deleted, so their count
// tells). The checks of the orchestrator's own records read the records and
// the saga log in one statement, one snapshot, so they need no quiet period.
//
// Violation codes (stable; scripts and tests match on them):
//
//	unregistered_allocation        allocator row the registry does not know
//	kind_mismatch                  allocator and registry disagree on the kind
//	address_mismatch               allocator and registry disagree on the address
//	stuck_pending                  PENDING target, no saga running (quiet)
//	registered_without_allocation  ACTIVE target with no allocator row (quiet)
//	stuck_deleting                 DELETING target never destroyed (quiet)
//	active_target_not_served       ACTIVE target whose agent serves nothing
//	orphan_lock                    repair lock whose holder is gone or finished
//	stuck_saga                     saga with a failed undo no operator skipped, not abandoned
//	deleted_volume_attached        attachment (subject) of a soft- or hard-deleted volume (quiet)
//	operating_saga_not_running     request or step (subject) whose operating saga is finished, abandoned or unknown
//	duplicate_step                 volume (subject) with more than one step of one request
//	stash_stepped                  step (subject) made for a replacement's stash or reference volume
//
// Run validates the system and returns every violation found (none when
// healthy).
func Run(ctx context.Context, deps *sagadef.Deps, st *store.Store) ([]*commonv1.Violation, error) {
	return run(ctx, deps, st, probeBatchSize)
}

// probeBatchSize is how many addresses one ProbeTargets call carries. The
// agent answers each address with its own queries, so one call for every
// ACTIVE target of a rack (tens of thousands) outlasted a call's deadline
// under load; one call per batch keeps each call short whatever the rack's
// size. A request of 500 addresses is a few tens of kilobytes, far inside
// gRPC's message limit (the allocator sets no bound of its own). The
// batches go one after the other, not in parallel: validation runs beside
// replacements, on the agents they are using.
const probeBatchSize = 500

// run is Run with the probe batch size a test can make small.
func run(ctx context.Context, deps *sagadef.Deps, st *store.Store, probeBatch int) ([]*commonv1.Violation, error) {
	v := &validator{deps: deps, store: st, pool: st.Pool(), probeBatch: probeBatch}
	if err := v.run(ctx); err != nil {
		return nil, err
	}
	return v.violations(), nil
}

type validator struct {
	deps  *sagadef.Deps
	store *store.Store
	pool  *pgxpool.Pool
	out   []finding
	// start is the saga log's state when validation began; quiet says no
	// saga was running then (quiet-only checks that cost RPCs are skipped
	// otherwise, their findings would be dropped anyway).
	start sagaMark
	quiet bool
	// probeBatch bounds the addresses of one ProbeTargets call.
	probeBatch int
}

type finding struct {
	v *commonv1.Violation
	// quietOnly: kept only if no saga ran during the validation.
	quietOnly bool
}

// sagaMark is what tells whether any saga ran between two moments.
type sagaMark struct{ unfinished, total int }

func (v *validator) mark(ctx context.Context) (sagaMark, error) {
	var m sagaMark
	err := v.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE saga_state IN ('running', 'unwinding')), count(*) FROM saga`).
		Scan(&m.unfinished, &m.total)
	return m, err
}

func (v *validator) add(code, subject, format string, args ...any) {
	v.out = append(v.out, finding{v: &commonv1.Violation{Code: code, Subject: subject, Detail: fmt.Sprintf(format, args...)}})
}

// addQuiet records a finding that only counts if no saga ran meanwhile.
func (v *validator) addQuiet(code, subject, format string, args ...any) {
	v.out = append(v.out, finding{v: &commonv1.Violation{Code: code, Subject: subject, Detail: fmt.Sprintf(format, args...)}, quietOnly: true})
}

// finish drops the quiet-only findings unless the saga log stayed quiet
// from start to end.
func (v *validator) finish(ctx context.Context) error {
	end, err := v.mark(ctx)
	if err != nil {
		return err
	}
	stayedQuiet := v.quiet && end.unfinished == 0 && end.total == v.start.total
	kept := v.out[:0]
	for _, f := range v.out {
		if !f.quietOnly || stayedQuiet {
			kept = append(kept, f)
		}
	}
	v.out = kept
	return nil
}

func (v *validator) violations() []*commonv1.Violation {
	out := make([]*commonv1.Violation, len(v.out))
	for i, f := range v.out {
		out[i] = f.v
	}
	return out
}

func (v *validator) run(ctx context.Context) error {
	var err error
	if v.start, err = v.mark(ctx); err != nil {
		return err
	}
	v.quiet = v.start.unfinished == 0
	if err := v.registry(ctx); err != nil {
		return err
	}
	if err := v.locksAndSagas(ctx); err != nil {
		return err
	}
	if err := v.attachments(ctx); err != nil {
		return err
	}
	if err := v.records(ctx); err != nil {
		return err
	}
	if err := v.stashSteps(ctx); err != nil {
		return err
	}
	return v.finish(ctx)
}

// registry checks the allocator against the registry and the agents.
func (v *validator) registry(ctx context.Context) error {
	d := v.deps
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
	probedID := map[string]string{} // address → the ACTIVE target probed there
	for id, t := range targets {
		_, hasRow := rows[id]
		switch t.State {
		case commonv1.TargetState_TARGET_STATE_PENDING:
			v.addQuiet("stuck_pending", id, "%s registered PENDING with no saga running", t.Kind)
		case commonv1.TargetState_TARGET_STATE_ACTIVE:
			if !hasRow {
				v.addQuiet("registered_without_allocation", id, "ACTIVE %s at %s has no allocator row", t.Kind, t.Address)
				continue
			}
			probe = append(probe, t.Address)
			probedID[t.Address] = id
		case commonv1.TargetState_TARGET_STATE_DELETING:
			v.addQuiet("stuck_deleting", id, "%s reached zero references but was never destroyed and unregistered", t.Kind)
		}
	}
	// Sorted, so the batches (and a failure's place among them) are the
	// same from one run to the next.
	sort.Strings(probe)
	for start := 0; start < len(probe); start += v.probeBatch {
		batch := probe[start:min(start+v.probeBatch, len(probe))]
		resp, err := d.Allocator.ProbeTargets(ctx, &allocatorv1.ProbeTargetsRequest{Addresses: batch})
		if err != nil {
			return fmt.Errorf("probe targets %d-%d of %d: %w", start+1, start+len(batch), len(probe), err)
		}
		for _, p := range resp.Probes {
			if p.Result != allocatorv1.ProbeResult_PROBE_RESULT_DESTROYED {
				continue
			}
			// The registry was read before the probe: meanwhile the target
			// may have reached zero references (DELETING), been destroyed
			// and unregistered, as a replacement's garbage collection does.
			// A target only moves on from ACTIVE, so one still ACTIVE at
			// the same address now was ACTIVE when the probe found nothing.
			still, err := v.stillActiveAt(ctx, probedID[p.Address], p.Address)
			if err != nil {
				return err
			}
			if still {
				v.add("active_target_not_served", p.Address, "an ACTIVE target's agent serves nothing there")
			}
		}
	}
	return nil
}

// stillActiveAt reports whether target id is still registered ACTIVE at
// address.
func (v *validator) stillActiveAt(ctx context.Context, id, address string) (bool, error) {
	resp, err := v.deps.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: id})
	if status.Code(err) == codes.NotFound {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get target %s: %w", id, err)
	}
	t := resp.GetTarget()
	return t.GetState() == commonv1.TargetState_TARGET_STATE_ACTIVE && t.GetAddress() == address, nil
}

func (v *validator) locksAndSagas(ctx context.Context) error {
	st := v.store
	for after := uuid.Nil; ; {
		locks, err := st.ListLocks(ctx, after, 1000)
		if err != nil {
			return err
		}
		for _, l := range locks {
			if err := v.lockOwner(ctx, l); err != nil {
				return err
			}
			after = l.VolumeID
		}
		if len(locks) < 1000 {
			break
		}
	}
	// An undo_failed an operator skipped (AbandonSaga on a stuck saga) no
	// longer holds the saga: it unwinds on, or is stuck again elsewhere.
	rows, err := v.pool.Query(ctx, `SELECT DISTINCT s.id, s.name FROM saga s
		JOIN saga_node_event e ON e.saga_id = s.id AND e.event_type = 'undo_failed'
		WHERE s.saga_state <> 'abandoned' AND NOT EXISTS (SELECT 1 FROM saga_node_event k
			WHERE k.saga_id = e.saga_id AND k.node_id = e.node_id AND k.event_type = 'undo_skipped')`)
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
		v.add("stuck_saga", id.String(), "%s saga is stuck (an undo failed); an operator must repair what that undo left, then abandon it to unwind the rest", name)
	}
	return rows.Err()
}

// lockOwner checks that a lock's holder record exists and is not terminal.
func (v *validator) lockOwner(ctx context.Context, l store.Lock) error {
	st := v.store
	var why string
	switch l.HolderKind {
	case store.HolderReadOnlyReplacement:
		r, err := st.GetROReplacement(ctx, l.RepairID)
		if err != nil {
			why = fmt.Sprintf("held by missing read-only replacement %s", l.RepairID)
		} else if r.State.Terminal() {
			why = fmt.Sprintf("held by %s read-only replacement %s", r.State, l.RepairID)
		}
	case store.HolderStep:
		s, err := st.GetStep(ctx, l.RepairID)
		if err != nil {
			why = fmt.Sprintf("held by missing step %s", l.RepairID)
		} else if s.State != store.StepRequested && s.State != store.StepRunning {
			why = fmt.Sprintf("held by %s step %s", s.State, l.RepairID)
		}
	case store.HolderRegionReplacement:
		r, err := st.GetRWReplacement(ctx, l.RepairID)
		if err != nil {
			why = fmt.Sprintf("held by missing region replacement %s", l.RepairID)
		} else if r.State.Terminal() {
			why = fmt.Sprintf("held by complete region replacement %s", l.RepairID)
		}
	default:
		// Snapshot creation holds its lock for one saga's run.
		v.addQuiet("orphan_lock", l.VolumeID.String(), "%s lock %s with no saga running", l.HolderKind, l.RepairID)
		return nil
	}
	if why == "" {
		return nil
	}
	// The lock was listed before its holder was read. A record ends and
	// releases its lock in one transaction, so a holder seen ended while
	// its lock is still there afterwards is a real orphan; a lock gone by
	// now was released in between (a step completing while we looked).
	var held bool
	if err := v.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM volume_repair WHERE volume_id = $1 AND repair_id = $2)`,
		l.VolumeID, l.RepairID).Scan(&held); err != nil {
		return err
	}
	if held {
		v.add("orphan_lock", l.VolumeID.String(), "%s", why)
	}
	return nil
}

// attachments checks that no soft- or hard-deleted volume is still attached
// (an Upstairs running it, or one the notifier still tracks in any state).
// Judged only when quiet: a volume-delete saga soft-deletes the volume
// first and detaches its Upstairs after. One GetVolume per attached volume:
// attachments are far fewer than volumes.
func (v *validator) attachments(ctx context.Context) error {
	if !v.quiet {
		return nil
	}
	d := v.deps
	byVolume := map[string][]*notifierv1.Attachment{}
	var volumes []string
	for token := ""; ; {
		resp, err := d.Notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("list attachments: %w", err)
		}
		for _, a := range resp.Attachments {
			if _, seen := byVolume[a.VolumeId]; !seen {
				volumes = append(volumes, a.VolumeId)
			}
			byVolume[a.VolumeId] = append(byVolume[a.VolumeId], a)
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	for _, vol := range volumes {
		resp, err := d.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: vol})
		var gone string
		switch {
		case status.Code(err) == codes.NotFound:
			gone = "hard-deleted (or never created)"
		case err != nil:
			return fmt.Errorf("get volume %s: %w", vol, err)
		case resp.Volume.GetTimeDeleted() != nil:
			gone = "soft-deleted"
		default:
			continue
		}
		for _, a := range byVolume[vol] {
			v.addQuiet("deleted_volume_attached", a.AttachmentId, "%s %s attachment at %s is of volume %s, which is %s",
				enumName(a.State, "ATTACHMENT_STATE_"), enumName(a.Kind, "UPSTAIRS_KIND_"), a.Endpoint, vol, gone)
		}
	}
	return nil
}

// recordsSQL finds every read-only request, step and rw request that names
// an operating saga which is not running (finished, stuck, abandoned, or
// not in the log at all). Claims are made by the saga itself, after its row
// exists, and released by it before it finishes, so in one snapshot a
// record naming a saga always sees that saga unfinished: no quiet period.
const recordsSQL = `
SELECT r.what, r.id, r.state, r.operating_saga_id, s.saga_state, s.name
FROM (
	SELECT 'read-only replacement' AS what, id, state, operating_saga_id FROM ro_replacement WHERE operating_saga_id IS NOT NULL
	UNION ALL
	SELECT 'replacement step', id, state, operating_saga_id FROM ro_replacement_step WHERE operating_saga_id IS NOT NULL
	UNION ALL
	SELECT 'region replacement', id, state, operating_saga_id FROM rw_replacement WHERE operating_saga_id IS NOT NULL
) r
LEFT JOIN saga s ON s.id = r.operating_saga_id
WHERE s.id IS NULL OR s.saga_state NOT IN ('running', 'unwinding')
ORDER BY r.what, r.id`

// duplicateStepsSQL finds volumes with more than one step of one request.
// Step inserts refuse a volume with a step in progress and the step swaps
// the volume off the old target, so a second step of the same request means
// a step that did not do its work.
const duplicateStepsSQL = `
SELECT volume_id, request_id, array_agg(id::text ORDER BY request_time, id)
FROM ro_replacement_step
GROUP BY request_id, volume_id
HAVING count(*) > 1
ORDER BY volume_id, request_id`

// records checks the orchestrator's own request and step tables against its
// saga log, and the steps against each other.
func (v *validator) records(ctx context.Context) error {
	pool := v.pool
	rows, err := pool.Query(ctx, recordsSQL)
	if err != nil {
		return err
	}
	var what, state string
	var id, sagaID uuid.UUID
	var sagaState, sagaName *string
	_, err = pgx.ForEachRow(rows, []any{&what, &id, &state, &sagaID, &sagaState, &sagaName}, func() error {
		switch {
		case sagaState == nil:
			v.add("operating_saga_not_running", id.String(), "%s %s is %s under saga %s, which does not exist", what, id, state, sagaID)
		default:
			v.add("operating_saga_not_running", id.String(), "%s %s is %s under %s saga %s, which is %s", what, id, state, *sagaName, sagaID, *sagaState)
		}
		return nil
	})
	if err != nil {
		return err
	}
	rows, err = pool.Query(ctx, duplicateStepsSQL)
	if err != nil {
		return err
	}
	var volume, request uuid.UUID
	var steps []string
	_, err = pgx.ForEachRow(rows, []any{&volume, &request, &steps}, func() error {
		v.add("duplicate_step", volume.String(), "%d steps of read-only replacement %s: %v", len(steps), request, steps)
		return nil
	})
	return err
}

// enumName is an enum value's name without its prefix, in lower case
// ("running" for ATTACHMENT_STATE_RUNNING).
func enumName(v fmt.Stringer, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(v.String(), prefix))
}

// stashStepsSQL finds steps whose volume is a stash some step or request
// recorded, or one of the volumes $1 (the volume-service's stash and
// reference volumes). A stash names the old target from its swap on;
// stepping it chases the target from stash to stash, and its own step's
// swap-back can then no longer put the target back.
const stashStepsSQL = `
SELECT s.id, s.volume_id, s.state,
	coalesce((SELECT 'the stash of step ' || o.id FROM ro_replacement_step o WHERE o.old_snapshot_volume_id = s.volume_id LIMIT 1),
	         (SELECT 'the stash of request ' || r.id FROM ro_replacement r WHERE r.old_snapshot_volume_id = s.volume_id LIMIT 1),
	         (SELECT 'the reference volume of request ' || r.id FROM ro_replacement r WHERE r.new_region_volume_id = s.volume_id LIMIT 1),
	         'a ' || $2::text || ' volume')
FROM ro_replacement_step s
WHERE s.volume_id = ANY($1)
   OR EXISTS (SELECT 1 FROM ro_replacement_step o WHERE o.old_snapshot_volume_id = s.volume_id)
   OR EXISTS (SELECT 1 FROM ro_replacement r WHERE r.old_snapshot_volume_id = s.volume_id OR r.new_region_volume_id = s.volume_id)
ORDER BY s.id`

// stashSteps checks that no step was made for a stash or reference volume:
// those the volume-service knows by purpose, and those the orchestrator's
// records name (hard-deleted ones included).
func (v *validator) stashSteps(ctx context.Context) error {
	var special []uuid.UUID
	for token := ""; ; {
		resp, err := v.deps.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000, PageToken: token, IncludeDeleted: true})
		if err != nil {
			return fmt.Errorf("list volumes: %w", err)
		}
		for _, vol := range resp.Volumes {
			if vol.Purpose == volumev1.VolumePurpose_VOLUME_PURPOSE_STASH || vol.Purpose == volumev1.VolumePurpose_VOLUME_PURPOSE_REFERENCE {
				id, err := uuid.Parse(vol.VolumeId)
				if err != nil {
					return fmt.Errorf("volume-service listed volume id %q: %w", vol.VolumeId, err)
				}
				special = append(special, id)
			}
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	rows, err := v.pool.Query(ctx, stashStepsSQL, special, "stash or reference")
	if err != nil {
		return err
	}
	var step, volume uuid.UUID
	var state, what string
	_, err = pgx.ForEachRow(rows, []any{&step, &volume, &state, &what}, func() error {
		v.add("stash_stepped", step.String(), "%s step %s is of volume %s, %s", state, step, volume, what)
		return nil
	})
	return err
}

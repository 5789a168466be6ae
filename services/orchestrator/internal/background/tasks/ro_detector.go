package tasks

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// roDetector creates a read-only replacement request for every region
// snapshot and read-only region on an expunged disk (docs/replacement.md,
// "How the background tasks chain"). A request locks the snapshot volume, so
// the targets of one snapshot are replaced one after another; contention is
// retried silently on the next pass.
type roDetector struct {
	env  Env
	lost lostAnswers // targets whose request insert ended in an error
	// listings paces the listing (the zero value lists every pass).
	listings listingPacer
}

// DetectorStatus is the detector's status per activation.
type DetectorStatus struct {
	RequestsCreatedOK []string `json:"requests_created_ok"`
	Skipped           Skips    `json:"skipped"`
	Errors            []string `json:"errors"`
	// ListingPaced: this pass did not list the expunged disks' targets
	// (the last listing was clean and recent; a later pass will).
	ListingPaced bool `json:"listing_paced,omitempty"`
}

// RODetectorName is the task's name (AdminService, metrics, logs).
const RODetectorName = "ro_replacement_detector"

func (t *roDetector) Name() string { return RODetectorName }
func (t *roDetector) Description() string {
	return "creates read-only replacement requests for region snapshots and read-only regions on expunged disks"
}

func (t *roDetector) Activate(ctx context.Context) any {
	st := &DetectorStatus{RequestsCreatedOK: []string{}, Errors: []string{}}
	d := t.env.Deps
	if !t.listings.due(ctx, func() { sagadef.Wakeup(d.Wake.RODetector) }) {
		st.ListingPaced = true
		return st
	}
	t.list(ctx, st)
	t.listings.listed(len(st.Errors) == 0 && st.Skipped.Total == 0)
	if len(st.RequestsCreatedOK) > 0 {
		sagadef.Wakeup(d.Wake.ROStart)
	}
	return st
}

// list creates a request for every listed target that has none.
func (t *roDetector) list(ctx context.Context, st *DetectorStatus) {
	d := t.env.Deps
	token := ""
	for {
		resp, err := d.Allocator.ListExpungedTargets(ctx, &allocatorv1.ListExpungedTargetsRequest{PageSize: 1000, PageToken: token, OmitReadWriteRegions: true})
		if err != nil {
			errf(&st.Errors, "listing expunged targets: %v", err)
			return
		}
		for _, rs := range resp.RegionSnapshots {
			t.request(ctx, st, store.KindRegionSnapshot, rs.TargetId, rs.RegionId, rs.SnapshotId, rs.DatasetId)
		}
		for _, r := range resp.ReadOnlyRegions {
			// A read-only region is allocated for its snapshot's volume,
			// whose id is the snapshot id.
			t.request(ctx, st, store.KindReadOnlyRegion, r.RegionId, r.RegionId, r.AllocatedFor, "")
		}
		if token = resp.NextPageToken; token == "" {
			return
		}
	}
}

func (t *roDetector) request(ctx context.Context, st *DetectorStatus, kind store.ReadOnlyKind, target, region, snapshot, dataset string) {
	r := store.ROReplacement{ID: uuid.New(), Kind: kind}
	var err error
	if r.OldTargetID, err = uuid.Parse(target); err == nil {
		if r.OldRegionID, err = uuid.Parse(region); err == nil {
			r.OldSnapshotID, err = uuid.Parse(snapshot)
		}
	}
	if err != nil {
		errf(&st.Errors, "target %s: %v", target, err)
		return
	}
	r.LockVolumeID = r.OldSnapshotID
	if dataset != "" {
		ds, err := uuid.Parse(dataset)
		if err != nil {
			errf(&st.Errors, "target %s: %v", target, err)
			return
		}
		r.OldDatasetID = &ds
	}
	if got, err := t.env.Deps.Store.GetROReplacementByTarget(ctx, r.OldTargetID); err == nil {
		// At most one request per target over its lifetime.
		if t.lost.found(r.OldTargetID) {
			st.RequestsCreatedOK = append(st.RequestsCreatedOK, "created request "+got.ID.String()+" (an earlier pass lost the answer)")
		}
		return
	}
	r.Traceparent = newRequestTrace(ctx, "read-only replacement",
		attribute.String("replacement.id", r.ID.String()), attribute.String("replacement.kind", string(kind)),
		attribute.String("replacement.target_id", target))
	var got store.ROReplacement
	var created bool
	held, err := t.env.unlessHeld(ctx, uuid.Nil, func() (err error) {
		got, created, err = t.env.Deps.Store.InsertROReplacement(ctx, r)
		return err
	})
	switch {
	case held != nil:
		st.Skipped.Add("target %s: no new request: %s", target, heldText(held))
	case errors.Is(err, store.ErrLockHeld):
		// Another request or repair holds the snapshot volume: next pass
		// (its release wakes this task).
		st.Skipped.Add("target %s: %s", target, store.LockDetail(err))
	case err != nil:
		errf(&st.Errors, "request for target %s: %v", target, err)
		t.lost.note(r.OldTargetID)
	case created || t.lost.found(r.OldTargetID):
		st.RequestsCreatedOK = append(st.RequestsCreatedOK, "created request "+got.ID.String())
	}
}

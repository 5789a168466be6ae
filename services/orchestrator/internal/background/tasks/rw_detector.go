package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// rwDetector creates a rw region replacement request for every rw region on
// an expunged disk, keyed by region and locking the region's owning volume
// (docs/replacement.md, "rw request"); contention is retried silently on the
// next pass. Then it moves Requested requests on: a deleted volume completes
// the request at once (nothing to repair), the others get an rw-replacement-start saga.
type rwDetector struct {
	env     Env
	limiter *background.Limiter
	lost    lostAnswers // requests whose completion ended in an error
	// deletedScans paces the question "is its volume deleted?" over every
	// waiting request (one GetVolumeStates of them all). The task runs
	// after every finished rebuild, and a sled's expunge leaves hundreds
	// waiting: asked each pass, it cost as much as the rest of the pass.
	// Between scans only the requests the pass admits are asked. The
	// zero value scans every pass.
	deletedScans pacer
	// listings paces the listing of the expunged disks' rw regions (the
	// zero value lists every pass).
	listings listingPacer
}

// deletedScanEvery bounds how often the rw detector asks about the volume
// of every waiting request.
const deletedScanEvery = time.Second

// listingEvery bounds how often an activation of a detector lists every
// target on the expunged disks again after a clean listing.
const listingEvery = time.Second

// RWDetectorStatus is the rw detector's status per activation.
type RWDetectorStatus struct {
	RequestsCreatedOK   []string `json:"requests_created_ok"`
	StartInvokedOK      []string `json:"start_invoked_ok"`
	RequestsCompletedOK []string `json:"requests_completed_ok"`
	Skipped             Skips    `json:"skipped"`
	Errors              []string `json:"errors"`
	// Budgets: the rebuild budgets' plan this pass (shared with the
	// read-only start task).
	Budgets *BudgetStatus `json:"budgets,omitempty"`
	// ListingPaced: this pass did not list the expunged disks' regions
	// (the last listing was clean and recent; a later pass will).
	ListingPaced bool `json:"listing_paced,omitempty"`
}

// RWDetectorName is the task's name (AdminService, metrics, logs).
const RWDetectorName = "rw_replacement_detector"

func (t *rwDetector) Name() string { return RWDetectorName }
func (t *rwDetector) Description() string {
	return "creates rw region replacement requests for regions on expunged disks and starts rw-replacement-start for them"
}

func (t *rwDetector) Activate(ctx context.Context) any {
	st := &RWDetectorStatus{RequestsCreatedOK: []string{}, StartInvokedOK: []string{}, RequestsCompletedOK: []string{}, Errors: []string{}}
	if t.listings.due(ctx, func() { sagadef.Wakeup(t.env.Deps.Wake.RWDetector) }) {
		t.detect(ctx, st)
		t.listings.listed(len(st.Errors) == 0 && st.Skipped.Total == 0)
	} else {
		st.ListingPaced = true
	}
	t.start(ctx, st)
	return st
}

func (t *rwDetector) detect(ctx context.Context, st *RWDetectorStatus) {
	d := t.env.Deps
	token := ""
	for {
		resp, err := d.Allocator.ListExpungedTargets(ctx, &allocatorv1.ListExpungedTargetsRequest{PageSize: 1000, PageToken: token,
			OmitRegionSnapshots: true, OmitReadOnlyRegions: true})
		if err != nil {
			errf(&st.Errors, "listing expunged targets: %v", err)
			return
		}
		// Which of the page's regions already have a request (at most one
		// per region over its lifetime), asked for the page's regions
		// only: every request ever made would be read on every pass.
		var regions []uuid.UUID
		for _, r := range resp.ReadWriteRegions {
			if id, err := uuid.Parse(r.RegionId); err == nil {
				regions = append(regions, id)
			}
		}
		known, err := d.Store.RegionsWithRWRequest(ctx, regions)
		if err != nil {
			errf(&st.Errors, "requests for expunged regions: %v", err)
			return
		}
		var todo []string
		for _, r := range resp.ReadWriteRegions {
			if id, err := uuid.Parse(r.RegionId); err != nil || !known[id] {
				todo = append(todo, r.RegionId)
			}
		}
		t.requestAll(ctx, st, todo)
		if token = resp.NextPageToken; token == "" {
			return
		}
	}
}

// requestWorkers is how many regions' requests the detector creates at
// once. Each is a registry read and a locking insert, mostly round trips
// and a commit: one after another, a sled's 800 regions took 13 s, and no
// repair could start until the last was created.
const requestWorkers = 8

// requestAll creates a request for each region (none has one yet, as far
// as the pass knows), requestWorkers at a time, and adds what happened to
// st in the regions' order.
func (t *rwDetector) requestAll(ctx context.Context, st *RWDetectorStatus, regions []string) {
	parts := make([]RWDetectorStatus, len(regions))
	var g errgroup.Group
	g.SetLimit(requestWorkers)
	for i, region := range regions {
		g.Go(func() error {
			t.request(ctx, &parts[i], region)
			return nil
		})
	}
	_ = g.Wait() // request reports its errors in its part
	for _, p := range parts {
		st.RequestsCreatedOK = append(st.RequestsCreatedOK, p.RequestsCreatedOK...)
		st.Errors = append(st.Errors, p.Errors...)
		for _, item := range p.Skipped.Items {
			st.Skipped.Add("%s", item)
		}
	}
}

func (t *rwDetector) request(ctx context.Context, st *RWDetectorStatus, region string) {
	d := t.env.Deps
	id, err := uuid.Parse(region)
	if err != nil {
		errf(&st.Errors, "region %q: %v", region, err)
		return
	}
	// The registry knows the owner (ReplaceRegion changes it; the
	// allocator's allocated_for never does).
	tg, err := d.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: id.String()})
	if status.Code(err) == codes.NotFound {
		return // unregistered: its volume's deletion already freed it
	}
	if err != nil {
		errf(&st.Errors, "region %s: target: %v", id, err)
		return
	}
	owner, err := uuid.Parse(tg.Target.OwnerVolumeId)
	if err != nil {
		errf(&st.Errors, "region %s: owner %q: %v", id, tg.Target.OwnerVolumeId, err)
		return
	}
	r := store.RWReplacement{ID: uuid.New(), OldRegionID: id, VolumeID: owner}
	r.Traceparent = newRequestTrace(ctx, "rw region replacement",
		attribute.String("replacement.id", r.ID.String()), attribute.String("replacement.region_id", id.String()),
		attribute.String("replacement.volume_id", owner.String()))
	var got store.RWReplacement
	var created bool
	held, err := t.env.unlessHeld(ctx, uuid.Nil, func() (err error) {
		got, created, err = d.Store.InsertRWReplacement(ctx, r)
		return err
	})
	switch {
	case held != nil:
		st.Skipped.Add("region %s: no new request: %s", id, heldText(held))
	case errors.Is(err, store.ErrLockHeld):
		// Another request or repair holds the volume: next pass (the
		// release wakes this task).
		st.Skipped.Add("region %s: %s", id, store.LockDetail(err))
	case err != nil:
		errf(&st.Errors, "request for region %s: %v", id, err)
	case created:
		st.RequestsCreatedOK = append(st.RequestsCreatedOK, fmt.Sprintf("created request %s for region %s of volume %s", got.ID, id, owner))
	}
}

func (t *rwDetector) start(ctx context.Context, st *RWDetectorStatus) {
	d := t.env.Deps
	reqs, err := d.Store.RWReplacementsIn(ctx, store.RWRequested)
	if err != nil {
		errf(&st.Errors, "listing requested: %v", err)
		return
	}
	completedUnseen := advancedPast(&t.lost, reqs, func(r store.RWReplacement) uuid.UUID { return r.ID })
	// Whether each request's volume is deleted (its request completes at
	// once, nothing to repair), asked in one call for every waiting
	// request at most every deletedScanEvery, and in between for the
	// requests this pass admits only; a skipped scan schedules a pass for
	// when it is due, so a request whose volume a user deleted completes
	// within about that long even while it waits for a budget.
	scanAll, wait := t.deletedScans.due(uuid.Nil)
	if !scanAll && len(reqs) > 0 {
		t.deletedScans.kickAfter(wait, func() { sagadef.Wakeup(d.Wake.RWDetector) })
	}
	deleted := map[uuid.UUID]bool{}
	if scanAll {
		deleted = t.deletedVolumes(ctx, st, reqs)
	}
	waiting := reqs[:0:0]
	for _, r := range reqs {
		if !t.env.heldBy(r.ID, &st.Skipped, "request "+r.ID.String()) && deleted[r.VolumeID] && t.completeDeleted(ctx, st, r) {
			continue
		}
		waiting = append(waiting, r)
	}
	admitted, other, budgets, err := t.env.planFrom(ctx, kindRW, requestedLists{rw: waiting, haveRW: true})
	st.Budgets = budgets
	if err != nil {
		errf(&st.Errors, "planning under the rebuild budgets: %v", err)
	}
	if !scanAll && len(admitted) > 0 {
		starting := make([]store.RWReplacement, len(admitted))
		for i, c := range admitted {
			starting[i] = c.rw
		}
		deleted = t.deletedVolumes(ctx, st, starting)
	}
	for _, c := range admitted {
		r := c.rw
		adm := t.env.Admission
		if !scanAll && deleted[r.VolumeID] && t.env.holdOn(r.ID) == nil {
			// Admitted, but nothing to repair: its reservation goes back.
			adm.ended(r.ID)
			t.completeDeleted(ctx, st, r)
			continue
		}
		ok, err := startSaga(ctx, t.env, t.limiter, job{key: r.ID.String(), record: r.ID, request: r.ID, task: t.Name(), attempts: r.Attempts, skipped: &st.Skipped,
			ended: func() { adm.ended(r.ID) }}, sagadef.RWStart,
			sagadef.RWStartParams{RequestID: r.ID, VolumeID: r.VolumeID, OldRegionID: r.OldRegionID},
			saga.WithTraceParent(r.Traceparent), saga.WithSubject(r.ID.String()))
		switch {
		case err != nil:
			errf(&st.Errors, "request %s: start saga: %v", r.ID, err)
		case ok:
			st.StartInvokedOK = append(st.StartInvokedOK, "request "+r.ID.String())
		}
	}
	if other {
		sagadef.Wakeup(d.Wake.ROStart)
	}
	if len(st.RequestsCompletedOK) > 0 || completedUnseen > 0 {
		// A released volume lock may let another region of it, or a
		// read-only request on it, proceed.
		sagadef.Wakeup(d.Wake.RWDetector, d.Wake.RODetector)
	}
}

// deletedVolumes asks, in one call, which of reqs' volumes are deleted. On
// an error the pass goes on without (the start saga checks again).
func (t *rwDetector) deletedVolumes(ctx context.Context, st *RWDetectorStatus, reqs []store.RWReplacement) map[uuid.UUID]bool {
	if len(reqs) == 0 {
		return map[uuid.UUID]bool{}
	}
	vols := make([]uuid.UUID, 0, len(reqs))
	for _, r := range reqs {
		vols = append(vols, r.VolumeID)
	}
	deleted, err := sagadef.DeletedVolumes(ctx, t.env.Deps, vols)
	if err != nil {
		errf(&st.Errors, "volumes of %d requested requests: %v", len(vols), err)
		return map[uuid.UUID]bool{}
	}
	return deleted
}

// completeDeleted completes a Requested request whose volume is deleted
// (the caller leaves a held request alone), and says whether it did.
func (t *rwDetector) completeDeleted(ctx context.Context, st *RWDetectorStatus, r store.RWReplacement) bool {
	if err := t.env.Deps.Store.SetRWCompleteFromRequested(ctx, r.ID); err != nil {
		errf(&st.Errors, "request %s: complete: %v", r.ID, err)
		t.lost.note(r.ID)
		return false
	}
	st.RequestsCompletedOK = append(st.RequestsCompletedOK, "region replacement "+r.ID.String())
	return true
}

// Package demo drives a live read-only replacement on a running storagecp
// deployment, for `make run` and `storctl demo`: it seeds a demo rack,
// creates a disk, a snapshot and clones, attaches the clones to
// sim-upstairs, previews and expunges a disk holding one of the snapshot's
// region snapshots, shows the replacement's progress until every request
// is terminal, and ends with the system's consistency checks. Everything
// goes through the services' public gRPC APIs.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// Options shape a demo run.
type Options struct {
	// SimUpstairs are the sim-upstairs "host:port" addresses the clones are
	// constructed on, round-robin. Empty: the clones are not attached.
	SimUpstairs []string
	// UpstairsSince, when set, is when the sim-upstairs processes started
	// (storagecp-local knows): a Propolis attachment not updated since is
	// a leftover of an earlier run whatever its state, and is detached.
	UpstairsSince time.Time
	// Clones of the snapshot to create; default 10.
	Clones int
	// NonInteractive prints plain periodic progress lines instead of
	// redrawing in place, even on a terminal.
	NonInteractive bool
	// JaegerURL, when set (e.g. "http://127.0.0.1:16686"), is used to print
	// each replacement's trace URL.
	JaegerURL string
	// Out receives the demo's output when Run's writer is nil.
	Out io.Writer
	// Seed shapes the demo rack.
	Seed SeedOptions
	// Timeout bounds waiting for the replacement to finish (expunge to every
	// request terminal); default 5 minutes.
	Timeout time.Duration
	// StorctlPath and GrpcurlPath are what the closing hints run; defaults
	// ".run/bin/storctl" and ".run/bin/grpcurl" (where make run puts them).
	StorctlPath, GrpcurlPath string
}

func (o Options) withDefaults() Options {
	if o.Clones <= 0 {
		o.Clones = 10
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.StorctlPath == "" {
		o.StorctlPath = ".run/bin/storctl"
	}
	if o.GrpcurlPath == "" {
		o.GrpcurlPath = ".run/bin/grpcurl"
	}
	o.JaegerURL = strings.TrimRight(o.JaegerURL, "/")
	return o
}

// StepCounts are replacement steps by state.
type StepCounts struct {
	Requested, Running, Complete, Collecting, VolumeDeleted int64
}

// Total is every step.
func (s StepCounts) Total() int64 {
	return s.Requested + s.Running + s.Complete + s.Collecting + s.VolumeDeleted
}

// Done is the steps past their switch (complete, being collected, or
// with nothing left to do).
func (s StepCounts) Done() int64 { return s.Complete + s.Collecting + s.VolumeDeleted }

func (s *StepCounts) add(p *orchestratorv1.StepCounts) {
	s.Requested += p.GetRequested()
	s.Running += p.GetRunning()
	s.Complete += p.GetComplete()
	s.Collecting += p.GetCollecting()
	s.VolumeDeleted += p.GetVolumeDeleted()
}

// Result is what a demo run did.
type Result struct {
	// The volumes it made: the disk, its snapshot and the clones.
	VolumeID, SnapshotID string
	CloneIDs             []string
	// The expunged physical disk and its dataset.
	DiskID, DatasetID string
	// Whether ReplacementService.PreviewExpunge answered.
	PreviewAvailable bool
	// Every replacement request the expunge caused, by id, and their final
	// records.
	RequestIDs   []string
	Replacements []*orchestratorv1.Replacement
	// Final request counts by state ("read-only complete", "rw complete",
	// ...) and the steps of those requests by state.
	States map[string]int
	Steps  StepCounts
	// From the expunge call to every request terminal, as seen here.
	ExpungeToComplete time.Duration
	// W3C trace id of each request (request id → trace id), where recorded.
	TraceIDs map[string]string
}

// Run drives the demo and writes what happens to w (Options.Out when w is
// nil). It returns an error when a step fails, a request does not
// complete (DataLost included) within the timeout, or a consistency check
// is not clean.
func Run(ctx context.Context, c Clients, w io.Writer, o Options) (Result, error) {
	o = o.withDefaults()
	if w == nil {
		w = o.Out
	}
	if w == nil {
		w = io.Discard
	}
	a, err := c.api()
	if err != nil {
		return Result{}, err
	}
	d := &run{a: a, c: c, w: w, o: o, sims: map[string]*grpc.ClientConn{}}
	defer d.closeSims()
	return d.run(ctx)
}

type run struct {
	a    api
	c    Clients
	w    io.Writer
	o    Options
	res  Result
	sims map[string]*grpc.ClientConn
	// expungedAt is when the expunge was asked for: the replacement's
	// elapsed time counts from here.
	expungedAt time.Time
}

func (d *run) printf(format string, args ...any) { fmt.Fprintf(d.w, format, args...) }

func (d *run) run(ctx context.Context) (Result, error) {
	d.printf("\n── storagecp demo: a live read-only replacement ──\n\n")
	if err := d.waitLeader(ctx); err != nil {
		return d.res, err
	}
	if err := d.detachStale(ctx); err != nil {
		return d.res, err
	}
	rep, err := seedRack(ctx, d.a, d.o.Seed)
	if err != nil {
		return d.res, err
	}
	d.printf("  %-10s %s\n", "rack", rep)
	if err := d.makeVolumes(ctx); err != nil {
		return d.res, err
	}
	if err := d.attachClones(ctx); err != nil {
		return d.res, err
	}
	victim, err := d.chooseDisk(ctx, rep)
	if err != nil {
		return d.res, err
	}
	d.preview(ctx)
	if err := d.expunge(ctx, victim); err != nil {
		return d.res, err
	}
	if err := d.watch(ctx, victim); err != nil {
		return d.res, err
	}
	d.summary()
	if err := d.checks(ctx); err != nil {
		return d.res, err
	}
	d.hints()
	return d.res, nil
}

// waitLeader waits until the orchestrator leads: lifecycle RPCs answer
// UNAVAILABLE on a standby, and a fresh deployment takes the lease a
// moment after it is healthy.
func (d *run) waitLeader(ctx context.Context) error {
	return poll(ctx, time.Minute, "orchestrator leads", func() error {
		l, err := d.a.admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
		if err != nil {
			return err
		}
		if !l.GetIsLeader() {
			return fmt.Errorf("not leader yet (holder %q)", l.GetHolder())
		}
		return nil
	})
}

// detachStale tells the notifier that Upstairs gone with an earlier run
// are stopped. sim-upstairs keep their volumes in memory, so after a
// restart of `make run` the attachments of the previous demo's clones
// still read RUNNING while no Upstairs holds them, and a run interrupted
// mid-construction leaves them STARTING or FAILED. Any of these makes a
// replacement step's notification fail ("not active here", or a state
// that must settle first) and retry forever. An instance manager would
// report such a VMM as stopped: so does the demo, then it detaches them.
// Pantry attachments are the orchestrator's own and are left alone.
func (d *run) detachStale(ctx context.Context) error {
	var atts []*notifierv1.Attachment
	token := ""
	for {
		resp, err := d.a.notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("list attachments: %w", err)
		}
		atts = append(atts, resp.GetAttachments()...)
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	active := map[string]map[string]bool{} // endpoint → active volumes; nil: unreachable
	stale := 0
	for _, at := range atts {
		if at.GetKind() != notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS {
			continue
		}
		switch at.GetState() {
		case notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPED:
			continue
		case notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING,
			notifierv1.AttachmentState_ATTACHMENT_STATE_MIGRATING:
			// Possibly in progress right now (another client): only an
			// old one is left over.
			updated := at.GetTimeUpdated().AsTime()
			if updated.After(d.o.UpstairsSince) && time.Since(updated) < staleAfter {
				continue
			}
		case notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING,
			notifierv1.AttachmentState_ATTACHMENT_STATE_REBOOTING:
			vols, ok := active[at.GetEndpoint()]
			if !ok {
				var err error
				if vols, err = d.activeVolumes(ctx, at.GetEndpoint()); err != nil {
					return err
				}
				active[at.GetEndpoint()] = vols
			}
			if vols != nil && vols[at.GetVolumeId()] {
				continue
			}
		}
		if _, err := d.a.notifier.SetUpstairsState(ctx, &notifierv1.SetUpstairsStateRequest{
			AttachmentId: at.GetAttachmentId(), State: notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPED,
		}); err != nil && status.Code(err) != codes.NotFound {
			return fmt.Errorf("mark attachment %s stopped: %w", at.GetAttachmentId(), err)
		}
		if _, err := d.a.notifier.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: at.GetAttachmentId()}); err != nil {
			return fmt.Errorf("detach attachment %s: %w", at.GetAttachmentId(), err)
		}
		stale++
	}
	if stale > 0 {
		d.printf("  %-10s detached %d attachment(s) left by an earlier run (its sim-upstairs restarted, or it was interrupted)\n", "cleanup", stale)
	}
	return nil
}

// staleAfter is how long a STARTING or MIGRATING attachment must have
// been so before the demo takes it for a leftover.
const staleAfter = time.Minute

// activeVolumes asks an Upstairs which volumes it has active; nil when it
// cannot be reached (gone).
func (d *run) activeVolumes(ctx context.Context, endpoint string) (map[string]bool, error) {
	conn, err := d.sim(endpoint)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := upstairsv1.NewUpstairsServiceClient(conn).ListVolumes(cctx, &upstairsv1.ListVolumesRequest{})
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded:
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("list volumes on upstairs %s: %w", endpoint, err)
	}
	out := map[string]bool{}
	for _, v := range resp.GetVolumes() {
		if v.GetActive() {
			out[v.GetVolumeId()] = true
		}
	}
	return out, nil
}

func (d *run) sim(endpoint string) (*grpc.ClientConn, error) {
	if conn := d.sims[endpoint]; conn != nil {
		return conn, nil
	}
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial upstairs %s: %w", endpoint, err)
	}
	d.sims[endpoint] = conn
	return conn, nil
}

func (d *run) closeSims() {
	for _, conn := range d.sims {
		_ = conn.Close()
	}
}

// makeVolumes creates the disk, its snapshot and the clones, each a saga
// the orchestrator runs while the call waits.
func (d *run) makeVolumes(ctx context.Context) error {
	start := time.Now()
	err := retry(ctx, "create disk", func() (*orchestratorv1.SagaResult, error) {
		resp, err := d.a.lifecycle.CreateVolume(ctx, &orchestratorv1.CreateVolumeRequest{SizeBytes: GiB, Wait: true})
		d.res.VolumeID = resp.GetVolumeId()
		return resp.GetSaga(), err
	})
	if err != nil {
		return err
	}
	d.printf("  %-10s %s  1 GiB, 3 rw regions on distinct sleds  (%s)\n", "disk", d.res.VolumeID, since(start))

	start = time.Now()
	err = retry(ctx, "snapshot", func() (*orchestratorv1.SagaResult, error) {
		resp, err := d.a.lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: d.res.VolumeID, Wait: true})
		d.res.SnapshotID = resp.GetSnapshotId()
		return resp.GetSaga(), err
	})
	if err != nil {
		return err
	}
	d.printf("  %-10s %s  3 region snapshots  (%s)\n", "snapshot", d.res.SnapshotID, since(start))

	start = time.Now()
	for i := 0; i < d.o.Clones; i++ {
		var id string
		err := retry(ctx, "clone", func() (*orchestratorv1.SagaResult, error) {
			resp, err := d.a.lifecycle.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: d.res.SnapshotID, Wait: true})
			id = resp.GetVolumeId()
			return resp.GetSaga(), err
		})
		if err != nil {
			return err
		}
		d.res.CloneIDs = append(d.res.CloneIDs, id)
	}
	d.printf("  %-10s %d disks cloned from the snapshot, each reading it through its read-only parent  (%s)\n",
		"clones", len(d.res.CloneIDs), since(start))
	return nil
}

// attachClones constructs every clone on a sim-upstairs, as a VM start
// would: these are the running Upstairs each replacement step notifies.
func (d *run) attachClones(ctx context.Context) error {
	if len(d.o.SimUpstairs) == 0 {
		d.printf("  %-10s no sim-upstairs given: clones stay unattached\n", "attach")
		return nil
	}
	start := time.Now()
	for i, id := range d.res.CloneIDs {
		ep := d.o.SimUpstairs[i%len(d.o.SimUpstairs)]
		err := poll(ctx, 30*time.Second, "construct "+id, func() error {
			resp, err := d.a.notifier.ConstructVolume(ctx, &notifierv1.ConstructVolumeRequest{
				VolumeId: id, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: ep,
			})
			if status.Code(err) == codes.Unavailable {
				return err
			}
			if err != nil {
				return permanent{err}
			}
			if s := resp.GetAttachment().GetState(); s != notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
				return permanent{fmt.Errorf("attachment is %v: %s", s, resp.GetAttachment().GetError())}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	d.printf("  %-10s %d clones running on sim-upstairs %s  (%s)\n", "attach", len(d.res.CloneIDs),
		strings.Join(d.o.SimUpstairs, ", "), since(start))
	return nil
}

// victim is the disk the demo expunges and what lives on it.
type victim struct {
	disk    *allocatorv1.PhysicalDisk
	serial  string
	targets map[string]bool // region snapshot target ids and region ids on its dataset
	regions map[string]bool // region ids (rw and read-only) on its dataset
}

// chooseDisk picks, among the disks holding one of the new snapshot's
// region snapshots (each also holds the disk's rw region the snapshot was
// taken of), the one holding the most rw regions of the new clones, so the
// demo shows read-only and rw replacement side by side.
func (d *run) chooseDisk(ctx context.Context, rep seedReport) (victim, error) {
	snap, err := d.a.vol.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: d.res.SnapshotID})
	if err != nil {
		return victim{}, fmt.Errorf("get snapshot volume: %w", err)
	}
	datasets := map[string]bool{}
	for _, t := range snap.GetVolume().GetTargets() {
		if t.GetKind() == commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT && t.GetDatasetId() != "" {
			datasets[t.GetDatasetId()] = true
		}
	}
	disks, err := listDisks(ctx, d.a, "")
	if err != nil {
		return victim{}, err
	}
	ours := map[string]bool{d.res.VolumeID: true}
	for _, id := range d.res.CloneIDs {
		ours[id] = true
	}
	var best *allocatorv1.PhysicalDisk
	bestScore := -1
	for _, dk := range disks {
		if !datasets[dk.GetDatasetId()] || dk.GetPolicy() != allocatorv1.Policy_POLICY_IN_SERVICE {
			continue
		}
		regions, err := listRegions(ctx, d.a, dk.GetDatasetId())
		if err != nil {
			return victim{}, err
		}
		score := 0
		for _, r := range regions {
			if !r.GetReadOnly() && ours[r.GetAllocatedFor()] {
				score++
			}
		}
		if score > bestScore {
			best, bestScore = dk, score
		}
	}
	if best == nil {
		return victim{}, fmt.Errorf("no in-service disk holds a region snapshot of snapshot %s", d.res.SnapshotID)
	}
	v := victim{disk: best, serial: rep.SledSerial[best.GetSledId()], targets: map[string]bool{}, regions: map[string]bool{}}
	regions, err := listRegions(ctx, d.a, best.GetDatasetId())
	if err != nil {
		return victim{}, err
	}
	for _, r := range regions {
		v.targets[r.GetRegionId()] = true
		v.regions[r.GetRegionId()] = true
	}
	token := ""
	for {
		resp, err := d.a.alloc.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return victim{}, fmt.Errorf("list region snapshots: %w", err)
		}
		for _, rs := range resp.GetRegionSnapshots() {
			if rs.GetDatasetId() == best.GetDatasetId() {
				v.targets[rs.GetTargetId()] = true
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	d.res.DiskID, d.res.DatasetID = best.GetDiskId(), best.GetDatasetId()
	where := best.GetSledId()
	if v.serial != "" {
		where = v.serial
	}
	d.printf("\n  %-10s physical disk %s on %s (dataset %s)\n", "victim", best.GetDiskId(), where, best.GetDatasetAddress())
	d.printf("  %-10s holds one of the snapshot's region snapshots, the disk's rw region it was taken of, and %d rw region(s) of the clones\n",
		"", bestScore-1)
	return v, nil
}

func listRegions(ctx context.Context, a api, dataset string) ([]*allocatorv1.Region, error) {
	var out []*allocatorv1.Region
	token := ""
	for {
		resp, err := a.alloc.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000, PageToken: token, DatasetId: dataset})
		if err != nil {
			return nil, fmt.Errorf("list regions: %w", err)
		}
		out = append(out, resp.GetRegions()...)
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// preview shows what the expunge will replace. The preview is advisory:
// when the orchestrator cannot answer, the demo goes on.
func (d *run) preview(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	p, err := d.a.replacement.PreviewExpunge(ctx, &orchestratorv1.PreviewExpungeRequest{DiskId: d.res.DiskID})
	switch {
	case status.Code(err) == codes.Unimplemented:
		d.printf("  %-10s preview unavailable (PreviewExpunge is not implemented by this orchestrator)\n", "preview")
		return
	case err != nil:
		d.printf("  %-10s preview unavailable: %v\n", "preview", err)
		return
	}
	d.res.PreviewAvailable = true
	byKind := map[orchestratorv1.ReplacementKind]int{}
	var refs int64
	for _, t := range p.GetReadOnlyTargets() {
		byKind[t.GetKind()]++
		refs += t.GetReferencingVolumes()
	}
	d.printf("  %-10s expunging it replaces %d region snapshot(s) and %d read-only region(s) (%d volume reference(s)), and %d rw region(s)\n",
		"preview", byKind[orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT],
		byKind[orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_ONLY_REGION], refs, len(p.GetReadWriteRegions()))
	capacity := "capacity for every replacement region"
	if !p.GetCapacityOk() {
		capacity = "NOT ENOUGH CAPACITY: " + p.GetCapacityDetail()
	}
	loss := "no data loss"
	if p.GetDataLoss() {
		loss = "DATA WOULD BE LOST"
	}
	d.printf("  %-10s %s; %s\n", "", capacity, loss)
}

// expunge expunges the disk and activates both detectors, as `storctl
// disks expunge` does, so the replacement starts now rather than at the
// detectors' next period.
func (d *run) expunge(ctx context.Context, v victim) error {
	d.expungedAt = time.Now()
	if _, err := d.a.alloc.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: v.disk.GetDiskId()}); err != nil {
		return fmt.Errorf("expunge disk %s: %w", v.disk.GetDiskId(), err)
	}
	if err := d.activateDetectors(ctx); err != nil {
		return err
	}
	d.printf("\n  %-10s disk %s expunged; read-only and rw replacement detectors activated\n\n", "expunge", d.res.DiskID)
	return nil
}

func (d *run) activateDetectors(ctx context.Context) error {
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := d.a.admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			return fmt.Errorf("activate %s: %w", task, err)
		}
	}
	return nil
}

// maxListed bounds the requests listed by id: the demo keeps the volumes
// of earlier runs, so a later run's disk holds more of their rw regions.
const maxListed = 8

// summary prints the final requests, this run's snapshot's first.
func (d *run) summary() {
	d.printf("\n  %-10s every request is terminal %s after the expunge\n", "done", fmtDur(d.res.ExpungeToComplete))
	d.printf("  %-10s %d: %s\n", "requests", len(d.res.RequestIDs), statesLine(d.res.States))
	finished := ""
	if d.res.Steps.Done() == d.res.Steps.Total() {
		finished = ", every one switched"
	}
	d.printf("  %-10s %d, one per volume that referenced an expunged read-only target%s: %s\n", "steps",
		d.res.Steps.Total(), finished, stepsLine(d.res.Steps))
	d.printf("\n")
	for i, r := range d.res.Replacements {
		if i == maxListed && len(d.res.Replacements) > maxListed+1 {
			d.printf("    … and %d more (storctl replacements list)\n", len(d.res.Replacements)-i)
			break
		}
		line := fmt.Sprintf("    %s  %-16s %-9s", r.GetReplacementId(), kindName(r.GetKind()), stateName(r))
		if tid := d.res.TraceIDs[r.GetReplacementId()]; tid != "" {
			if d.o.JaegerURL != "" {
				line += "  " + d.o.JaegerURL + "/trace/" + tid
			} else {
				line += "  trace " + tid
			}
		}
		d.printf("%s\n", line)
	}
}

// checks ends the demo the way every end-to-end test ends: the
// volume-service's invariants, the cross-service validation once the
// sagas settle, and neither a data-loss probe nor a content mismatch on any
// sim-upstairs.
func (d *run) checks(ctx context.Context) error {
	// Garbage collection may still be finishing behind the last request.
	idleCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := d.a.admin.WaitIdle(idleCtx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		return fmt.Errorf("wait idle: %w", err)
	}
	inv, err := d.a.vol.CheckInvariants(ctx, &volumev1.CheckInvariantsRequest{})
	if err != nil {
		return fmt.Errorf("check invariants: %w", err)
	}
	val, err := d.a.admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		return fmt.Errorf("validate system: %w", err)
	}
	var lossEvents, mismatchEvents int64
	for _, ep := range d.o.SimUpstairs {
		conn, err := d.sim(ep)
		if err != nil {
			return err
		}
		resp, err := upstairsv1.NewUpstairsServiceClient(conn).ListVolumes(ctx, &upstairsv1.ListVolumesRequest{})
		if err != nil {
			return fmt.Errorf("list volumes on upstairs %s: %w", ep, err)
		}
		lossEvents += resp.GetTotalDataLossEvents()
		mismatchEvents += resp.GetTotalContentMismatchEvents()
	}
	d.printf("\n  %-10s CheckInvariants: %s   ValidateSystem: %s   data-loss probes: %d   content mismatches: %d\n", "checks",
		clean(len(inv.GetViolations())), clean(len(val.GetViolations())), lossEvents, mismatchEvents)
	var problems []string
	for _, v := range inv.GetViolations() {
		problems = append(problems, fmt.Sprintf("invariant %s on %s: %s", v.GetCode(), v.GetSubject(), v.GetDetail()))
	}
	for _, v := range val.GetViolations() {
		problems = append(problems, fmt.Sprintf("system %s on %s: %s", v.GetCode(), v.GetSubject(), v.GetDetail()))
	}
	for _, p := range problems {
		d.printf("    %s\n", p)
	}
	if lossEvents > 0 {
		problems = append(problems, fmt.Sprintf("%d data-loss probes on sim-upstairs", lossEvents))
	}
	if mismatchEvents > 0 {
		problems = append(problems, fmt.Sprintf("%d content mismatches on sim-upstairs", mismatchEvents))
	}
	if len(problems) > 0 {
		return fmt.Errorf("consistency checks: %s", strings.Join(problems, "; "))
	}
	return nil
}

func clean(n int) string {
	if n == 0 {
		return "clean"
	}
	return fmt.Sprintf("%d violation(s)", n)
}

// hints prints what to run next to look at what happened.
func (d *run) hints() {
	s, g := d.o.StorctlPath, d.o.GrpcurlPath
	orch, vol := d.c.Orchestrator.Target(), d.c.Volume.Target()
	// The first listed is this run's snapshot's request (see finish).
	var ro *orchestratorv1.Replacement
	if len(d.res.Replacements) > 0 && !isRW(d.res.Replacements[0]) {
		ro = d.res.Replacements[0]
	}
	d.printf("\nExplore what happened:\n")
	// storctl's defaults are make run's fixed ports; anything else is
	// passed the way storctl reads it.
	var env []string
	for _, e := range []struct{ name, addr, def string }{
		{"STORAGECP_VOLUME_ADDR", vol, "127.0.0.1:7101"},
		{"STORAGECP_ALLOCATOR_ADDR", d.c.Allocator.Target(), "127.0.0.1:7102"},
		{"STORAGECP_NOTIFIER_ADDR", d.c.Notifier.Target(), "127.0.0.1:7103"},
		{"STORAGECP_ORCHESTRATOR_ADDR", orch, "127.0.0.1:7104"},
	} {
		if e.addr != e.def && e.addr != "localhost"+strings.TrimPrefix(e.def, "127.0.0.1") {
			env = append(env, e.name+"="+e.addr)
		}
	}
	if len(env) > 0 {
		d.printf("  export %s\n", strings.Join(env, " "))
	}
	d.printf("  %s replacements list\n", s)
	if ro != nil {
		d.printf("  %s replacements show %s    # the read-only request and its steps\n", s, ro.GetReplacementId())
	}
	d.printf("  %s sagas list\n", s)
	if ro != nil && ro.GetNewRegionId() != "" {
		d.printf("  %s volumes refs %s    # the new read-only region: the snapshot and every clone\n", s, ro.GetNewRegionId())
	}
	d.printf("  %s disks list\n", s)
	d.printf("  %s validate\n", s)
	if ro != nil {
		d.printf("  %s -plaintext -d '{\"replacement_id\":\"%s\"}' %s storage.orchestrator.v1.ReplacementService/GetReplacement\n",
			g, ro.GetReplacementId(), orch)
	}
	d.printf("  %s -plaintext -d '{}' %s storage.orchestrator.v1.AdminService/ListSagas\n", g, orch)
	if ro != nil && ro.GetNewRegionId() != "" {
		d.printf("  %s -plaintext -d '{\"target_id\":\"%s\"}' %s storage.volume.v1.VolumeService/FindVolumesReferencingTarget\n",
			g, ro.GetNewRegionId(), vol)
	}
	if d.o.JaegerURL != "" && ro != nil {
		if tid := d.res.TraceIDs[ro.GetReplacementId()]; tid != "" {
			d.printf("\nThe read-only replacement as one trace: %s/trace/%s\n", d.o.JaegerURL, tid)
		}
	}
}

// traceID is the trace id of a W3C traceparent ("" when malformed).
func traceID(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 || len(parts[1]) != 32 || strings.Trim(parts[1], "0") == "" {
		return ""
	}
	return parts[1]
}

// permanent marks an error poll must not retry.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// poll calls f until it succeeds, fails permanently, or timeout passes,
// with a growing pause between calls.
func poll(ctx context.Context, timeout time.Duration, what string, f func() error) error {
	deadline := time.Now().Add(timeout)
	pause := 50 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return fmt.Errorf("%s: %w", what, p.error)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done after %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Second)
	}
}

// retry runs a lifecycle saga call until it succeeds. ABORTED ("volume
// repair lock": a replacement of an earlier run still holds the volume)
// and UNAVAILABLE (a leader change) are retried; a saga that did not
// succeed is an error.
func retry(ctx context.Context, what string, call func() (*orchestratorv1.SagaResult, error)) error {
	return poll(ctx, time.Minute, what, func() error {
		saga, err := call()
		if c := status.Code(err); c == codes.Aborted || c == codes.Unavailable {
			return err
		}
		if err != nil {
			return permanent{err}
		}
		if saga.GetOutcome() != orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED {
			return permanent{fmt.Errorf("saga %s ended %v at node %s: %s", saga.GetSagaId(), saga.GetOutcome(), saga.GetFailedNode(), saga.GetError())}
		}
		return nil
	})
}

func since(t time.Time) string { return fmtDur(time.Since(t)) }

func fmtDur(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return d.Round(100 * time.Millisecond).String()
}

func kindName(k orchestratorv1.ReplacementKind) string {
	switch k {
	case orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT:
		return "region snapshot"
	case orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_ONLY_REGION:
		return "read-only region"
	case orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION:
		return "rw region"
	}
	return "unknown"
}

// stateName is a request's state in lower case ("running", "data lost").
func stateName(r *orchestratorv1.Replacement) string {
	var name string
	if r.GetKind() == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		name = strings.TrimPrefix(r.GetRegionState().String(), "REGION_REPLACEMENT_STATE_")
	} else {
		name = strings.TrimPrefix(r.GetReadOnlyState().String(), "READ_ONLY_REPLACEMENT_STATE_")
	}
	return strings.ToLower(strings.ReplaceAll(name, "_", " "))
}

func isRW(r *orchestratorv1.Replacement) bool {
	return r.GetKind() == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION
}

// terminal reports whether a request ended.
func terminal(r *orchestratorv1.Replacement) bool {
	if isRW(r) {
		switch r.GetRegionState() {
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DATA_LOST,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_NEEDS_OPERATOR,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_CANCELLED:
			return true
		}
		return false
	}
	s := r.GetReadOnlyState()
	return s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE ||
		s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST ||
		s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_CANCELLED
}

// stateKey is a request's kind family and state, the key of
// Result.States ("read-only complete", "rw driving").
func stateKey(r *orchestratorv1.Replacement) string {
	if isRW(r) {
		return "rw " + stateName(r)
	}
	return "read-only " + stateName(r)
}

// statesLine renders request counts by state, read-only first.
func statesLine(states map[string]int) string {
	keys := make([]string, 0, len(states))
	for k := range states {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		ri, rj := strings.HasPrefix(keys[i], "rw "), strings.HasPrefix(keys[j], "rw ")
		if ri != rj {
			return !ri
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", states[k], k))
	}
	if len(parts) == 0 {
		return "none yet"
	}
	return strings.Join(parts, " · ")
}

func stepsLine(s StepCounts) string {
	var parts []string
	for _, p := range []struct {
		n    int64
		name string
	}{{s.Requested, "requested"}, {s.Running, "running"}, {s.Complete, "complete"}, {s.Collecting, "collecting"}, {s.VolumeDeleted, "volume_deleted"}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", p.n, p.name))
		}
	}
	if len(parts) == 0 {
		return "none yet"
	}
	return strings.Join(parts, " · ")
}

// sortReplacements orders requests read-only first, then by id.
func sortReplacements(rs []*orchestratorv1.Replacement) {
	slices.SortFunc(rs, func(a, b *orchestratorv1.Replacement) int {
		if ra, rb := isRW(a), isRW(b); ra != rb {
			if ra {
				return 1
			}
			return -1
		}
		return strings.Compare(a.GetReplacementId(), b.GetReplacementId())
	})
}

package server

// Redundancy: how many live copies of each volume's data are left
// (platform/redundancy has the rule). The registry says which targets are
// registered and DELETING; only the allocator knows which disks are
// expunged, so the service reads the allocator's disks (ListPhysicalDisks)
// and keeps them for DiskTTL: one paged call per TTL however many volumes
// are asked about. docs/architecture.md, "Redundancy: where it is counted and why there",
// says why here.

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/paging"
	"storagecp.dev/platform/redundancy"
	"storagecp.dev/volume/internal/store"
)

// DiskTTL is how long the allocator's disk states are reused: an expunge
// shows in redundancy at most this late.
const DiskTTL = 2 * time.Second

// DiskLister is the one allocator call the volume-service makes.
type DiskLister interface {
	ListPhysicalDisks(ctx context.Context, in *allocatorv1.ListPhysicalDisksRequest, opts ...grpc.CallOption) (*allocatorv1.ListPhysicalDisksResponse, error)
}

// diskState is one dataset's disk as the allocator last said.
type diskState struct {
	diskID    string
	inService bool
}

// Disks caches the allocator's disk states by dataset.
type Disks struct {
	client DiskLister
	ttl    time.Duration

	mu        sync.Mutex
	readAt    time.Time
	byDataset map[string]diskState
}

// NewDisks reads disk states through client, keeping them for ttl.
func NewDisks(client DiskLister, ttl time.Duration) *Disks {
	return &Disks{client: client, ttl: ttl}
}

// states returns the disk states by dataset and when they were read. The
// lock is held across the read, so concurrent callers share one. A dataset
// in need that the cached read does not know is read again at once: the
// cache is for policies, which change rarely, and must not answer "disk
// unknown" for a disk added since (an empty rack read at start, then
// seeded, showed every copy of a new volume as on an unknown disk).
func (d *Disks) states(ctx context.Context, need ...string) (map[string]diskState, time.Time, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byDataset != nil && time.Since(d.readAt) < d.ttl && knowsAll(d.byDataset, need) {
		return d.byDataset, d.readAt, nil
	}
	at := time.Now()
	out := map[string]diskState{}
	for token := ""; ; {
		resp, err := d.client.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000, PageToken: token, OmitCounts: true})
		if err != nil {
			return nil, time.Time{}, status.Errorf(codes.Unavailable, "reading disk states from the region-allocator: %v", status.Convert(err).Message())
		}
		for _, p := range resp.Disks {
			out[p.DatasetId] = diskState{diskID: p.DiskId, inService: p.Policy != allocatorv1.Policy_POLICY_EXPUNGED}
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	d.byDataset, d.readAt = out, at
	return out, at, nil
}

func knowsAll(m map[string]diskState, datasets []string) bool {
	for _, ds := range datasets {
		if _, ok := m[ds]; !ok {
			return false
		}
	}
	return true
}

// datasetsOf is every dataset a volume's registered targets sit on.
func datasetsOf(v store.Volume) []string {
	var out []string
	for _, t := range v.Targets {
		if ds := idString(t.DatasetID); ds != "" {
			out = append(out, ds)
		}
	}
	return out
}

// countVolume applies the rule to one volume with its registered targets.
func countVolume(v store.Volume, disks map[string]diskState) redundancy.Volume {
	byAddr := make(map[string]store.Target, len(v.Targets))
	for _, t := range v.Targets {
		byAddr[redundancy.AddressKey(t.Address)] = t
	}
	return redundancy.Count(v.VCR, func(addr string) redundancy.Target {
		t, ok := byAddr[redundancy.AddressKey(addr)]
		if !ok {
			return redundancy.Target{}
		}
		out := redundancy.Target{Registered: true, ID: t.ID.String(), Kind: string(t.Kind),
			Deleting: t.State == store.StateDeleting, DatasetID: idString(t.DatasetID)}
		switch t.Kind {
		case store.KindRegionSnapshot:
			out.SnapshotID = idString(t.SnapshotID)
		case store.KindRORegion:
			out.SnapshotID = idString(t.OwnerVolumeID)
		}
		if d, ok := disks[out.DatasetID]; ok && out.DatasetID != "" {
			out.DiskID, out.InService = d.diskID, d.inService
		}
		return out
	})
}

func redundancyToProto(v store.Volume, r redundancy.Volume, at time.Time) *volumev1.VolumeRedundancy {
	out := &volumev1.VolumeRedundancy{VolumeId: v.ID.String(), Purpose: purposeToProto[v.Purpose],
		Redundancy: int32(r.Redundancy), WeakestSet: int32(r.Weakest), DisksReadAt: timestamppb.New(at)}
	for _, s := range r.Sets {
		ps := &volumev1.RegionSetRedundancy{Path: s.Path, ReadOnly: s.ReadOnly, Depth: int32(s.Depth),
			LiveCopies: int32(s.Live), SnapshotId: s.SnapshotID}
		for _, c := range s.Copies {
			pc := &volumev1.RegionCopy{Address: c.Address, TargetId: c.ID, DatasetId: c.DatasetID, DiskId: c.DiskID,
				Live: c.Live, NotLiveReason: c.Why}
			pc.Kind = kindToProto[store.TargetKind(c.Kind)]
			ps.Copies = append(ps.Copies, pc)
		}
		out.Sets = append(out.Sets, ps)
	}
	return out
}

// volumeRedundancy is GetVolume's include_redundancy.
func (s *Server) volumeRedundancy(ctx context.Context, v store.Volume) (*volumev1.VolumeRedundancy, error) {
	if s.disks == nil {
		return nil, status.Error(codes.FailedPrecondition, "include_redundancy: this volume-service has no region-allocator to read disk states from (--allocator-addr)")
	}
	disks, at, err := s.disks.states(ctx, datasetsOf(v)...)
	if err != nil {
		return nil, err
	}
	return redundancyToProto(v, countVolume(v, disks), at), nil
}

// survey is the redundancy of every live data volume.
type survey struct {
	volumes []*volumev1.VolumeRedundancy
	counts  [redundancy.Full + 1]int64
	at      time.Time
}

// surveyAll reads every live volume (pages of 1000 from the service's own
// database) and counts the data volumes: O(volumes) rows and one cached
// disk read, no call per volume.
func (s *Server) surveyAll(ctx context.Context, below int) (*survey, error) {
	if s.disks == nil {
		return nil, status.Error(codes.FailedPrecondition, "this volume-service has no region-allocator to read disk states from (--allocator-addr)")
	}
	disks, at, err := s.disks.states(ctx)
	if err != nil {
		return nil, err
	}
	out := &survey{at: at}
	for after := uuid.Nil; ; {
		vols, next, err := s.store.ListVolumes(ctx, after, 1000, false)
		if err != nil {
			return nil, err
		}
		for _, v := range vols {
			if v.Purpose != store.PurposeData {
				continue
			}
			r := countVolume(v, disks)
			out.counts[r.Redundancy]++
			if r.Redundancy < below {
				out.volumes = append(out.volumes, redundancyToProto(v, r, at))
			}
		}
		if next == uuid.Nil {
			break
		}
		after = next
	}
	sort.Slice(out.volumes, func(i, j int) bool {
		a, b := out.volumes[i], out.volumes[j]
		if a.Redundancy != b.Redundancy {
			return a.Redundancy < b.Redundancy
		}
		return a.VolumeId < b.VolumeId
	})
	return out, nil
}

// degradedCursor is ListDegradedVolumes' page token: "<redundancy>/<volume id>"
// of the last volume returned.
func degradedCursor(v *volumev1.VolumeRedundancy) string {
	return fmt.Sprintf("%d/%s", v.Redundancy, v.VolumeId)
}

func parseDegradedCursor(tok string) (int32, string, error) {
	r, id, ok := strings.Cut(tok, "/")
	n, err := strconv.Atoi(r)
	if !ok || err != nil || n < 0 || n > redundancy.Full {
		return 0, "", status.Error(codes.InvalidArgument, "page_token: malformed")
	}
	if _, err := uuid.Parse(id); err != nil {
		return 0, "", status.Error(codes.InvalidArgument, "page_token: malformed")
	}
	return int32(n), id, nil
}

// ListDegradedVolumes implements VolumeService.
func (s *Server) ListDegradedVolumes(ctx context.Context, req *volumev1.ListDegradedVolumesRequest) (*volumev1.ListDegradedVolumesResponse, error) {
	// Paging first, by the rule every List RPC follows.
	limit, err := paging.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var afterR int32 = -1
	var afterID string
	if tok := req.GetPageToken(); tok != "" {
		if afterR, afterID, err = parseDegradedCursor(tok); err != nil {
			return nil, paging.BadToken(tok)
		}
	}
	below := int(req.GetBelow())
	switch {
	case below == 0:
		below = redundancy.Full
	case below < 0 || below > redundancy.Full+1:
		return nil, status.Errorf(codes.InvalidArgument, "below: %d is outside 0..%d", below, redundancy.Full+1)
	}
	sv, err := s.surveyAll(ctx, below)
	if err != nil {
		return nil, s.toStatus(ctx, "ListDegradedVolumes", err)
	}
	out := &volumev1.ListDegradedVolumesResponse{VolumesAtRedundancy: sv.counts[:], DisksReadAt: timestamppb.New(sv.at)}
	for _, v := range sv.volumes {
		if v.Redundancy < afterR || v.Redundancy == afterR && v.VolumeId <= afterID {
			continue
		}
		if len(out.Volumes) == limit {
			out.NextPageToken = degradedCursor(out.Volumes[limit-1])
			break
		}
		out.Volumes = append(out.Volumes, v)
	}
	return out, nil
}

// RunRedundancyMetric keeps the storagecp.volume.redundancy gauge: every
// period (longer when a survey is slow: surveyWait) it surveys every live
// data volume (surveyAll's cost) and the gauge reports the last survey's
// counts, one series per level "0".."3".
// Until the first survey succeeds the gauge reports nothing. It returns
// when ctx ends.
func (s *Server) RunRedundancyMetric(ctx context.Context, period time.Duration) error {
	var mu sync.Mutex
	var last *[redundancy.Full + 1]int64
	m := otel.Meter("storagecp/volume")
	g, err := m.Int64ObservableGauge("storagecp.volume.redundancy",
		metric.WithDescription("live data volumes at each redundancy (the fewest live copies of any region set the volume reads, read-only parents included), recomputed every --redundancy-period"))
	if err != nil {
		return fmt.Errorf("redundancy gauge: %w", err)
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		mu.Lock()
		defer mu.Unlock()
		if last == nil {
			return nil
		}
		for r, n := range last {
			o.ObserveInt64(g, n, metric.WithAttributes(attribute.String("redundancy", strconv.Itoa(r))))
		}
		return nil
	}, g)
	if err != nil {
		return fmt.Errorf("redundancy gauge callback: %w", err)
	}
	defer func() { _ = reg.Unregister() }()
	for {
		began := time.Now()
		sctx, cancel := context.WithTimeout(ctx, period+10*time.Second)
		sv, err := s.surveyAll(sctx, 0)
		cancel()
		wait := surveyWait(period, time.Since(began))
		if err == nil {
			c := sv.counts
			mu.Lock()
			last = &c
			mu.Unlock()
		} else if ctx.Err() == nil {
			s.logger.Warn("redundancy survey failed; the gauge keeps its last counts", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// surveyDuty bounds the share of time the redundancy gauge spends
// surveying: one survey in surveyDuty survey-lengths. On a full rack a
// survey reads some ten thousand VCRs and their targets, seconds of
// database time under load; every 15 s, that was a fifth of the database's
// work while a sled's repairs ran.
const surveyDuty = 20

// surveyWait is how long to wait after a survey that took took before the
// next: the period from the start of one to the start of the next, or
// surveyDuty times the survey's length when that is longer.
func surveyWait(period, took time.Duration) time.Duration {
	return max(period, surveyDuty*took) - took
}

package server

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/allocator/agentapi"
	"storagecp.dev/allocator/internal/store"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
	"storagecp.dev/platform/target"
)

// EnsureRegions creates regions on their agents and records their ports.
func (s *Server) EnsureRegions(ctx context.Context, req *allocatorv1.EnsureRegionsRequest) (*allocatorv1.EnsureRegionsResponse, error) {
	type ensure struct {
		id          uuid.UUID
		cloneSource string
	}
	var todo []ensure
	sources := map[uuid.UUID]string{}
	for i, r := range req.GetRegions() {
		id, err := ids.Parse(fmt.Sprintf("regions[%d].region_id", i), r.GetRegionId())
		if err != nil {
			return nil, err
		}
		var src string
		if v := r.GetCloneSourceAddress(); v != "" {
			c, err := target.Canonical(v)
			if err != nil {
				return nil, invalid(fmt.Sprintf("regions[%d].clone_source_address", i), err.Error())
			}
			src = c
		}
		if prev, dup := sources[id]; dup {
			if prev != src {
				return nil, invalid(fmt.Sprintf("regions[%d]", i), "region listed twice with different clone sources")
			}
			continue
		}
		sources[id] = src
		todo = append(todo, ensure{id: id, cloneSource: src})
	}
	regionIDs := make([]uuid.UUID, 0, len(todo))
	for _, e := range todo {
		regionIDs = append(regionIDs, e.id)
	}
	// Regions are created concurrently, a few at a time, like Nexus does;
	// the first error is returned (ensure is not atomic: the caller's undo
	// deletes whatever was created).
	errs := make([]error, len(todo))
	sem := make(chan struct{}, ensureConcurrency)
	var wg sync.WaitGroup
	for i, e := range todo {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = s.ensureRegion(ctx, e.id, e.cloneSource)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
	}
	regions, err := store.GetRegions(ctx, s.pool, regionIDs)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &allocatorv1.EnsureRegionsResponse{Regions: regionsPB(regions)}, nil
}

// ensureConcurrency bounds the agent calls one EnsureRegions makes at once.
const ensureConcurrency = 4

// ensureRegion creates one region on its agent and records its port.
func (s *Server) ensureRegion(ctx context.Context, id uuid.UUID, cloneSource string) error {
	region, err := store.GetRegion(ctx, s.pool, id)
	if err != nil {
		return err
	}
	port, err := s.agent.EnsureRegion(ctx, region.DatasetID, region.ID, cloneSource)
	if err != nil {
		return fmt.Errorf("ensure region %s: %w", region.ID, err)
	}
	err = db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fence.Check(ctx, tx); err != nil {
			return err
		}
		return store.SetRegionPort(ctx, tx, region.ID, int32(port))
	})
	if errors.Is(err, store.ErrNotFound) {
		// Deleted while we were creating it: do not leak it on the agent.
		if derr := s.agent.DeleteRegion(ctx, region.DatasetID, region.ID); derr != nil {
			s.logger.WarnContext(ctx, "could not destroy region deleted during ensure", "region_id", region.ID, "err", derr)
		}
		return err
	}
	if errors.Is(err, store.ErrConflict) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return err
}

// DeleteRegions destroys regions on their agents, then removes their rows
// and recomputes size_used. Unknown ids succeed.
func (s *Server) DeleteRegions(ctx context.Context, req *allocatorv1.DeleteRegionsRequest) (*allocatorv1.DeleteRegionsResponse, error) {
	var regionIDs []uuid.UUID
	seen := map[uuid.UUID]bool{}
	for i, v := range req.GetRegionIds() {
		id, err := ids.Parse(fmt.Sprintf("region_ids[%d]", i), v)
		if err != nil {
			return nil, err
		}
		if !seen[id] {
			seen[id] = true
			regionIDs = append(regionIDs, id)
		}
	}
	regions, err := store.GetRegions(ctx, s.pool, regionIDs)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	// Refuse before touching any agent: a caller deleting a region that
	// still has snapshots is wrong, and nothing of its batch should go.
	for _, r := range regions {
		n, err := store.RegionSnapshotCount(ctx, s.pool, r.ID)
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		if n > 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "region %s still has %d region snapshots", r.ID, n)
		}
	}
	resp := &allocatorv1.DeleteRegionsResponse{}
	for _, r := range regions {
		if err := s.agent.DeleteRegion(ctx, r.DatasetID, r.ID); err != nil {
			return nil, s.toStatus(ctx, fmt.Errorf("delete region %s: %w", r.ID, err))
		}
		var deleted bool
		err := db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
			if err := fence.Check(ctx, tx); err != nil {
				return err
			}
			deleted, err = store.DeleteRegion(ctx, tx, r.ID)
			return err
		})
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		if deleted {
			resp.DeletedRegionIds = append(resp.DeletedRegionIds, r.ID.String())
		}
	}
	return resp, nil
}

// GetRegion returns one region with its region snapshots.
func (s *Server) GetRegion(ctx context.Context, req *allocatorv1.GetRegionRequest) (*allocatorv1.GetRegionResponse, error) {
	id, err := ids.Parse("region_id", req.GetRegionId())
	if err != nil {
		return nil, err
	}
	r, err := store.GetRegion(ctx, s.pool, id)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	snaps, err := store.RegionSnapshotsOfRegion(ctx, s.pool, id)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &allocatorv1.GetRegionResponse{Region: regionPB(r), RegionSnapshots: regionSnapshotsPB(snaps)}, nil
}

// ListRegions pages through regions by id.
func (s *Server) ListRegions(ctx context.Context, req *allocatorv1.ListRegionsRequest) (*allocatorv1.ListRegionsResponse, error) {
	limit, after, err := paging.UUIDRequest(req)
	if err != nil {
		return nil, err
	}
	var f store.RegionFilter
	if f.AllocatedFor, err = parseOptionalID("allocated_for", req.GetAllocatedFor()); err != nil {
		return nil, err
	}
	if f.DatasetID, err = parseOptionalID("dataset_id", req.GetDatasetId()); err != nil {
		return nil, err
	}
	if f.AllocatedForAny, err = parseIDList("allocated_for_ids", req.GetAllocatedForIds()); err != nil {
		return nil, err
	}
	regions, err := store.ListRegions(ctx, s.pool, f, after, limit)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	resp := &allocatorv1.ListRegionsResponse{Regions: regionsPB(regions)}
	if len(regions) == limit {
		resp.NextPageToken = regions[len(regions)-1].ID.String()
	}
	return resp, nil
}

// ListExpungedTargets lists region snapshots, read-only regions and rw
// regions on expunged disks, less the lists the request omits. The page
// token is an offset applied to each of the three lists; a next token is
// returned while any list filled its page.
func (s *Server) ListExpungedTargets(ctx context.Context, req *allocatorv1.ListExpungedTargetsRequest) (*allocatorv1.ListExpungedTargetsResponse, error) {
	limit, err := paging.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	offset, err := paging.Offset(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	var snaps []store.RegionSnapshot
	var ro, rw []store.Region
	if !req.GetOmitRegionSnapshots() {
		if snaps, err = store.ListExpungedRegionSnapshots(ctx, s.pool, offset, limit); err != nil {
			return nil, s.toStatus(ctx, err)
		}
	}
	if !req.GetOmitReadOnlyRegions() {
		if ro, err = store.ListExpungedRegions(ctx, s.pool, true, offset, limit); err != nil {
			return nil, s.toStatus(ctx, err)
		}
	}
	if !req.GetOmitReadWriteRegions() {
		if rw, err = store.ListExpungedRegions(ctx, s.pool, false, offset, limit); err != nil {
			return nil, s.toStatus(ctx, err)
		}
	}
	resp := &allocatorv1.ListExpungedTargetsResponse{
		RegionSnapshots:  regionSnapshotsPB(snaps),
		ReadOnlyRegions:  regionsPB(ro),
		ReadWriteRegions: regionsPB(rw),
	}
	if len(snaps) == limit || len(ro) == limit || len(rw) == limit {
		resp.NextPageToken = paging.OffsetToken(offset + limit)
	}
	return resp, nil
}

// ListCloneSources lists a snapshot's region snapshots and a volume's
// ensured read-only regions on in-service disks.
func (s *Server) ListCloneSources(ctx context.Context, req *allocatorv1.ListCloneSourcesRequest) (*allocatorv1.ListCloneSourcesResponse, error) {
	snapshotID, err := parseOptionalID("snapshot_id", req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	volumeID, err := parseOptionalID("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if snapshotID == uuid.Nil && volumeID == uuid.Nil {
		return nil, invalid("snapshot_id", "snapshot_id or volume_id is required")
	}
	resp := &allocatorv1.ListCloneSourcesResponse{}
	if snapshotID != uuid.Nil {
		snaps, err := store.ListCloneSourceSnapshots(ctx, s.pool, snapshotID)
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		resp.RegionSnapshots = regionSnapshotsPB(snaps)
	}
	if volumeID != uuid.Nil {
		ro, err := store.ListCloneSourceRegions(ctx, s.pool, volumeID)
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		resp.ReadOnlyRegions = regionsPB(ro)
	}
	return resp, nil
}

// ProbeTargets says, for each address, whether a live region or running
// snapshot serves it now, and what content it serves.
func (s *Server) ProbeTargets(ctx context.Context, req *allocatorv1.ProbeTargetsRequest) (*allocatorv1.ProbeTargetsResponse, error) {
	addrs, err := target.ParseAll("addresses", req.GetAddresses())
	if err != nil {
		return nil, err
	}
	probes, err := s.agent.ProbeTargets(ctx, addrs)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	resp := &allocatorv1.ProbeTargetsResponse{Probes: make([]*allocatorv1.TargetProbe, len(probes))}
	for i, pr := range probes {
		p := &allocatorv1.TargetProbe{Address: req.GetAddresses()[i]}
		switch pr.Result {
		case agentapi.Served:
			p.Result = allocatorv1.ProbeResult_PROBE_RESULT_SERVED
			p.Content = pr.Content
			s.metrics.probed(ctx, "served")
		case agentapi.Unreachable:
			p.Result = allocatorv1.ProbeResult_PROBE_RESULT_UNREACHABLE
			s.metrics.probed(ctx, "unreachable")
		default:
			p.Result = allocatorv1.ProbeResult_PROBE_RESULT_DESTROYED
			s.metrics.probed(ctx, "destroyed")
		}
		resp.Probes[i] = p
	}
	return resp, nil
}

// parseIDList parses a batch filter of at most maxIDFilter ids, naming the
// offending element.
func parseIDList(field string, in []string) ([]uuid.UUID, error) {
	if len(in) > maxIDFilter {
		return nil, invalid(field, fmt.Sprintf("at most %d", maxIDFilter))
	}
	out := make([]uuid.UUID, 0, len(in))
	for i, v := range in {
		id, err := ids.Parse(fmt.Sprintf("%s[%d]", field, i), v)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}

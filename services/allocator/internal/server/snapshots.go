package server

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/allocator/internal/store"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
)

// CreateRegionSnapshots snapshots each region on its agent, starts a
// running snapshot for it and records the region_snapshot row. A replay
// returns the recorded rows (same addresses).
func (s *Server) CreateRegionSnapshots(ctx context.Context, req *allocatorv1.CreateRegionSnapshotsRequest) (*allocatorv1.CreateRegionSnapshotsResponse, error) {
	snapshotID, err := ids.Parse("snapshot_id", req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	if len(req.GetRegionIds()) == 0 {
		return nil, invalid("region_ids", "required")
	}
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
	resp := &allocatorv1.CreateRegionSnapshotsResponse{}
	for _, id := range regionIDs {
		rs, err := s.createRegionSnapshot(ctx, id, snapshotID)
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		resp.RegionSnapshots = append(resp.RegionSnapshots, regionSnapshotPB(rs))
	}
	return resp, nil
}

func (s *Server) createRegionSnapshot(ctx context.Context, regionID, snapshotID uuid.UUID) (store.RegionSnapshot, error) {
	if rs, err := store.GetRegionSnapshot(ctx, s.pool, regionID, snapshotID); err == nil {
		return rs, nil
	}
	region, err := store.GetRegion(ctx, s.pool, regionID)
	if err != nil {
		return store.RegionSnapshot{}, err
	}
	if !region.Ensured() {
		return store.RegionSnapshot{}, status.Errorf(codes.FailedPrecondition, "region %s is not ensured", regionID)
	}
	if err := s.agent.CreateSnapshot(ctx, region.DatasetID, regionID, snapshotID); err != nil {
		return store.RegionSnapshot{}, fmt.Errorf("snapshot region %s: %w", regionID, err)
	}
	port, err := s.agent.StartRunningSnapshot(ctx, region.DatasetID, regionID, snapshotID)
	if err != nil {
		return store.RegionSnapshot{}, fmt.Errorf("start running snapshot of region %s: %w", regionID, err)
	}
	address := netip.AddrPortFrom(region.IP, port).String()
	var rs store.RegionSnapshot
	err = db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fence.Check(ctx, tx); err != nil {
			return err
		}
		rs, err = store.InsertRegionSnapshot(ctx, tx, region.DatasetID, regionID, snapshotID, address)
		return err
	})
	return rs, err
}

// DeleteRegionSnapshots stops running snapshots, destroys the snapshots
// and removes the rows. Unknown ones succeed.
func (s *Server) DeleteRegionSnapshots(ctx context.Context, req *allocatorv1.DeleteRegionSnapshotsRequest) (*allocatorv1.DeleteRegionSnapshotsResponse, error) {
	var keys []store.RegionSnapshotKey
	for i, k := range req.GetRegionSnapshots() {
		rid, err := ids.Parse(fmt.Sprintf("region_snapshots[%d].region_id", i), k.GetRegionId())
		if err != nil {
			return nil, err
		}
		sid, err := ids.Parse(fmt.Sprintf("region_snapshots[%d].snapshot_id", i), k.GetSnapshotId())
		if err != nil {
			return nil, err
		}
		keys = append(keys, store.RegionSnapshotKey{RegionID: rid, SnapshotID: sid})
	}
	resp := &allocatorv1.DeleteRegionSnapshotsResponse{}
	for _, k := range keys {
		datasetID, found, err := store.DatasetOfRegionSnapshot(ctx, s.pool, k.RegionID, k.SnapshotID)
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		if !found {
			continue
		}
		if err := s.agent.StopRunningSnapshot(ctx, datasetID, k.RegionID, k.SnapshotID); err != nil {
			return nil, s.toStatus(ctx, fmt.Errorf("stop running snapshot %s of region %s: %w", k.SnapshotID, k.RegionID, err))
		}
		if err := s.agent.DeleteSnapshot(ctx, datasetID, k.RegionID, k.SnapshotID); err != nil {
			return nil, s.toStatus(ctx, fmt.Errorf("delete snapshot %s of region %s: %w", k.SnapshotID, k.RegionID, err))
		}
		var deleted bool
		err = db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
			if err := fence.Check(ctx, tx); err != nil {
				return err
			}
			deleted, err = store.DeleteRegionSnapshot(ctx, tx, k.RegionID, k.SnapshotID)
			return err
		})
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		if deleted {
			resp.Deleted++
		}
	}
	return resp, nil
}

// ListRegionSnapshots pages by (region, snapshot); the token is
// "region_id/snapshot_id" of the last row.
func (s *Server) ListRegionSnapshots(ctx context.Context, req *allocatorv1.ListRegionSnapshotsRequest) (*allocatorv1.ListRegionSnapshotsResponse, error) {
	limit, err := paging.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var after store.RegionSnapshotKey
	if t := req.GetPageToken(); t != "" {
		r, sn, ok := strings.Cut(t, "/")
		rid, err1 := uuid.Parse(r)
		sid, err2 := uuid.Parse(sn)
		if !ok || err1 != nil || err2 != nil {
			return nil, paging.BadToken(t)
		}
		after = store.RegionSnapshotKey{RegionID: rid, SnapshotID: sid}
	}
	var f store.RegionSnapshotFilter
	if f.SnapshotID, err = parseOptionalID("snapshot_id", req.GetSnapshotId()); err != nil {
		return nil, err
	}
	if f.DatasetID, err = parseOptionalID("dataset_id", req.GetDatasetId()); err != nil {
		return nil, err
	}
	if f.SnapshotIDs, err = parseIDList("snapshot_ids", req.GetSnapshotIds()); err != nil {
		return nil, err
	}
	snaps, err := store.ListRegionSnapshots(ctx, s.pool, f, after, limit)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	resp := &allocatorv1.ListRegionSnapshotsResponse{RegionSnapshots: regionSnapshotsPB(snaps)}
	if len(snaps) == limit {
		last := snaps[len(snaps)-1]
		resp.NextPageToken = last.RegionID.String() + "/" + last.SnapshotID.String()
	}
	return resp, nil
}

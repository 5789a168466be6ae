package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/allocator/internal/store"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/ids"
)

const (
	// maxRegionBytes is the largest region the agent accepts (just under 1 TiB).
	maxRegionBytes = 1023 << 30
	// maxRedundancy bounds how many regions one volume can ask for.
	maxRedundancy = 16
	// maxIDFilter bounds a list of ids in one request (exclusions, batch
	// filters).
	maxIDFilter = 1000
)

// parseAllocation validates an allocation request; every error is
// InvalidArgument naming the field.
func parseAllocation(req *allocatorv1.AllocateRegionsRequest) (store.Allocation, error) {
	var a store.Allocation
	if req == nil {
		return a, invalid("allocation", "required")
	}
	var err error
	if a.VolumeID, err = ids.Parse("volume_id", req.GetVolumeId()); err != nil {
		return a, err
	}
	if a.SnapshotID, err = parseOptionalID("snapshot_id", req.GetSnapshotId()); err != nil {
		return a, err
	}
	bs, bpe, ec := req.GetBlockSize(), req.GetBlocksPerExtent(), req.GetExtentCount()
	if bs != 512 && bs != 4096 {
		return a, invalid("block_size", "must be 512 or 4096")
	}
	if bpe == 0 {
		return a, invalid("blocks_per_extent", "must be positive")
	}
	if bpe > maxRegionBytes/bs {
		return a, invalid("blocks_per_extent", "extent larger than the largest region")
	}
	if ec > 0 && ec > maxRegionBytes/(bs*bpe) {
		return a, invalid("extent_count", "region larger than 1023 GiB")
	}
	a.BlockSize, a.BlocksPerExtent, a.ExtentCount = int64(bs), int64(bpe), int64(ec)
	a.ReadOnly = req.GetReadOnly()
	switch req.GetStrategy() {
	case allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM:
	case allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS,
		allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_UNSPECIFIED:
		// Distinct sleds is what production and every replacement use.
		a.DistinctSleds = true
	default:
		return a, invalid("strategy", "unknown")
	}
	a.Seed = req.GetSeed()
	if a.Seed == "" {
		a.Seed = strconv.FormatInt(time.Now().UnixNano(), 10)
	}
	r := req.GetRedundancy()
	if r <= 0 || r > maxRedundancy {
		return a, invalid("redundancy", fmt.Sprintf("must be between 1 and %d", maxRedundancy))
	}
	a.Redundancy = int(r)
	seen := make(map[uuid.UUID]bool, len(req.GetNewRegionIds()))
	for i, v := range req.GetNewRegionIds() {
		field := fmt.Sprintf("new_region_ids[%d]", i)
		id, err := ids.Parse(field, v)
		if err != nil {
			return a, err
		}
		if seen[id] {
			return a, invalid(field, "duplicate id")
		}
		seen[id] = true
		a.NewRegionIDs = append(a.NewRegionIDs, id)
	}
	if len(a.NewRegionIDs) > math.MaxInt32 {
		return a, invalid("new_region_ids", "too many")
	}
	if len(req.GetExcludeSledIds()) > maxIDFilter {
		return a, invalid("exclude_sled_ids", fmt.Sprintf("at most %d", maxIDFilter))
	}
	for i, v := range req.GetExcludeSledIds() {
		id, err := ids.Parse(fmt.Sprintf("exclude_sled_ids[%d]", i), v)
		if err != nil {
			return a, err
		}
		a.ExcludeSledIDs = append(a.ExcludeSledIDs, id)
	}
	return a, nil
}

// allocate runs the statement and reads back every region of the volume.
func allocate(ctx context.Context, tx pgx.Tx, a store.Allocation) (regions []store.Region, created []uuid.UUID, err error) {
	res, err := store.Allocate(ctx, tx, a)
	if err != nil {
		return nil, nil, err
	}
	all := make([]uuid.UUID, 0, len(res))
	for _, r := range res {
		all = append(all, r.ID)
		if r.Created {
			created = append(created, r.ID)
		}
	}
	regions, err = store.GetRegions(ctx, tx, all)
	return regions, created, err
}

// allocationTx is REPEATABLE READ, not SERIALIZABLE. The statement reads
// every dataset and charges a few: under SERIALIZABLE any two concurrent
// allocations form a read/write cycle and one is aborted and retried,
// which halves throughput with several callers. Under REPEATABLE READ the
// only conflicts are real ones: charging a dataset another allocation
// charged since our snapshot fails with a serialization error (first
// updater wins) and InTxOpts retries with fresh usage, so a dataset can
// never be over-committed across processes (and the size_used <= capacity
// CHECK would refuse it anyway). What REPEATABLE READ does not give is
// safety for two concurrent calls for the SAME volume with different ids,
// which is left to the callers (the volume repair lock); a concurrent
// replay with the same ids collides on the region ids and is re-run below.
var allocationTx = db.TxOptions{IsoLevel: pgx.RepeatableRead}

// AllocateRegions places regions for a volume in one statement
// (store.AllocateRegions).
func (s *Server) AllocateRegions(ctx context.Context, req *allocatorv1.AllocateRegionsRequest) (*allocatorv1.AllocateRegionsResponse, error) {
	a, err := parseAllocation(req)
	if err != nil {
		return nil, err
	}
	var regions []store.Region
	var created []uuid.UUID
	run := func() error {
		return db.InTxOpts(ctx, s.pool, allocationTx, func(tx pgx.Tx) error {
			if err := fence.Check(ctx, tx); err != nil {
				return err
			}
			regions, created, err = allocate(ctx, tx, a)
			return err
		})
	}
	err = run()
	if errors.Is(err, store.ErrConflict) {
		// Either a concurrent replay of this call inserted our ids first
		// (a fresh snapshot now answers idempotently) or an id is taken.
		err = run()
	}
	if errors.Is(err, store.ErrConflict) {
		return nil, invalid("new_region_ids", "an id names an existing region")
	}
	if err != nil {
		var guard *store.GuardError
		if errors.As(err, &guard) {
			s.logger.InfoContext(ctx, "region allocation refused", "volume_id", a.VolumeID, "guard", guard.Guard,
				"redundancy", a.Redundancy, "reserved_bytes", a.Reserved())
		}
		return nil, s.toStatus(ctx, err)
	}
	resp := &allocatorv1.AllocateRegionsResponse{Regions: regionsPB(regions)}
	for _, id := range created {
		resp.CreatedRegionIds = append(resp.CreatedRegionIds, id.String())
	}
	return resp, nil
}

// errDryRun rolls a dry run's transaction back.
var errDryRun = errors.New("dry run")

// DryRunAllocation runs the allocation statement in a transaction that is
// always rolled back.
func (s *Server) DryRunAllocation(ctx context.Context, req *allocatorv1.DryRunAllocationRequest) (*allocatorv1.DryRunAllocationResponse, error) {
	a, err := parseAllocation(req.GetAllocation())
	if err != nil {
		return nil, err
	}
	for i, v := range req.GetExcludeDiskIds() {
		id, err := ids.Parse(fmt.Sprintf("exclude_disk_ids[%d]", i), v)
		if err != nil {
			return nil, err
		}
		a.ExcludeDiskIDs = append(a.ExcludeDiskIDs, id)
	}
	if len(a.NewRegionIDs) == 0 {
		// Ids are only placeholders here; a preview needs none from the caller.
		for range a.Redundancy {
			a.NewRegionIDs = append(a.NewRegionIDs, uuid.New())
		}
	}
	var regions []store.Region
	err = db.InTxOpts(ctx, s.pool, allocationTx, func(tx pgx.Tx) error {
		regions, _, err = allocate(ctx, tx, a)
		if err != nil {
			return err
		}
		return errDryRun
	})
	if errors.Is(err, store.ErrConflict) {
		return nil, invalid("allocation.new_region_ids", "an id names an existing region")
	}
	if err != nil && !errors.Is(err, errDryRun) {
		return nil, s.toStatus(ctx, err)
	}
	return &allocatorv1.DryRunAllocationResponse{Regions: regionsPB(regions)}, nil
}

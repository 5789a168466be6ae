package server

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/allocator/internal/store"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
	"storagecp.dev/platform/target"
)

// AddSled adds a sled, idempotently on its serial (see store.InsertSled).
func (s *Server) AddSled(ctx context.Context, req *allocatorv1.AddSledRequest) (*allocatorv1.AddSledResponse, error) {
	id, err := parseOptionalID("sled_id", req.GetSledId())
	if err != nil {
		return nil, err
	}
	if err := checkSerial(req.GetSerial()); err != nil {
		return nil, err
	}
	newID := uuid.New()
	var sled store.Sled
	err = db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fence.Check(ctx, tx); err != nil {
			return err
		}
		sled, err = store.InsertSled(ctx, tx, id, newID, req.GetSerial())
		return err
	})
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &allocatorv1.AddSledResponse{Sled: sledPB(sled)}, nil
}

// maxSerialLen bounds a sled serial (real ones are about a dozen
// characters).
const maxSerialLen = 64

// checkSerial accepts a sled serial: required, at most maxSerialLen
// characters, ASCII letters, digits, '.', '_' and '-', beginning with a
// letter or digit (so it is printable, shell-safe and unambiguous in logs).
func checkSerial(v string) error {
	switch {
	case v == "":
		return invalid("serial", "required")
	case len(v) > maxSerialLen:
		return invalid("serial", fmt.Sprintf("longer than %d characters", maxSerialLen))
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return invalid("serial", fmt.Sprintf("%q: only letters, digits, '.', '_' and '-', beginning with a letter or digit", v))
		}
	}
	return nil
}

// parseDatasetIP accepts the IP of a target address (platform/target) that
// is not unspecified: the dataset's regions are served there.
func parseDatasetIP(v string) (netip.Addr, error) {
	ip, err := target.ParseIP(v)
	if err != nil {
		return netip.Addr{}, invalid("dataset_address", err.Error())
	}
	if ip.IsUnspecified() {
		return netip.Addr{}, invalid("dataset_address", "unspecified address")
	}
	return ip, nil
}

// AddPhysicalDisk adds a disk with its zpool and dataset, idempotently on
// the disk id.
func (s *Server) AddPhysicalDisk(ctx context.Context, req *allocatorv1.AddPhysicalDiskRequest) (*allocatorv1.AddPhysicalDiskResponse, error) {
	sledID, err := ids.Parse("sled_id", req.GetSledId())
	if err != nil {
		return nil, err
	}
	diskID, err := parseOptionalID("disk_id", req.GetDiskId())
	if err != nil {
		return nil, err
	}
	if diskID == uuid.Nil {
		diskID = uuid.New()
	}
	if req.GetCapacityBytes() <= 0 {
		return nil, invalid("capacity_bytes", "must be positive")
	}
	ip, err := parseDatasetIP(req.GetDatasetAddress())
	if err != nil {
		return nil, err
	}
	nd := store.NewDisk{
		ID: diskID, SledID: sledID, Capacity: req.GetCapacityBytes(), IP: ip,
		NoProvision: req.GetNoProvision(), ZpoolID: uuid.New(), DatasetID: uuid.New(),
	}
	var disk store.Disk
	err = db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fence.Check(ctx, tx); err != nil {
			return err
		}
		disk, err = store.InsertDisk(ctx, tx, nd)
		return err
	})
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &allocatorv1.AddPhysicalDiskResponse{Disk: diskPB(disk)}, nil
}

// ExpungePhysicalDisk expunges a disk (irreversible, idempotent).
func (s *Server) ExpungePhysicalDisk(ctx context.Context, req *allocatorv1.ExpungePhysicalDiskRequest) (*allocatorv1.ExpungePhysicalDiskResponse, error) {
	id, err := ids.Parse("disk_id", req.GetDiskId())
	if err != nil {
		return nil, err
	}
	var changed bool
	var disk store.Disk
	err = db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fence.Check(ctx, tx); err != nil {
			return err
		}
		if changed, err = store.ExpungeDisk(ctx, tx, id); err != nil {
			return err
		}
		disk, err = store.GetDisk(ctx, tx, id)
		return err
	})
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	if changed {
		s.logger.InfoContext(ctx, "physical disk expunged", "disk_id", id, "dataset_id", disk.DatasetID)
	}
	return &allocatorv1.ExpungePhysicalDiskResponse{Disk: diskPB(disk), Changed: changed}, nil
}

// ExpungeSled expunges a sled and all its disks in one transaction.
func (s *Server) ExpungeSled(ctx context.Context, req *allocatorv1.ExpungeSledRequest) (*allocatorv1.ExpungeSledResponse, error) {
	id, err := ids.Parse("sled_id", req.GetSledId())
	if err != nil {
		return nil, err
	}
	var sled store.Sled
	var disks []store.Disk
	err = db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fence.Check(ctx, tx); err != nil {
			return err
		}
		sled, disks, err = store.ExpungeSled(ctx, tx, id)
		return err
	})
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &allocatorv1.ExpungeSledResponse{Sled: sledPB(sled), Disks: disksPB(disks)}, nil
}

// ListSleds pages through sleds by id, each with what is on it.
func (s *Server) ListSleds(ctx context.Context, req *allocatorv1.ListSledsRequest) (*allocatorv1.ListSledsResponse, error) {
	limit, after, err := paging.UUIDRequest(req)
	if err != nil {
		return nil, err
	}
	sleds, err := store.ListSleds(ctx, s.pool, after, limit)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	resp := &allocatorv1.ListSledsResponse{}
	for _, sl := range sleds {
		sum := &allocatorv1.SledSummary{
			Sled:                sledPB(sl.Sled),
			RegionCount:         sl.RegionCount,
			RegionSnapshotCount: sl.RegionSnapshotCount,
			CapacityBytes:       sl.Capacity,
			SizeUsedBytes:       sl.SizeUsed,
		}
		for _, c := range sl.Disks {
			sum.Disks = append(sum.Disks, &allocatorv1.DiskCount{Policy: policyPB(c.Policy), State: statePB(c.State), Count: c.Count})
		}
		resp.Sleds = append(resp.Sleds, sum)
	}
	if len(sleds) == limit {
		resp.NextPageToken = sleds[len(sleds)-1].ID.String()
	}
	return resp, nil
}

// ListPhysicalDisks pages through disks by id.
func (s *Server) ListPhysicalDisks(ctx context.Context, req *allocatorv1.ListPhysicalDisksRequest) (*allocatorv1.ListPhysicalDisksResponse, error) {
	limit, after, err := paging.UUIDRequest(req)
	if err != nil {
		return nil, err
	}
	sledID, err := parseOptionalID("sled_id", req.GetSledId())
	if err != nil {
		return nil, err
	}
	disks, err := store.ListDisks(ctx, s.pool, sledID, after, limit, !req.GetOmitCounts())
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	resp := &allocatorv1.ListPhysicalDisksResponse{Disks: disksPB(disks)}
	if len(disks) == limit {
		resp.NextPageToken = disks[len(disks)-1].ID.String()
	}
	return resp, nil
}

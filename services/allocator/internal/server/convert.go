package server

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	"storagecp.dev/allocator/internal/store"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/ids"
)

func policyPB(p string) allocatorv1.Policy {
	switch p {
	case store.PolicyInService:
		return allocatorv1.Policy_POLICY_IN_SERVICE
	case store.PolicyExpunged:
		return allocatorv1.Policy_POLICY_EXPUNGED
	}
	return allocatorv1.Policy_POLICY_UNSPECIFIED
}

func statePB(s string) allocatorv1.HardwareState {
	switch s {
	case store.StateActive:
		return allocatorv1.HardwareState_HARDWARE_STATE_ACTIVE
	case "decommissioned":
		return allocatorv1.HardwareState_HARDWARE_STATE_DECOMMISSIONED
	}
	return allocatorv1.HardwareState_HARDWARE_STATE_UNSPECIFIED
}

func sledPB(s store.Sled) *allocatorv1.Sled {
	return &allocatorv1.Sled{
		SledId: s.ID.String(),
		Serial: s.Serial,
		Policy: policyPB(s.Policy),
		State:  statePB(s.State),
	}
}

func diskPB(d store.Disk) *allocatorv1.PhysicalDisk {
	return &allocatorv1.PhysicalDisk{
		DiskId:              d.ID.String(),
		SledId:              d.SledID.String(),
		Policy:              policyPB(d.Policy),
		State:               statePB(d.State),
		ZpoolId:             d.ZpoolID.String(),
		DatasetId:           d.DatasetID.String(),
		DatasetAddress:      d.IP.String(),
		CapacityBytes:       d.Capacity,
		SizeUsedBytes:       d.SizeUsed,
		NoProvision:         d.NoProvision,
		RegionCount:         d.RegionCount,
		RegionSnapshotCount: d.RegionSnapshotCount,
	}
}

func disksPB(ds []store.Disk) []*allocatorv1.PhysicalDisk {
	out := make([]*allocatorv1.PhysicalDisk, 0, len(ds))
	for _, d := range ds {
		out = append(out, diskPB(d))
	}
	return out
}

func regionPB(r store.Region) *allocatorv1.Region {
	return &allocatorv1.Region{
		RegionId:        r.ID.String(),
		DatasetId:       r.DatasetID.String(),
		AllocatedFor:    r.AllocatedFor.String(),
		BlockSize:       uint64(r.BlockSize),
		BlocksPerExtent: uint64(r.BlocksPerExtent),
		ExtentCount:     uint64(r.ExtentCount),
		ReadOnly:        r.ReadOnly,
		Port:            uint32(r.Port),
		Address:         r.Address(),
		Ensured:         r.Ensured(),
		SledId:          r.SledID.String(),
		DiskId:          r.DiskID.String(),
		TimeCreated:     timestamppb.New(r.TimeCreated),
		DiskPolicy:      policyPB(r.DiskPolicy),
	}
}

func regionsPB(rs []store.Region) []*allocatorv1.Region {
	out := make([]*allocatorv1.Region, 0, len(rs))
	for _, r := range rs {
		out = append(out, regionPB(r))
	}
	return out
}

func regionSnapshotPB(s store.RegionSnapshot) *allocatorv1.RegionSnapshot {
	return &allocatorv1.RegionSnapshot{
		DatasetId:  s.DatasetID.String(),
		RegionId:   s.RegionID.String(),
		SnapshotId: s.SnapshotID.String(),
		Address:    s.Address,
		TargetId:   ids.RegionSnapshotTargetID(s.RegionID, s.SnapshotID).String(),
		DiskId:     s.DiskID.String(),
		SledId:     s.SledID.String(),
		DiskPolicy: policyPB(s.DiskPolicy),
	}
}

func regionSnapshotsPB(ss []store.RegionSnapshot) []*allocatorv1.RegionSnapshot {
	out := make([]*allocatorv1.RegionSnapshot, 0, len(ss))
	for _, s := range ss {
		out = append(out, regionSnapshotPB(s))
	}
	return out
}

// Package store holds the region-allocator's SQL: inventory, the atomic
// region allocation statement, regions and region snapshots. (The
// simulated Crucible agents keep their SQL with them, in
// storagecp.dev/allocator/sim/simagent.) Functions take a db.Querier (a
// pool or a transaction); callers own transactions.
package store

import (
	"net/netip"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/platform/apierr"
)

// Errors of the store; their kinds are their gRPC codes (apierr).
var (
	ErrNotFound     = apierr.New(apierr.NotFound, "not found")
	ErrConflict     = apierr.New(apierr.AlreadyExists, "conflict")
	ErrPrecondition = apierr.New(apierr.Precondition, "failed precondition")
)

// Policy values of sleds and disks.
const (
	PolicyInService = "in_service"
	PolicyExpunged  = "expunged"
	StateActive     = "active"
)

// Sled is a sled row.
type Sled struct {
	ID          uuid.UUID
	Serial      string
	Policy      string
	State       string
	TimeCreated time.Time
}

// SledSummary is a sled with counts of what is on it.
type SledSummary struct {
	Sled
	// Disks counts the sled's disks by (policy, state).
	Disks               []DiskCount
	RegionCount         int64
	RegionSnapshotCount int64
	Capacity            int64
	SizeUsed            int64
}

// DiskCount is how many of a sled's disks are in one policy and state.
type DiskCount struct {
	Policy, State string
	Count         int64
}

// Disk is a physical disk with its zpool, dataset and usage.
type Disk struct {
	ID                  uuid.UUID
	SledID              uuid.UUID
	Policy              string
	State               string
	ZpoolID             uuid.UUID
	DatasetID           uuid.UUID
	IP                  netip.Addr
	Capacity            int64
	SizeUsed            int64
	NoProvision         bool
	RegionCount         int64
	RegionSnapshotCount int64
}

// Region is a region row with where it lives.
type Region struct {
	ID              uuid.UUID
	DatasetID       uuid.UUID
	AllocatedFor    uuid.UUID
	BlockSize       int64
	BlocksPerExtent int64
	ExtentCount     int64
	ReadOnly        bool
	// Port is 0 until the region is ensured.
	Port        int32
	IP          netip.Addr
	SledID      uuid.UUID
	DiskID      uuid.UUID
	TimeCreated time.Time
	// DiskPolicy is the disk's policy when the row was read.
	DiskPolicy string
}

// Ensured reports whether the region was created on its agent.
func (r Region) Ensured() bool { return r.Port != 0 }

// Address is "[ip]:port", or "" before the region is ensured.
func (r Region) Address() string {
	if r.Port == 0 {
		return ""
	}
	return netip.AddrPortFrom(r.IP, uint16(r.Port)).String()
}

// RegionSnapshot is a region_snapshot row with where it lives.
type RegionSnapshot struct {
	DatasetID  uuid.UUID
	RegionID   uuid.UUID
	SnapshotID uuid.UUID
	Address    string
	DiskID     uuid.UUID
	SledID     uuid.UUID
	// DiskPolicy is the disk's policy when the row was read.
	DiskPolicy string
}

// nullUUID turns the zero UUID into SQL NULL.
func nullUUID(id uuid.UUID) any {
	if id == uuid.Nil {
		return nil
	}
	return id
}

// Package ids holds identifiers every service must compute and read the
// same way.
package ids

import (
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// regionSnapshotNamespace is the UUIDv5 namespace of region snapshot target
// ids. Never change it: target ids are persisted in several services.
var regionSnapshotNamespace = uuid.MustParse("6b1e4c2a-6f0d-4f7e-9a5c-3d2b8e9f1a70")

// RegionSnapshotTargetID is the target id of the region snapshot of a region
// taken for a snapshot. A region snapshot is identified by (region, snapshot)
// — the region fixes the dataset — so the id is name-based and any service
// can derive it without a lookup.
func RegionSnapshotTargetID(regionID, snapshotID uuid.UUID) uuid.UUID {
	name := make([]byte, 0, 32)
	name = append(name, regionID[:]...)
	name = append(name, snapshotID[:]...)
	return uuid.NewSHA1(regionSnapshotNamespace, name)
}

// Parse reads the id a request carries in field, by the one rule every
// service applies to the ids it is given: a UUID in any form uuid.Parse
// reads, and never the nil UUID (nothing is ever created under it, so a
// nil id is a caller's mistake, not a lookup that finds nothing). A bad id
// is InvalidArgument naming the field, and nothing is written.
func Parse(field, v string) (uuid.UUID, error) {
	if v == "" {
		return uuid.Nil, status.Errorf(codes.InvalidArgument, "%s: required", field)
	}
	id, err := uuid.Parse(v)
	if err != nil {
		return uuid.Nil, status.Errorf(codes.InvalidArgument, "%s: not a UUID: %q", field, v)
	}
	if id == uuid.Nil {
		return uuid.Nil, status.Errorf(codes.InvalidArgument, "%s: the nil UUID is never an id", field)
	}
	return id, nil
}

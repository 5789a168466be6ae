// Package ids holds identifiers every service must compute the same way.
package ids

import "github.com/google/uuid"

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

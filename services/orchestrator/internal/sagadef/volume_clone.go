package sagadef

import (
	"storagecp.dev/orchestrator/internal/saga"
)

// volume-clone: a disk created from a snapshot. Its read-only parent is a
// fresh-id copy of the snapshot volume (made inside the volume-service, so
// the key never crosses services); its own region set is new. Its nodes,
// each described where it is appended, are in newVolumeClone's build
// function.

// VolumeClone is the volume-clone template.
var VolumeClone = newVolumeClone()

func newVolumeClone() *saga.Template {
	t := saga.NewTemplate("volume-clone")
	geometry := t.Action("snapshot_geometry", snapshotGeometry, nil)
	a := declareRegionSetActions(t)
	// The nodes, in order, each after the one before it.
	saga.SetBuild(t, func(b *saga.Builder, _ RegionSetParams) error {
		// snapshot_geometry: region geometry of the snapshot volume.
		b.Append(geometry.Node())
		// region_ids … create_volume: as volume-create (the region-set
		// nodes, regions.go), create_volume naming the snapshot as
		// read-only parent source.
		addRegionSetNodes(b, a)
		return nil
	})
	return t
}

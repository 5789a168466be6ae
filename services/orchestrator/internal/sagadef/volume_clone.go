package sagadef

import (
	"storagecp.dev/orchestrator/internal/saga"
)

// volume-clone: a disk created from a snapshot. Its read-only parent is a
// fresh-id copy of the snapshot volume (made inside the volume-service, so
// the key never crosses services); its own region set is new.
//
//	snapshot_geometry  region geometry of the snapshot volume
//	region_ids … create_volume   as volume-create, create_volume naming the
//	                             snapshot as read-only parent source

// VolumeClone is the volume-clone template.
var VolumeClone = newVolumeClone()

func newVolumeClone() *saga.Template {
	t := saga.NewTemplate("volume-clone")
	geometry := t.Action("snapshot_geometry", snapshotGeometry, nil)
	a := declareRegionSetActions(t)
	saga.SetBuild(t, func(b *saga.Builder, _ RegionSetParams) error {
		b.Append(geometry.Node())
		addRegionSetNodes(b, a)
		return nil
	})
	return t
}

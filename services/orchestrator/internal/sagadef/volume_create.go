package sagadef

import (
	"storagecp.dev/orchestrator/internal/saga"
)

// volume-create: a disk whose one region set is three new rw regions on
// distinct sleds. Its nodes are the region-set nodes, each described where
// it is declared, in declareRegionSetActions (regions.go).

// VolumeCreate is the volume-create template.
var VolumeCreate = newVolumeCreate()

func newVolumeCreate() *saga.Template {
	t := saga.NewTemplate("volume-create")
	a := declareRegionSetActions(t)
	saga.SetBuild(t, func(b *saga.Builder, _ RegionSetParams) error {
		// region_ids … create_volume: the region-set nodes.
		addRegionSetNodes(b, a)
		return nil
	})
	return t
}

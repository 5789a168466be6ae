package sagadef

import (
	"storagecp.dev/orchestrator/internal/saga"
)

// volume-create: a disk whose one region set is three new rw regions on
// distinct sleds.
//
//	region_ids        generate the three region ids
//	volume_guard      –                          ⟲ hard-delete the volume row (last)
//	register_regions  RegisterTargets PENDING    ⟲ UnregisterTargets
//	alloc_regions     AllocateRegions            ⟲ DeleteRegions (agents and rows)
//	ensure_regions    EnsureRegions
//	activate_regions  ActivateTargets
//	create_volume     CreateVolume               ⟲ SoftDeleteVolume

// VolumeCreate is the volume-create template.
var VolumeCreate = newVolumeCreate()

func newVolumeCreate() *saga.Template {
	t := saga.NewTemplate("volume-create")
	a := declareRegionSetActions(t)
	saga.SetBuild(t, func(b *saga.Builder, _ RegionSetParams) error {
		addRegionSetNodes(b, a)
		return nil
	})
	return t
}

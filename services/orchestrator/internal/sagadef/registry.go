package sagadef

import "storagecp.dev/orchestrator/internal/saga"

// Templates lists every saga template the orchestrator runs. A binary must
// keep registering every template an unfinished saga names.
func Templates() []*saga.Template {
	return []*saga.Template{
		VolumeCreate, VolumeClone, SnapshotCreate, VolumeDelete,
		ROStart, ROGarbageCollect, ROStep, ROStepGarbageCollect, ROFinish, ROStepBatch, ROStepGCBatch,
		RWStart, RWDrive, RWFinish,
	}
}

// Registry returns a registry of every template.
func Registry() (*saga.Registry, error) { return saga.NewRegistry(Templates()...) }

package sagas

import "storagecp.dev/orchestrator/internal/saga"

// Templates lists every saga template the orchestrator runs. A binary must
// keep registering every template an unfinished saga names.
func Templates() []*saga.Template {
	return []*saga.Template{
		VolumeCreate, VolumeClone, SnapshotCreate, VolumeDelete,
		RSRStart, RSRGarbageCollect, RSRStep, RSRStepGarbageCollect, RSRFinish,
		RRStart, RRDrive, RRFinish,
	}
}

// Registry returns a registry of every template.
func Registry() (*saga.Registry, error) { return saga.NewRegistry(Templates()...) }

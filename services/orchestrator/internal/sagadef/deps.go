// Package sagadef holds the orchestrator's saga templates, one per file with
// its node list in the template's code, each node described where it is
// declared, and each action beside its undo (the style of Omicron's Nexus
// sagas). Actions reach the other services through Deps and pass only ids
// between nodes: VCRs carry encryption keys and never appear in a node
// output.
package sagadef

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/store"
)

// Deps is what actions use (saga.ActionContext.Deps).
type Deps struct {
	Volumes   volumev1.VolumeServiceClient
	Allocator allocatorv1.RegionAllocatorServiceClient
	Notifier  notifierv1.UpstairsNotifierServiceClient
	Store     *store.Store
	// Wake activates the background tasks that act next on a record a
	// saga advanced.
	Wake Wake
	// PantryEndpoints are the Pantry-like Upstairs hosts ("host:port") a rw
	// replacement with no running consumer is reconciled on.
	PantryEndpoints []string
	// Sabotage holds the deliberate bugs a dev/test process runs with
	// (sabotage.go); the zero value, always outside --dev, holds none.
	Sabotage Sabotage
}

func deps(ac *saga.ActionContext) *Deps { return ac.Deps().(*Deps) }

// Wake activates, each by what it does, the background tasks a saga or a
// handler wakes when it advances a record one of them acts on next.
// Package tasks fills it in when it registers the tasks, so each task keeps
// its own name; a nil field wakes nothing, so sagas run without tasks (in
// tests) need no wiring.
type Wake struct {
	ROStart, ROGarbageCollect, ROStep, ROFinish, RODetector func()
	RWDetector, RWDrive, RWFinish                           func()
	// All wakes every task.
	All func()
}

// Wakeup calls each of the wake functions that is set.
func Wakeup(wake ...func()) {
	for _, w := range wake {
		if w != nil {
			w()
		}
	}
}

// newID is the body of a "generate UUID" node: its output is persisted, so
// every later node (and every re-run of a later node) sees the same id.
func newID(context.Context, *saga.ActionContext) (any, error) { return uuid.New(), nil }

// operatingSagaID is the body of every "saga_id" node: a saga claims its
// request or step with its own saga id, so the record names the saga that
// holds it in the log (for operators, ValidateSystem and abandonment). It
// is persisted like any output and stable across recovery.
func operatingSagaID(_ context.Context, ac *saga.ActionContext) (any, error) { return ac.SagaID(), nil }

// newIDs returns n fresh ids as one node output.
func newIDs(n int) saga.ActionFunc {
	return func(context.Context, *saga.ActionContext) (any, error) {
		ids := make([]uuid.UUID, n)
		for i := range ids {
			ids[i] = uuid.New()
		}
		return ids, nil
	}
}

func strs(ids []uuid.UUID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

func isCode(err error, c codes.Code) bool { return status.Code(err) == c }

// notFoundOK turns NotFound into success (undo of something already gone).
func notFoundOK(err error) error {
	if isCode(err, codes.NotFound) {
		return nil
	}
	return err
}

// Geometry of a region set.
type Geometry struct {
	BlockSize       uint64 `json:"block_size"`
	BlocksPerExtent uint64 `json:"blocks_per_extent"`
	ExtentCount     uint64 `json:"extent_count"`
}

// ExtentBytes is Crucible's extent size.
const ExtentBytes = 64 << 20

// GeometryFor returns the region geometry of a disk of sizeBytes.
func GeometryFor(sizeBytes, blockSize uint64) (Geometry, error) {
	if blockSize != 512 && blockSize != 4096 {
		return Geometry{}, fmt.Errorf("block_size must be 512 or 4096, got %d", blockSize)
	}
	if sizeBytes == 0 || sizeBytes%blockSize != 0 {
		return Geometry{}, fmt.Errorf("size_bytes must be a positive multiple of block_size")
	}
	if sizeBytes > 1023<<30 {
		return Geometry{}, fmt.Errorf("size_bytes must be at most 1023 GiB")
	}
	return Geometry{
		BlockSize:       blockSize,
		BlocksPerExtent: ExtentBytes / blockSize,
		ExtentCount:     (sizeBytes + ExtentBytes - 1) / ExtentBytes,
	}, nil
}

// errInvalidState is an action failure that is not worth retrying.
var errInvalidState = errors.New("invalid state")

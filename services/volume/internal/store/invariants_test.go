package store

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

// world is a small healthy database: a disk, its snapshot, a clone of the
// snapshot, a read-only region held by a holder, and a soft-deleted clone.
type world struct {
	disk, snap, clone, holder, deleted uuid.UUID
	rw, snaps, cloneRW                 []Target
	ro                                 Target
}

func newWorld(f *fixture) world {
	var w world
	w.disk, w.rw = f.newDisk(nil)
	w.snap, w.snaps = f.newSnapshot(w.rw)
	w.clone, w.cloneRW = f.newDisk(snapshotVCR(w.snaps))
	w.ro = f.roRegion(w.snap)
	w.holder = uuid.New()
	f.create(w.holder, snapshotVCR([]Target{w.ro}))
	w.deleted, _ = f.newDisk(snapshotVCR(w.snaps))
	f.softDelete(w.deleted)
	f.healthy()
	return w
}

// Each corruption, done directly in SQL, must be reported as exactly its
// violation.
func TestCheckInvariantsDetectsEachCorruption(t *testing.T) {
	cases := []struct {
		name    string
		corrupt func(f *fixture, w world)
		want    string
	}{
		{"usage row too few", func(f *fixture, w world) {
			f.exec(`DELETE FROM volume_resource_usage WHERE volume_id = $1 AND target_id = $2`, w.clone, w.snaps[0].ID)
		}, VUsageCountMismatch},
		{"usage row too many (other target)", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_resource_usage VALUES (gen_random_uuid(), $1, $2)`, w.clone, w.ro.ID)
		}, VUsageCountMismatch},
		{"duplicate usage row", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_resource_usage VALUES (gen_random_uuid(), $1, $2)`, w.clone, w.snaps[0].ID)
		}, VDuplicateUsageRow},
		{"usage row of soft-deleted volume", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_resource_usage VALUES (gen_random_uuid(), $1, $2)`, w.deleted, w.snaps[0].ID)
		}, VUsageOnDeletedVolume},
		{"usage row of missing volume", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_resource_usage VALUES (gen_random_uuid(), $1, $2)`, uuid.New(), w.snaps[0].ID)
		}, VUsageOrphan},
		{"usage row naming unregistered target", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_resource_usage VALUES (gen_random_uuid(), $1, $2)`, w.clone, uuid.New())
		}, VUsageUnknownTarget},
		{"usage row naming rw region", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_resource_usage VALUES (gen_random_uuid(), $1, $2)`, w.clone, w.cloneRW[0].ID)
		}, VUsageOnRWTarget},
		{"live volume names DELETING target", func(f *fixture, w world) {
			f.exec(`UPDATE target SET state = 'DELETING' WHERE target_id = $1`, w.ro.ID)
		}, VLiveReferencesDeleting},
		{"read-only target unregistered", func(f *fixture, w world) {
			f.exec(`DELETE FROM target WHERE target_id = $1`, w.ro.ID)
			f.exec(`DELETE FROM volume_resource_usage WHERE target_id = $1`, w.ro.ID)
		}, VROTargetUnresolved},
		{"rw region unregistered", func(f *fixture, w world) {
			f.exec(`DELETE FROM target WHERE target_id = $1`, w.cloneRW[2].ID)
		}, VRWTargetUnresolved},
		{"rw owner mismatch", func(f *fixture, w world) {
			f.exec(`UPDATE target SET owner_volume_id = $2 WHERE target_id = $1`, w.cloneRW[1].ID, uuid.New())
		}, VRWOwnerMismatch},
		{"index row missing", func(f *fixture, w world) {
			f.exec(`DELETE FROM volume_target WHERE volume_id = $1 AND target_id = $2`, w.clone, w.snaps[1].ID)
		}, VIndexRowMissing},
		{"index row extra", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_target VALUES ($1, $2, true)`, w.clone, w.ro.ID)
		}, VIndexRowExtra},
		{"index row disagrees on read_only", func(f *fixture, w world) {
			f.exec(`UPDATE volume_target SET read_only = NOT read_only WHERE volume_id = $1 AND target_id = $2`, w.clone, w.cloneRW[0].ID)
		}, VIndexReadOnlyMismatch},
		{"index row extra on soft-deleted volume", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_target VALUES ($1, $2, true)`, w.deleted, w.ro.ID)
		}, VIndexRowExtra},
		{"index row of missing volume", func(f *fixture, w world) {
			f.exec(`INSERT INTO volume_target VALUES ($1, $2, true)`, uuid.New(), w.ro.ID)
		}, VIndexOrphan},
		{"top-level region", func(f *fixture, w world) {
			f.exec(`UPDATE volume SET data = data->'sub_volumes'->0 WHERE id = $1`, w.holder)
			f.exec(`DELETE FROM volume_target WHERE volume_id = $1`, w.holder)
		}, VTopLevelRegion},
		{"duplicate target in a region", func(f *fixture, w world) {
			f.exec(`UPDATE volume SET data = jsonb_set(data, '{sub_volumes,0,opts,target}',
				(data->'sub_volumes'->0->'opts'->'target') || jsonb_build_array(data->'sub_volumes'->0->'opts'->'target'->0)) WHERE id = $1`, w.disk)
		}, VDuplicateTargetInRegion},
		{"read-only target twice in a VCR", func(f *fixture, w world) {
			f.exec(`UPDATE volume SET data = jsonb_set(data, '{sub_volumes}', (data->'sub_volumes') || (data->'sub_volumes')) WHERE id = $1`, w.holder)
			f.exec(`INSERT INTO volume_resource_usage VALUES (gen_random_uuid(), $1, $2)`, w.holder, w.ro.ID)
		}, VROTargetTwiceInVCR},
		{"rw region under a read-only parent", func(f *fixture, w world) {
			f.exec(`UPDATE volume SET data = jsonb_set(data, '{read_only_parent,sub_volumes,0,opts,read_only}', 'false') WHERE id = $1`, w.clone)
		}, VRWUnderROP},
		{"IPv4 target", func(f *fixture, w world) {
			f.exec(`UPDATE volume SET data = jsonb_set(data, '{sub_volumes,0,opts,target,0}', '"10.0.0.1:19000"') WHERE id = $1`, w.holder)
		}, VMalformedTarget},
		{"undecodable VCR", func(f *fixture, w world) {
			f.exec(`UPDATE volume SET data = '{"type":"disk"}' WHERE id = $1`, w.deleted)
		}, VVCRUndecodable},
		{"read-only region snapshotted", func(f *fixture, w world) {
			f.exec(`INSERT INTO target (target_id, kind, state, region_id, snapshot_id) VALUES ($1, 'REGION_SNAPSHOT', 'PENDING', $2, $3)`,
				uuid.New(), w.ro.RegionID, uuid.New())
		}, VROSnapshotted},
		{"region snapshot without parent", func(f *fixture, w world) {
			f.exec(`INSERT INTO target (target_id, kind, state, region_id, snapshot_id) VALUES ($1, 'REGION_SNAPSHOT', 'PENDING', $2, $3)`,
				uuid.New(), uuid.New(), uuid.New())
		}, VSnapshotWithoutParent},
		{"two live targets on one address", func(f *fixture, w world) {
			f.exec(`DROP INDEX target_address_live`)
			a := canon(t, f.addr())
			for i := 0; i < 2; i++ {
				f.exec(`INSERT INTO target (target_id, kind, state, region_id, dataset_id, address) VALUES ($1, 'RO_REGION', 'ACTIVE', $1, $1, $2)`, uuid.New(), a)
			}
		}, VDuplicateLiveAddress},
		{"rw region named by two live volumes", func(f *fixture, w world) {
			f.exec(`UPDATE volume SET data = jsonb_set(data, '{sub_volumes,0,opts,target,0}', to_jsonb($2::text)) WHERE id = $1`, w.disk, w.cloneRW[0].Address)
			f.exec(`UPDATE volume_target SET target_id = $2 WHERE volume_id = $1 AND target_id = $3`, w.disk, w.cloneRW[0].ID, w.rw[0].ID)
			f.exec(`UPDATE target SET owner_volume_id = $2 WHERE target_id = $1`, w.cloneRW[0].ID, w.disk)
		}, VRWOwnerMismatch + "," + VRWTargetNamedByTwoVolumes},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			w := newWorld(f)
			c.corrupt(f, w)
			if got := strings.Join(f.violationCodes(), ","); got != c.want {
				vs, _ := f.s.CheckInvariants(f.ctx)
				t.Fatalf("violations = %s, want %s\n%+v", got, c.want, vs)
			}
		})
	}
}

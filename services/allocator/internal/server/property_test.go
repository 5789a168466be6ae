package server

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"pgregory.net/rapid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// TestAllocationProperties allocates at random over random inventories and
// checks, after every call, against a model of which datasets are eligible:
// a success never picks an expunged, no_provision or full dataset, keeps a
// volume's regions on distinct zpools (and distinct sleds when asked), and
// charges exactly the reservation; a failure happens only when the model
// agrees there is no room, and changes nothing; size_used always equals the
// sum of reservations and never exceeds capacity.
func TestAllocationProperties(t *testing.T) {
	ctx := context.Background()
	s, pool := newServer(t)
	iteration := 0
	rapid.Check(t, func(rt *rapid.T) {
		iteration++
		if _, err := pool.Exec(ctx, `TRUNCATE sled, physical_disk, zpool, crucible_dataset, region, region_snapshot,
			agent_region, agent_snapshot, agent_port CASCADE`); err != nil {
			rt.Fatalf("truncate: %v", err)
		}
		type disk struct {
			sled     string
			eligible bool // in service, provisionable
			capacity int64
		}
		disks := map[string]*disk{} // by dataset id
		nSleds := rapid.IntRange(1, 6).Draw(rt, "sleds")
		for i := range nSleds {
			sled := ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: fmt.Sprintf("sled-%d", i)}))(rt).GetSled().GetSledId()
			sledExpunged := rapid.IntRange(0, 9).Draw(rt, "sledExpunged") == 0
			for j := range rapid.IntRange(1, 3).Draw(rt, "disks") {
				capacity := int64(rapid.IntRange(0, 3).Draw(rt, "regionsFit"))*testReserved + int64(rapid.IntRange(1, 1000).Draw(rt, "slack"))
				noProv := rapid.IntRange(0, 7).Draw(rt, "noProvision") == 0
				d := ok(s.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
					SledId: sled, CapacityBytes: capacity, NoProvision: noProv,
					DatasetAddress: fmt.Sprintf("fd00:%x:%x::%x", iteration, i+1, j+1),
				}))(rt).GetDisk()
				expunged := rapid.IntRange(0, 7).Draw(rt, "diskExpunged") == 0
				if expunged {
					ok(s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: d.GetDiskId()}))(rt)
				}
				disks[d.GetDatasetId()] = &disk{sled: sled, eligible: !noProv && !expunged && !sledExpunged, capacity: capacity}
			}
			if sledExpunged {
				ok(s.ExpungeSled(ctx, &allocatorv1.ExpungeSledRequest{SledId: sled}))(rt)
			}
		}
		type volume struct {
			id       string
			distinct bool
			regions  []*allocatorv1.Region
		}
		var volumes []*volume
		for range rapid.IntRange(1, 8).Draw(rt, "allocations") {
			var v *volume
			if len(volumes) > 0 && rapid.Bool().Draw(rt, "replacement") {
				v = volumes[rapid.IntRange(0, len(volumes)-1).Draw(rt, "which")]
			} else {
				v = &volume{id: uuid.NewString(), distinct: true}
				volumes = append(volumes, v)
			}
			distinct := rapid.Bool().Draw(rt, "distinct")
			want := len(v.regions) + rapid.IntRange(1, 4).Draw(rt, "more")
			req := allocReq(v.id, want, newIDs(want-len(v.regions)))
			req.Seed = fmt.Sprint(rapid.Int().Draw(rt, "seed"))
			if !distinct {
				req.Strategy = allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM
			}
			before := diskUsage(rt, s)

			// The model: datasets with room, not on zpools of the volume,
			// and (distinct) not on its sleds, counting sleds once.
			usedZpool, usedSled := map[string]bool{}, map[string]bool{}
			for _, r := range v.regions {
				usedZpool[r.GetDatasetId()] = true
				usedSled[r.GetSledId()] = true
			}
			room := 0
			roomSleds := map[string]bool{}
			for id, d := range disks {
				if !d.eligible || usedZpool[id] || before[id].GetSizeUsedBytes()+testReserved > d.capacity {
					continue
				}
				if distinct {
					if usedSled[d.sled] || roomSleds[d.sled] {
						continue
					}
					roomSleds[d.sled] = true
				}
				room++
			}
			need := want - len(v.regions)

			resp, err := s.AllocateRegions(ctx, req)
			after := diskUsage(rt, s)
			if err != nil {
				if status.Code(err) != codes.ResourceExhausted {
					rt.Fatalf("allocate: %v", err)
				}
				if room >= need {
					rt.Fatalf("refused (%v) with room for %d of %d", err, room, need)
				}
				for id := range before {
					if before[id].GetSizeUsedBytes() != after[id].GetSizeUsedBytes() {
						rt.Fatalf("a refused allocation charged %s", id)
					}
				}
				continue
			}
			if room < need {
				rt.Fatalf("allocated %d with room for only %d", need, room)
			}
			if len(resp.GetRegions()) != want || len(resp.GetCreatedRegionIds()) != need {
				rt.Fatalf("got %d regions (%d new), want %d (%d new)", len(resp.GetRegions()), len(resp.GetCreatedRegionIds()), want, need)
			}
			created := map[string]bool{}
			for _, id := range resp.GetCreatedRegionIds() {
				created[id] = true
			}
			for _, r := range resp.GetRegions() {
				if !created[r.GetRegionId()] {
					continue
				}
				d := disks[r.GetDatasetId()]
				if !d.eligible {
					rt.Fatalf("region on an ineligible dataset")
				}
				if before[r.GetDatasetId()].GetSizeUsedBytes()+testReserved > d.capacity {
					rt.Fatalf("region on a full dataset")
				}
				if after[r.GetDatasetId()].GetSizeUsedBytes() != before[r.GetDatasetId()].GetSizeUsedBytes()+testReserved {
					rt.Fatalf("dataset charged %d, want +%d", after[r.GetDatasetId()].GetSizeUsedBytes()-before[r.GetDatasetId()].GetSizeUsedBytes(), testReserved)
				}
			}
			v.regions = resp.GetRegions()
			v.distinct = v.distinct && distinct
			zpools, sleds := map[string]bool{}, map[string]bool{}
			for _, r := range v.regions {
				zpools[r.GetDatasetId()] = true
				sleds[r.GetSledId()] = true
			}
			if len(zpools) != len(v.regions) {
				rt.Fatalf("two regions of a volume share a zpool")
			}
			if v.distinct && len(sleds) != len(v.regions) {
				rt.Fatalf("two regions of a distinct-sleds volume share a sled")
			}
			for id, d := range after {
				if d.GetSizeUsedBytes() > d.GetCapacityBytes() || d.GetSizeUsedBytes() != d.GetRegionCount()*testReserved {
					rt.Fatalf("dataset %s: size_used %d, capacity %d, %d regions", id, d.GetSizeUsedBytes(), d.GetCapacityBytes(), d.GetRegionCount())
				}
			}
		}
	})
}

package preview

// "Is it safe to expunge?": PreviewExpunge's ok-to-expunge mode.

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/redundancy"
)

// maxNamed bounds the volumes and snapshots a left-out candidate names.
const maxNamed = 20

// candidate is one disk or sled the operator may expunge as one.
type candidate struct {
	pb    *orchestratorv1.ExpungeCandidate
	disks []*allocatorv1.PhysicalDisk
}

// readers are what reads a deduplicated region set: the volumes, and for
// a read-only set the snapshot.
type readers struct {
	volumes   []string
	snapshots []string
	paths     []string // "<volume> <path>", for the detail
}

// OkToExpunge answers PreviewExpunge's ok-to-expunge mode: the largest
// subset of at most max candidates (sel's disks and sleds, or every
// in-service disk when sel names none) that can be expunged together so
// that no region set a live data volume reads (rw sets and read-only
// parents at every depth, as ListDegradedVolumes reports them: the rule of
// platform/redundancy) loses its last live copy, and with room for every
// replacement region. The rest of the response previews that subset.
//
// The search is redundancy.Search: exact (branch and bound) for up to 64
// candidates within its node budget, greedy beyond, and the answer says
// which. It searches room as well as data (redundancy.Room: every set
// missing k copies keeps k in-service sleds outside its copies, the
// allocator's distinct-sled rule). Bytes are then checked on the answer by
// the preview's own dry runs; a candidate whose replacement regions do not
// fit (or whose preview finds data loss the sets did not show) is left out
// and the search runs again without it: bytes are honoured greedily, not
// searched.
func OkToExpunge(ctx context.Context, c Clients, sel Selection, max int) (*orchestratorv1.PreviewExpungeResponse, error) {
	p := newPreviewer(c)
	if err := p.loadDisks(ctx); err != nil {
		return nil, err
	}
	cands, out, err := p.candidates(sel)
	if err != nil {
		return nil, err
	}
	sets, who, err := liveSets(ctx, c.Volumes)
	if err != nil {
		return nil, err
	}
	room := &redundancy.Room{SledOf: map[string]string{}, InService: map[string]bool{}}
	for _, d := range p.disks {
		room.SledOf[d.DiskId] = d.SledId
		room.InService[d.DiskId] = d.Policy != allocatorv1.Policy_POLICY_EXPUNGED
	}
	ok := &orchestratorv1.OkToExpunge{}
	var ans redundancy.Answer
	var resp *orchestratorv1.PreviewExpungeResponse
	pool := cands
	for {
		rc := make([]redundancy.Candidate, len(pool))
		for i, cd := range pool {
			rc[i].Name = candidateName(cd.pb)
			rc[i].Disks = cd.pb.DiskIds
		}
		ans = redundancy.Search(rc, sets, max, redundancy.DefaultBudget, room)
		var chosen []*allocatorv1.PhysicalDisk
		for _, i := range ans.Chosen {
			chosen = append(chosen, pool[i].disks...)
		}
		sort.Slice(chosen, func(i, j int) bool { return chosen[i].DiskId < chosen[j].DiskId })
		if len(chosen) == 0 {
			resp = &orchestratorv1.PreviewExpungeResponse{CapacityOk: true, CapacityDetail: "nothing to expunge"}
			break
		}
		// A fresh previewer per round: previewed disks and shortfalls
		// are per preview.
		q := newPreviewer(c)
		q.disks, q.byDataset = p.disks, p.byDataset
		if resp, err = q.preview(ctx, chosen); err != nil {
			return nil, err
		}
		bad := refused(resp)
		if len(bad) == 0 {
			break
		}
		// Leave out every chosen candidate holding a copy whose
		// replacement does not fit (or that the preview says would be
		// lost), and search again without them.
		var next []candidate
		for i, cd := range pool {
			why := ""
			for _, d := range cd.pb.DiskIds {
				if w, found := bad[d]; found && why == "" {
					why = w
				}
			}
			if why == "" || !contains(ans.Chosen, i) {
				next = append(next, cd)
				continue
			}
			reason := orchestratorv1.LeftOutReason_LEFT_OUT_REASON_CAPACITY
			if why == "data loss" {
				reason = orchestratorv1.LeftOutReason_LEFT_OUT_REASON_DATA_LOSS
				why = "the preview of the answer finds a target or region set with no surviving copy on it"
			}
			out = append(out, &orchestratorv1.LeftOutCandidate{Candidate: cd.pb, Reason: reason, Detail: why})
		}
		if len(next) == len(pool) {
			return nil, fmt.Errorf("ok-to-expunge: the preview refused %v but names no chosen candidate", bad)
		}
		pool = next
	}
	for _, i := range ans.Chosen {
		ok.Chosen = append(ok.Chosen, pool[i].pb)
	}
	for i, cd := range pool {
		blocked, left := ans.Blocked[i]
		if !left {
			continue
		}
		lo := &orchestratorv1.LeftOutCandidate{Candidate: cd.pb, Reason: orchestratorv1.LeftOutReason_LEFT_OUT_REASON_MAX_REACHED,
			Detail: fmt.Sprintf("safe to add, but the answer already holds the %d asked for", max)}
		switch short := ans.Short[i]; {
		case len(blocked) > 0:
			lo.Reason = orchestratorv1.LeftOutReason_LEFT_OUT_REASON_DATA_LOSS
			lo.VolumeIds, lo.SnapshotIds, lo.Detail = lossDetail(blocked, who,
				"with the chosen ones it would take the last live copy of %d region set(s) read by %d volume(s)")
		case len(short) > 0:
			lo.Reason = orchestratorv1.LeftOutReason_LEFT_OUT_REASON_CAPACITY
			lo.VolumeIds, lo.SnapshotIds, lo.Detail = lossDetail(short, who,
				"with the chosen ones the replacements of %d region set(s) read by %d volume(s) would find no in-service sled outside their copies (a replacement goes on a sled holding no copy of its set)")
		}
		out = append(out, lo)
	}
	sort.SliceStable(out, func(i, j int) bool { return candidateName(out[i].Candidate) < candidateName(out[j].Candidate) })
	ok.LeftOut = out
	ok.Exact = ans.Exact
	ok.Constraints = int32(ans.Constraints)
	if ans.Exact {
		ok.Method = fmt.Sprintf("exact: branch and bound over %d candidates and %d region-set constraints (%d nodes)", len(pool), ans.Constraints, ans.Nodes)
	} else {
		why := fmt.Sprintf("more than %d candidates", redundancy.MaxExact)
		if len(pool) <= redundancy.MaxExact {
			why = fmt.Sprintf("the exact search stopped at its budget of %d nodes", redundancy.DefaultBudget)
		}
		ok.Method = fmt.Sprintf("greedy (%s): %d candidates, %d region-set constraints; safe, but a larger safe subset may exist", why, len(pool), ans.Constraints)
	}
	resp.OkToExpunge = ok
	return resp, nil
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func candidateName(c *orchestratorv1.ExpungeCandidate) string {
	if c.SledId != "" {
		return "sled " + c.SledId
	}
	return "disk " + c.DiskId
}

// refused maps each disk of a preview holding something that cannot be
// replaced (no room: the capacity detail; or no surviving copy: "data
// loss") to why.
func refused(resp *orchestratorv1.PreviewExpungeResponse) map[string]string {
	bad := map[string]string{}
	for _, t := range resp.ReadOnlyTargets {
		switch {
		case t.DataLoss:
			bad[t.DiskId] = "data loss"
		case !t.CapacityOk:
			if _, seen := bad[t.DiskId]; !seen {
				bad[t.DiskId] = "no room for the replacement of read-only target " + t.TargetId + ": " + resp.CapacityDetail
			}
		}
	}
	for _, rw := range resp.ReadWriteRegions {
		switch {
		case rw.DataLoss:
			bad[rw.DiskId] = "data loss"
		case !rw.CapacityOk:
			if _, seen := bad[rw.DiskId]; !seen {
				bad[rw.DiskId] = "no room for the replacement of rw region " + rw.RegionId + ": " + resp.CapacityDetail
			}
		}
	}
	return bad
}

// candidates turns the selection into candidates: each disk, each sled
// (its in-service disks), or every in-service disk when none is named.
// Candidates with no in-service disk go straight to left-out. A disk named
// twice (alone and by its sled) is INVALID_ARGUMENT.
func (p *previewer) candidates(sel Selection) ([]candidate, []*orchestratorv1.LeftOutCandidate, error) {
	var out []candidate
	var left []*orchestratorv1.LeftOutCandidate
	items := sel.items()
	if len(items) == 0 {
		var all []*allocatorv1.PhysicalDisk
		for _, d := range p.disks {
			if d.Policy != allocatorv1.Policy_POLICY_EXPUNGED {
				all = append(all, d)
			}
		}
		sort.Slice(all, func(i, j int) bool { return all[i].DiskId < all[j].DiskId })
		for _, d := range all {
			out = append(out, candidate{pb: &orchestratorv1.ExpungeCandidate{DiskId: d.DiskId, DiskIds: []string{d.DiskId}}, disks: []*allocatorv1.PhysicalDisk{d}})
		}
		return out, nil, nil
	}
	owner := map[string]string{}
	for _, it := range items {
		pb := &orchestratorv1.ExpungeCandidate{}
		var ds []*allocatorv1.PhysicalDisk
		var err error
		if it.disk != uuid.Nil {
			pb.DiskId = it.disk.String()
			ds, err = p.chooseDisks(it.disk, uuid.Nil)
		} else {
			pb.SledId = it.sled.String()
			ds, err = p.sledDisks(it.sled)
		}
		if status.Code(err) == codes.FailedPrecondition {
			left = append(left, &orchestratorv1.LeftOutCandidate{Candidate: pb, Reason: orchestratorv1.LeftOutReason_LEFT_OUT_REASON_ALREADY_EXPUNGED,
				Detail: status.Convert(err).Message()})
			continue
		}
		if err != nil {
			return nil, nil, it.field(err)
		}
		for _, d := range ds {
			if prev, dup := owner[d.DiskId]; dup {
				field := "sled_id"
				if it.disk != uuid.Nil {
					field = "disk_id"
				}
				return nil, nil, it.field(status.Errorf(codes.InvalidArgument, "%s: disk %s is already a candidate as %s", field, d.DiskId, prev))
			}
			owner[d.DiskId] = candidateName(pb)
			pb.DiskIds = append(pb.DiskIds, d.DiskId)
		}
		out = append(out, candidate{pb: pb, disks: ds})
	}
	return out, left, nil
}

// liveSets reads every live data volume's region sets with their copies
// (ListDegradedVolumes below 4: the volume-service applies the counting
// rule), deduplicated by their copies: a snapshot's set appears once
// however many clones read it, with every reader.
func liveSets(ctx context.Context, vc volumev1.VolumeServiceClient) ([]redundancy.Set, []readers, error) {
	var sets []redundancy.Set
	var who []readers
	index := map[string]int{}
	for token := ""; ; {
		resp, err := vc.ListDegradedVolumes(ctx, &volumev1.ListDegradedVolumesRequest{Below: redundancy.Full + 1, PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, nil, fmt.Errorf("list volumes' redundancy: %w", err)
		}
		for _, v := range resp.Volumes {
			for _, ps := range v.Sets {
				s := setFromProto(ps)
				key := setKey(s)
				i, seen := index[key]
				if !seen {
					i = len(sets)
					index[key] = i
					sets = append(sets, s)
					who = append(who, readers{})
				}
				r := &who[i]
				r.volumes = append(r.volumes, v.VolumeId)
				r.paths = append(r.paths, v.VolumeId+" "+ps.Path)
				if ps.SnapshotId != "" && !containsString(r.snapshots, ps.SnapshotId) {
					r.snapshots = append(r.snapshots, ps.SnapshotId)
				}
			}
		}
		if token = resp.NextPageToken; token == "" {
			return sets, who, nil
		}
	}
}

func containsString(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func setFromProto(ps *volumev1.RegionSetRedundancy) redundancy.Set {
	s := redundancy.Set{Path: ps.Path, ReadOnly: ps.ReadOnly, Depth: int(ps.Depth), Live: int(ps.LiveCopies), SnapshotID: ps.SnapshotId}
	for _, c := range ps.Copies {
		s.Copies = append(s.Copies, redundancy.Copy{Address: c.Address, Live: c.Live, Why: c.NotLiveReason,
			Target: redundancy.Target{Registered: c.TargetId != "", ID: c.TargetId, DatasetID: c.DatasetId, DiskID: c.DiskId}})
	}
	return s
}

// setKey identifies a region set by its copies.
func setKey(s redundancy.Set) string {
	keys := make([]string, 0, len(s.Copies))
	for _, c := range s.Copies {
		keys = append(keys, redundancy.AddressKey(c.Address)+"="+c.ID)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

// lossDetail names what the blocked sets' readers would lose.
// format takes the number of sets and of volumes.
func lossDetail(blocked []int, who []readers, format string) (vols, snaps []string, detail string) {
	seenV, seenS := map[string]bool{}, map[string]bool{}
	nv := 0
	var paths []string
	for _, si := range blocked {
		for _, v := range who[si].volumes {
			if !seenV[v] {
				seenV[v] = true
				nv++
				if len(vols) < maxNamed {
					vols = append(vols, v)
				}
			}
		}
		for _, s := range who[si].snapshots {
			if !seenS[s] {
				seenS[s] = true
				if len(snaps) < maxNamed {
					snaps = append(snaps, s)
				}
			}
		}
		if len(paths) < 3 {
			paths = append(paths, who[si].paths[0])
		}
	}
	sort.Strings(vols)
	sort.Strings(snaps)
	detail = fmt.Sprintf(format, len(blocked), nv) + ", e.g. " + strings.Join(paths, "; ")
	return vols, snaps, detail
}

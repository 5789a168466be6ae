package redundancy

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"storagecp.dev/platform/vcr"
)

func region(readOnly bool, targets ...string) *vcr.VCR {
	return &vcr.VCR{Region: &vcr.Region{BlockSize: 512, BlocksPerExtent: 64, ExtentCount: 8, Gen: 1,
		Opts: vcr.CrucibleOpts{ID: "r", Target: targets, ReadOnly: readOnly}}}
}

func volume(rop *vcr.VCR, subs ...*vcr.VCR) *vcr.VCR {
	return &vcr.VCR{Volume: &vcr.Volume{ID: "v", BlockSize: 512, SubVolumes: subs, ReadOnlyParent: rop}}
}

func addr(i int) string { return fmt.Sprintf("[fd00::%x]:19000", i) }

// world is a hand-built registry: address i is target t<i> on disk d<i/1>
// unless told otherwise.
type world struct {
	unregistered, deleting map[string]bool
	disk                   map[string]string
	expunged               map[string]bool
}

func newWorld() *world {
	return &world{unregistered: map[string]bool{}, deleting: map[string]bool{}, disk: map[string]string{}, expunged: map[string]bool{}}
}

func (w *world) resolve(a string) Target {
	if w.unregistered[a] {
		return Target{}
	}
	d, ok := w.disk[a]
	if !ok {
		d = "disk-" + a
	}
	return Target{Registered: true, ID: "t-" + a, Deleting: w.deleting[a], DiskID: d, InService: !w.expunged[d], SnapshotID: "snap"}
}

// A clone of a clone: own rw set, ROP (a snapshot of the first clone) whose
// own ROP is the original snapshot: read-only parents at depth 1 and 2.
func cloneOfClone() *vcr.VCR {
	base := volume(nil, region(true, addr(1), addr(2), addr(3)))
	mid := volume(base, region(true, addr(4), addr(5), addr(6)))
	return volume(mid, region(false, addr(7), addr(8), addr(9)))
}

func TestCountEveryDepth(t *testing.T) {
	v := cloneOfClone()
	w := newWorld()
	got := Count(v, w.resolve)
	if got.Redundancy != 3 || len(got.Sets) != 3 {
		t.Fatalf("healthy: redundancy %d with %d sets, want 3 with 3", got.Redundancy, len(got.Sets))
	}
	depths := map[string]int{}
	for _, s := range got.Sets {
		depths[s.Path] = s.Depth
	}
	want := map[string]int{"vcr.sub_volumes[0]": 0, "vcr.read_only_parent.sub_volumes[0]": 1,
		"vcr.read_only_parent.read_only_parent.sub_volumes[0]": 2}
	if fmt.Sprint(depths) != fmt.Sprint(want) {
		t.Fatalf("depths %v, want %v", depths, want)
	}

	// The deepest parent loses two copies, each a different way: the volume
	// is at 1, and the weakest set is the depth-2 one.
	w.expunged["disk-"+addr(1)] = true
	w.deleting[addr(2)] = true
	got = Count(v, w.resolve)
	if got.Redundancy != 1 || got.Sets[got.Weakest].Depth != 2 {
		t.Fatalf("redundancy %d, weakest %+v; want 1 at depth 2", got.Redundancy, got.Sets[got.Weakest])
	}
	whys := map[string]string{}
	for _, c := range got.Sets[got.Weakest].Copies {
		whys[c.Address] = c.Why
	}
	if whys[addr(1)] != DiskExpunged || whys[addr(2)] != Deleting || whys[addr(3)] != "" {
		t.Fatalf("reasons %v", whys)
	}
	// An unregistered copy of the depth-1 parent and an unknown disk in
	// the rw set: the first set with the fewest copies is the weakest.
	w.unregistered[addr(4)] = true
	w.unregistered[addr(5)] = true
	w.disk[addr(7)] = ""
	got = Count(v, w.resolve)
	if got.Redundancy != 1 || got.Sets[got.Weakest].Path != "vcr.read_only_parent.sub_volumes[0]" {
		t.Fatalf("redundancy %d weakest %s", got.Redundancy, got.Sets[got.Weakest].Path)
	}
	if got.Sets[0].Copies[0].Why != DiskUnknown || got.Sets[0].Live != 2 {
		t.Fatalf("rw set: %+v", got.Sets[0])
	}
	w.expunged["disk-"+addr(3)] = true
	if got = Count(v, w.resolve); got.Redundancy != 0 {
		t.Fatalf("every copy of the base gone: redundancy %d, want 0", got.Redundancy)
	}
}

func TestCountWithoutSetsAndSharedDisks(t *testing.T) {
	if got := Count(volume(nil), newWorld().resolve); got.Redundancy != Full || got.Weakest != -1 {
		t.Fatalf("no sets: %+v", got)
	}
	// Two copies on one disk: losing that disk takes both.
	w := newWorld()
	w.disk[addr(1)], w.disk[addr(2)], w.disk[addr(3)] = "a", "a", "b"
	s := Count(volume(nil, region(false, addr(1), addr(2), addr(3))), w.resolve).Sets[0]
	if got := s.LiveDisks(); fmt.Sprint(got) != "[a b]" {
		t.Fatalf("live disks %v", got)
	}
	lostA := func(d string) bool { return d == "a" }
	if s.After(lostA) != 1 || s.LosesLast(lostA) {
		t.Fatalf("after losing a: %d", s.After(lostA))
	}
	both := func(d string) bool { return d == "a" || d == "b" }
	if !s.LosesLast(both) {
		t.Fatal("losing a and b must lose the set")
	}
}

// brute is the reference: the largest safe subset by enumeration.
func brute(cands []Candidate, sets []Set, max int) int {
	best := 0
	for m := 0; m < 1<<len(cands); m++ {
		lost := map[string]bool{}
		n := 0
		for i, c := range cands {
			if m&(1<<i) != 0 {
				n++
				for _, d := range c.Disks {
					lost[d] = true
				}
			}
		}
		if n > max || n <= best {
			continue
		}
		ok := true
		for _, s := range sets {
			if s.LosesLast(func(d string) bool { return lost[d] }) {
				ok = false
				break
			}
		}
		if ok {
			best = n
		}
	}
	return best
}

func randomRack(r *rand.Rand, nCands, nSets int) ([]Candidate, []Set) {
	var cands []Candidate
	for i := 0; i < nCands; i++ {
		c := Candidate{Name: fmt.Sprint("c", i), Disks: []string{fmt.Sprint("d", i)}}
		if r.IntN(4) == 0 { // a sled of two disks
			c.Disks = append(c.Disks, fmt.Sprint("e", i))
		}
		cands = append(cands, c)
	}
	var sets []Set
	for i := 0; i < nSets; i++ {
		var s Set
		for k := 0; k < 3; k++ {
			var d string
			if r.IntN(8) == 0 {
				d = "outside" // a copy on a disk that is no candidate
			} else {
				c := cands[r.IntN(nCands)]
				d = c.Disks[r.IntN(len(c.Disks))]
			}
			live := r.IntN(6) != 0
			s.Copies = append(s.Copies, Copy{Target: Target{DiskID: d}, Live: live})
			if live {
				s.Live++
			}
		}
		sets = append(sets, s)
	}
	return cands, sets
}

func TestSearchIsExactAgainstBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(22, 1))
	for trial := 0; trial < 300; trial++ {
		cands, sets := randomRack(r, 1+r.IntN(10), r.IntN(25))
		max := 1 + r.IntN(len(cands))
		a := Search(cands, sets, max, DefaultBudget, nil)
		if !a.Exact {
			t.Fatalf("trial %d: not exact", trial)
		}
		if want := brute(cands, sets, max); len(a.Chosen) != want {
			t.Fatalf("trial %d: chose %d (%v), brute force finds %d", trial, len(a.Chosen), a.Chosen, want)
		}
		checkAnswer(t, cands, sets, max, a)
	}
}

// checkAnswer: the chosen subset is safe, and every left-out candidate is
// either blocked by sets it really would lose, or left out for the limit.
func checkAnswer(t *testing.T, cands []Candidate, sets []Set, max int, a Answer) {
	t.Helper()
	lost := map[string]bool{}
	in := map[int]bool{}
	for _, c := range a.Chosen {
		in[c] = true
		for _, d := range cands[c].Disks {
			lost[d] = true
		}
	}
	for si, s := range sets {
		if s.LosesLast(func(d string) bool { return lost[d] }) {
			t.Fatalf("chosen %v lose set %d", a.Chosen, si)
		}
	}
	for c := range cands {
		if in[c] {
			continue
		}
		with := func(d string) bool {
			if lost[d] {
				return true
			}
			for _, e := range cands[c].Disks {
				if e == d {
					return true
				}
			}
			return false
		}
		var want []int
		for si, s := range sets {
			if s.LosesLast(with) {
				want = append(want, si)
			}
		}
		if fmt.Sprint(want) != fmt.Sprint(a.Blocked[c]) {
			t.Fatalf("candidate %d: blocked by %v, want %v", c, a.Blocked[c], want)
		}
		if len(want) == 0 && len(a.Chosen) < max {
			t.Fatalf("candidate %d left out though safe and below the limit", c)
		}
	}
}

func TestSearchFallsBackToGreedyAndSaysSo(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	cands, sets := randomRack(r, 40, 120)
	a := Search(cands, sets, 40, 50, nil)
	if a.Exact {
		t.Fatal("a 50-node budget on 40 candidates cannot finish, yet the answer claims to be exact")
	}
	checkAnswer(t, cands, sets, 40, a)
	many, manySets := randomRack(r, MaxExact+6, 200)
	a = Search(many, manySets, len(many), DefaultBudget, nil)
	if a.Exact {
		t.Fatalf("more than %d candidates must be greedy", MaxExact)
	}
	checkAnswer(t, many, manySets, len(many), a)
}

func TestSearchLastCopyAlone(t *testing.T) {
	// A set whose only live copy is on c0: c0 can never go; c1 and c2
	// share the two live copies of another set, so only one of them can.
	cands := []Candidate{{Disks: []string{"a"}}, {Disks: []string{"b"}}, {Disks: []string{"c"}}}
	sets := []Set{
		{Live: 1, Copies: []Copy{{Target: Target{DiskID: "a"}, Live: true}, {Target: Target{DiskID: "b"}}}},
		{Live: 2, Copies: []Copy{{Target: Target{DiskID: "b"}, Live: true}, {Target: Target{DiskID: "c"}, Live: true}}},
	}
	a := Search(cands, sets, 3, DefaultBudget, nil)
	if len(a.Chosen) != 1 || a.Chosen[0] == 0 || fmt.Sprint(a.Blocked[0]) != "[0]" {
		t.Fatalf("answer %+v", a)
	}
}

// roomBrute is the reference Room rule: a set missing k copies after the
// loss needs k in-service sleds holding none of its copies, unless it was
// already short before.
func roomBrute(room *Room, sets []Set, lost map[string]bool) bool {
	short := func(s Set, lost map[string]bool) bool {
		need := 0
		occupied := map[string]bool{}
		for _, c := range s.Copies {
			if !c.Live || lost[c.DiskID] {
				need++
			}
			if c.DiskID != "" {
				occupied[room.SledOf[c.DiskID]] = true
			}
		}
		up := map[string]bool{}
		for d, ok := range room.InService {
			if ok && !lost[d] {
				up[room.SledOf[d]] = true
			}
		}
		eligible := 0
		for sl := range up {
			if !occupied[sl] {
				eligible++
			}
		}
		return need > 0 && eligible < need
	}
	for _, s := range sets {
		if short(s, lost) && !short(s, map[string]bool{}) {
			return false
		}
	}
	return true
}

func TestSearchWithRoomIsExact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 9))
	for trial := 0; trial < 300; trial++ {
		cands, sets := randomRack(r, 1+r.IntN(9), r.IntN(15))
		nSleds := 2 + r.IntN(6)
		room := &Room{SledOf: map[string]string{"outside": "s-out"}, InService: map[string]bool{"outside": true}}
		for _, c := range cands {
			for _, d := range c.Disks {
				room.SledOf[d] = fmt.Sprint("s", r.IntN(nSleds))
				room.InService[d] = true
			}
		}
		max := 1 + r.IntN(len(cands))
		a := Search(cands, sets, max, DefaultBudget, room)
		best := 0
		for m := 0; m < 1<<len(cands); m++ {
			lost := map[string]bool{}
			n := 0
			for i, c := range cands {
				if m&(1<<i) != 0 {
					n++
					for _, d := range c.Disks {
						lost[d] = true
					}
				}
			}
			if n > max || n <= best {
				continue
			}
			safe := roomBrute(room, sets, lost)
			for _, s := range sets {
				if s.LosesLast(func(d string) bool { return lost[d] }) {
					safe = false
				}
			}
			if safe {
				best = n
			}
		}
		if !a.Exact || len(a.Chosen) != best {
			t.Fatalf("trial %d: chose %v (exact %v), brute force finds %d", trial, a.Chosen, a.Exact, best)
		}
		lost := map[string]bool{}
		for _, c := range a.Chosen {
			for _, d := range cands[c].Disks {
				lost[d] = true
			}
		}
		if !roomBrute(room, sets, lost) {
			t.Fatalf("trial %d: the answer %v leaves a set without room", trial, a.Chosen)
		}
		for c := range cands {
			if _, left := a.Blocked[c]; !left {
				continue
			}
			with := map[string]bool{}
			for d := range lost {
				with[d] = true
			}
			for _, d := range cands[c].Disks {
				with[d] = true
			}
			if len(a.Blocked[c]) == 0 && (len(a.Short[c]) > 0) == roomBrute(room, sets, with) {
				t.Fatalf("trial %d: candidate %d short %v, reference room %v", trial, c, a.Short[c], roomBrute(room, sets, with))
			}
		}
	}
}

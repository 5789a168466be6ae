package redundancy

import (
	"fmt"
	"math/bits"
	"sort"
)

// Candidate is something an operator may expunge as one: a disk, or a sled
// standing for its in-service disks.
type Candidate struct {
	Name  string
	Disks []string
}

// Answer is Search's result.
type Answer struct {
	// Chosen are indices into the candidates, ascending.
	Chosen []int
	// Exact: Chosen is a largest safe subset. False when the candidates
	// were too many or the search ran out of its budget and the answer is
	// greedy (safe, perhaps not largest).
	Exact bool
	// Blocked[i], for a candidate not chosen, lists the indices of the
	// sets whose last live copy adding it to Chosen would take; empty
	// when it was left out for room or the size limit.
	Blocked map[int][]int
	// Short[i], for a candidate not chosen and not Blocked, lists the sets
	// whose replacements would find no sled (Room) were it added; empty
	// when it was left out only for the size limit.
	Short map[int][]int
	// Constraints counts the sets whose every live copy is on candidates
	// (distinct candidate combinations: the hyperedges searched).
	Constraints int
	// Nodes is the number of branch-and-bound nodes visited.
	Nodes int
}

// MaxExact is the most candidates Search solves exactly (one bit each).
const MaxExact = 64

// DefaultBudget bounds the branch-and-bound nodes Search visits before it
// settles for a greedy answer: about a second of work on a rack-sized
// input.
const DefaultBudget = 500_000

// Room is where replacements may go. Every replacement copy is placed on
// a sled holding no copy of its set (the allocator's distinct-sled rule;
// a replaced copy keeps its sled until it is destroyed), so a set missing
// k copies needs k in-service sleds outside the sleds of its copies. With
// a Room, Search also keeps that true for every set it would make worse
// (a set already short before any expunge is not held against anyone).
// Bytes are not modelled: the caller checks them.
type Room struct {
	// SledOf is the sled of every disk.
	SledOf map[string]string
	// InService are the disks in service now.
	InService map[string]bool
}

// Search finds the largest subset of at most max candidates that can be
// lost together without any of sets losing its last live copy
// (Set.LosesLast with the subset's disks lost) and, with room, without
// leaving any set's replacements without a sled (Room). This is a maximum
// independent set in the hypergraph whose vertices are the candidates and
// whose edges are, for each set with every live copy on candidates, the
// candidates holding those copies: a subset is safe when it contains no
// whole edge. A set with a live copy outside the candidates constrains
// nothing. With at most MaxExact candidates Search runs a branch and bound
// over bitmasks (exact unless it visits more than budget nodes); beyond
// that, or past the budget, it answers greedily: fewest edges first.
func Search(cands []Candidate, sets []Set, max, budget int, room *Room) Answer {
	ans := Answer{Blocked: map[int][]int{}, Short: map[int][]int{}}
	short := newRoomCheck(cands, sets, room)
	owner := map[string]int{}
	for i, c := range cands {
		for _, d := range c.Disks {
			owner[d] = i
		}
	}
	// edges: candidate index lists, deduplicated; edgeSets maps each to
	// the sets it came from.
	type edge struct {
		members []int
		sets    []int
	}
	var edges []*edge
	byKey := map[string]*edge{}
	for si, s := range sets {
		if s.Live == 0 {
			continue
		}
		var members []int
		inside := true
		seen := map[int]bool{}
		for _, d := range s.LiveDisks() {
			ci, ok := owner[d]
			if !ok {
				inside = false
				break
			}
			if !seen[ci] {
				seen[ci] = true
				members = append(members, ci)
			}
		}
		if !inside {
			continue
		}
		sort.Ints(members)
		key := fmt.Sprint(members)
		e := byKey[key]
		if e == nil {
			e = &edge{members: members}
			byKey[key] = e
			edges = append(edges, e)
		}
		e.sets = append(e.sets, si)
	}
	ans.Constraints = len(edges)
	n := len(cands)
	if max > n {
		max = n
	}
	edgesOf := make([][]int, n)
	for ei, e := range edges {
		for _, m := range e.members {
			edgesOf[m] = append(edgesOf[m], ei)
		}
	}
	// violates: adding c to chosen (a membership test) completes an edge.
	blocking := func(chosen func(int) bool, c int) []int {
		var out []int
		for _, ei := range edgesOf[c] {
			whole := true
			for _, m := range edges[ei].members {
				if m != c && !chosen(m) {
					whole = false
					break
				}
			}
			if whole {
				out = append(out, ei)
			}
		}
		return out
	}
	// Order: fewest edges first, which both prunes early and is the
	// greedy order.
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(edgesOf[order[a]]) < len(edgesOf[order[b]]) })

	var best []int
	if n <= MaxExact {
		masks := make([]uint64, len(edges))
		for ei, e := range edges {
			for _, m := range e.members {
				masks[ei] |= 1 << uint(m)
			}
		}
		var bestMask uint64
		bestCount := -1
		aborted := false
		var rec func(k int, chosen uint64, count int)
		rec = func(k int, chosen uint64, count int) {
			if aborted {
				return
			}
			ans.Nodes++
			if ans.Nodes > budget {
				aborted = true
				return
			}
			if count > bestCount {
				bestCount, bestMask = count, chosen
			}
			if count == max || k == n || count+(n-k) <= bestCount {
				return
			}
			c := order[k]
			with := chosen | 1<<uint(c)
			ok := true
			for _, ei := range edgesOf[c] {
				if masks[ei]&^with == 0 {
					ok = false
					break
				}
			}
			if ok && !short.any(with) {
				rec(k+1, with, count+1)
			}
			rec(k+1, chosen, count)
		}
		rec(0, 0, 0)
		// Safe either way; the largest unless the budget ran out.
		ans.Exact = !aborted
		for m := bestMask; m != 0; m &= m - 1 {
			best = append(best, bits.TrailingZeros64(m))
		}
	}
	if !ans.Exact {
		var greedy []int
		in := map[int]bool{}
		for _, c := range order {
			if len(greedy) == max {
				break
			}
			if len(blocking(func(m int) bool { return in[m] }, c)) == 0 && !short.anyOf(in, c) {
				in[c] = true
				greedy = append(greedy, c)
			}
		}
		if len(greedy) > len(best) {
			best = greedy
		}
	}
	sort.Ints(best)
	ans.Chosen = best
	in := map[int]bool{}
	for _, c := range best {
		in[c] = true
	}
	for c := 0; c < n; c++ {
		if in[c] {
			continue
		}
		var ss []int
		for _, ei := range blocking(func(m int) bool { return in[m] }, c) {
			ss = append(ss, edges[ei].sets...)
		}
		sort.Ints(ss)
		ans.Blocked[c] = ss
		if len(ss) == 0 {
			ans.Short[c] = short.shortWith(in, c)
		}
	}
	return ans
}

// roomCheck evaluates Room for subsets of the candidates.
type roomCheck struct {
	on bool
	// per candidate, its disks' indices
	candDisks [][]int
	// sled index of each disk index; in-service disks by sled
	sledOf    []int
	sledDisks [][]int
	// the sets that matter: with a copy on a candidate or missing one now
	sets []roomSet
}

type roomSet struct {
	index int
	// copies: disk index (-1 unknown) and whether live now
	disks []int
	live  []bool
	// sleds holding any copy
	occupied map[int]bool
}

func newRoomCheck(cands []Candidate, sets []Set, room *Room) *roomCheck {
	rc := &roomCheck{}
	if room == nil {
		return rc
	}
	rc.on = true
	diskIdx, sledIdx := map[string]int{}, map[string]int{}
	idx := func(d string) int {
		if d == "" {
			return -1
		}
		if i, ok := diskIdx[d]; ok {
			return i
		}
		i := len(rc.sledOf)
		diskIdx[d] = i
		sled, ok := room.SledOf[d]
		if !ok {
			sled = "?" + d
		}
		si, ok := sledIdx[sled]
		if !ok {
			si = len(rc.sledDisks)
			sledIdx[sled] = si
			rc.sledDisks = append(rc.sledDisks, nil)
		}
		rc.sledOf = append(rc.sledOf, si)
		if room.InService[d] {
			rc.sledDisks[si] = append(rc.sledDisks[si], i)
		}
		return i
	}
	// Every in-service disk counts for its sled, candidate or not.
	var inService []string
	for d, ok := range room.InService {
		if ok {
			inService = append(inService, d)
		}
	}
	sort.Strings(inService)
	for _, d := range inService {
		idx(d)
	}
	onCand := map[int]bool{}
	for _, c := range cands {
		var ds []int
		for _, d := range c.Disks {
			i := idx(d)
			ds = append(ds, i)
			onCand[i] = true
		}
		rc.candDisks = append(rc.candDisks, ds)
	}
	for si, s := range sets {
		rs := roomSet{index: si, occupied: map[int]bool{}}
		relevant := false
		for _, c := range s.Copies {
			i := idx(c.DiskID)
			rs.disks = append(rs.disks, i)
			rs.live = append(rs.live, c.Live)
			if i >= 0 {
				rs.occupied[rc.sledOf[i]] = true
			}
			if !c.Live || i >= 0 && onCand[i] {
				relevant = true
			}
		}
		if relevant {
			rc.sets = append(rc.sets, rs)
		}
	}
	return rc
}

// shortSets lists the sets that lack room with the disks gone, and had
// room with none gone.
func (rc *roomCheck) shortSets(gone []bool, first bool) []int {
	if !rc.on {
		return nil
	}
	up := make([]bool, len(rc.sledDisks))
	for s, ds := range rc.sledDisks {
		for _, d := range ds {
			if !gone[d] {
				up[s] = true
				break
			}
		}
	}
	upNow := make([]bool, len(rc.sledDisks))
	for s, ds := range rc.sledDisks {
		upNow[s] = len(ds) > 0
	}
	short := func(s roomSet, up []bool, gone []bool) bool {
		need := 0
		for k, d := range s.disks {
			if !s.live[k] || d >= 0 && gone[d] {
				need++
			}
		}
		if need == 0 {
			return false
		}
		eligible := 0
		for sl, u := range up {
			if u && !s.occupied[sl] {
				eligible++
			}
		}
		return eligible < need
	}
	none := make([]bool, len(rc.sledOf))
	var out []int
	for _, s := range rc.sets {
		if short(s, up, gone) && !short(s, upNow, none) {
			out = append(out, s.index)
			if first {
				return out
			}
		}
	}
	return out
}

func (rc *roomCheck) goneOf(member func(int) bool) []bool {
	gone := make([]bool, len(rc.sledOf))
	for c, ds := range rc.candDisks {
		if member(c) {
			for _, d := range ds {
				gone[d] = true
			}
		}
	}
	return gone
}

// any: some set lacks room with the candidates of mask gone.
func (rc *roomCheck) any(mask uint64) bool {
	if !rc.on {
		return false
	}
	return len(rc.shortSets(rc.goneOf(func(c int) bool { return mask&(1<<uint(c)) != 0 }), true)) > 0
}

// anyOf: some set lacks room with in's candidates and c gone.
func (rc *roomCheck) anyOf(in map[int]bool, c int) bool {
	return len(rc.sets0(in, c, true)) > 0
}

// shortWith: the sets lacking room with in's candidates and c gone.
func (rc *roomCheck) shortWith(in map[int]bool, c int) []int {
	return rc.sets0(in, c, false)
}

func (rc *roomCheck) sets0(in map[int]bool, c int, first bool) []int {
	if !rc.on {
		return nil
	}
	return rc.shortSets(rc.goneOf(func(m int) bool { return m == c || in[m] }), first)
}

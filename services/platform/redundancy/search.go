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
	// when it was left out only for the size limit.
	Blocked map[int][]int
	// Constraints counts the sets whose every live copy is on candidates
	// (distinct candidate combinations: the hyperedges searched).
	Constraints int
	// Nodes is the number of branch-and-bound nodes visited.
	Nodes int
}

// MaxExact is the most candidates Search solves exactly (one bit each).
const MaxExact = 64

// DefaultBudget bounds the branch-and-bound nodes Search visits before it
// settles for a greedy answer: about a second of work.
const DefaultBudget = 2_000_000

// Search finds the largest subset of at most max candidates that can be
// lost together without any of sets losing its last live copy
// (Set.LosesLast with the subset's disks lost). This is a maximum
// independent set in the hypergraph whose vertices are the candidates and
// whose edges are, for each set with every live copy on candidates, the
// candidates holding those copies: a subset is safe when it contains no
// whole edge. A set with a live copy outside the candidates constrains
// nothing. With at most MaxExact candidates Search runs a branch and bound
// over bitmasks (exact unless it visits more than budget nodes); beyond
// that, or past the budget, it answers greedily: fewest edges first.
func Search(cands []Candidate, sets []Set, max, budget int) Answer {
	ans := Answer{Blocked: map[int][]int{}}
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
			if ok {
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
			if len(blocking(func(m int) bool { return in[m] }, c)) == 0 {
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
	}
	return ans
}

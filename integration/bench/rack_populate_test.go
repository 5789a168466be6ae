package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/rack"
)

// population is what a rack bench puts on the rack before the expunge.
type population struct {
	Disks     int `json:"disks"`
	Snapshots int `json:"snapshots"`
	Clones    int `json:"clones"`
}

// populated is what populate made: every id, and which volumes run on a
// sim-upstairs.
type populated struct {
	disks, snapshots, clones []string
	// clonesPer is the clones of each snapshot, most popular first.
	clonesPer []int
	// attached counts the volumes constructed on sim-upstairs.
	attached int
	took     time.Duration
}

// cloneSpread divides clones over snapshots by harmonic weights (the
// i-th most popular image gets a share proportional to 1/i), rounded by
// largest remainder so that the counts add up exactly: with 400 images
// and 4,000 clones the first has about 600, the tenth about 60, the last
// one or two. Every snapshot gets at least one clone when there are as
// many clones as snapshots.
func cloneSpread(snapshots, clones int) []int {
	if snapshots == 0 {
		return nil
	}
	var h float64
	for i := 1; i <= snapshots; i++ {
		h += 1 / float64(i)
	}
	out := make([]int, snapshots)
	type rem struct {
		i int
		r float64
	}
	rems := make([]rem, snapshots)
	given := 0
	for i := range out {
		share := float64(clones) / (float64(i+1) * h)
		out[i] = int(share)
		rems[i] = rem{i, share - float64(out[i])}
		given += out[i]
	}
	sort.SliceStable(rems, func(a, b int) bool { return rems[a].r > rems[b].r })
	for k := 0; given < clones; k = (k + 1) % snapshots {
		out[rems[k].i]++
		given++
	}
	// The long tail's zeros take one from the head while the head has
	// more than one to spare, so that every image has a clone.
	for i := len(out) - 1; i >= 0 && out[i] == 0 && clones >= snapshots; i-- {
		out[0]--
		out[i]++
	}
	return out
}

// parallel runs f(0..n-1) on workers goroutines and returns the first
// error; the rest still run.
func parallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range min(workers, max(n, 1)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		})
	}
	wg.Wait()
	return first
}

// populate makes the population through the public RPCs, workers at a
// time, exactly as users and an image service would: disks
// (LifecycleService/CreateVolume), one snapshot each of the first
// Snapshots disks (SnapshotVolume), clones of the snapshots spread by
// cloneSpread (CloneVolume, in a shuffled order so popular and rare
// images interleave), every saga waited for and retried as a user would
// when it unwinds. Then every fourth disk and every fourth clone is
// constructed on one of the sim-upstairs in turn (the notifier's
// ConstructVolume: a running instance).
func populate(t *testing.T, r *rack.Rack, p population, workers int) populated {
	t.Helper()
	ctx := context.Background()
	began := time.Now()
	out := populated{disks: make([]string, p.Disks), snapshots: make([]string, p.Snapshots)}
	saga := func(what string, f func() (*orchestratorv1.SagaResult, error)) error {
		return rack.RetryUnavailable(ctx, func() error {
			s, err := f()
			return rack.SagaOutcome(t, what, s, err)
		})
	}
	progress := func(what string, start time.Time, n int) {
		t.Logf("populate: %d %s in %s (%.0f/s)", n, what, time.Since(start).Round(time.Millisecond), float64(n)/time.Since(start).Seconds())
	}

	start := time.Now()
	if err := parallel(p.Disks, workers, func(i int) error {
		return saga("create disk", func() (*orchestratorv1.SagaResult, error) {
			resp, err := r.Lifecycle.CreateVolume(ctx, &orchestratorv1.CreateVolumeRequest{SizeBytes: rack.GiB, Wait: true})
			if err == nil {
				out.disks[i] = resp.VolumeId
			}
			return resp.GetSaga(), err
		})
	}); err != nil {
		t.Fatalf("create disks: %v", err)
	}
	progress("disks", start, p.Disks)

	start = time.Now()
	if err := parallel(p.Snapshots, workers, func(i int) error {
		return saga("snapshot", func() (*orchestratorv1.SagaResult, error) {
			resp, err := r.Lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: out.disks[i%len(out.disks)], Wait: true})
			if err == nil {
				out.snapshots[i] = resp.SnapshotId
			}
			return resp.GetSaga(), err
		})
	}); err != nil {
		t.Fatalf("snapshots: %v", err)
	}
	progress("snapshots", start, p.Snapshots)

	out.clonesPer = cloneSpread(p.Snapshots, p.Clones)
	var of []string // one entry per clone: its snapshot
	for i, n := range out.clonesPer {
		for range n {
			of = append(of, out.snapshots[i])
		}
	}
	rng := rand.New(rand.NewPCG(23, 32))
	rng.Shuffle(len(of), func(a, b int) { of[a], of[b] = of[b], of[a] })
	out.clones = make([]string, len(of))
	start = time.Now()
	if err := parallel(len(of), workers, func(i int) error {
		return saga("clone", func() (*orchestratorv1.SagaResult, error) {
			resp, err := r.Lifecycle.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: of[i], Wait: true})
			if err == nil {
				out.clones[i] = resp.VolumeId
			}
			return resp.GetSaga(), err
		})
	}); err != nil {
		t.Fatalf("clones: %v", err)
	}
	progress("clones", start, len(of))

	var run []string
	for i, id := range out.disks {
		if i%4 == 0 {
			run = append(run, id)
		}
	}
	for i, id := range out.clones {
		if i%4 == 0 {
			run = append(run, id)
		}
	}
	sims := len(r.Stack.UpstairsEndpoints())
	start = time.Now()
	if err := parallel(len(run), workers, func(i int) error {
		return rack.RetryUnavailable(ctx, func() error {
			_, err := r.Notifier.ConstructVolume(ctx, constructRequest(r, run[i], i%sims))
			return err
		})
	}); err != nil {
		t.Fatalf("construct: %v", err)
	}
	out.attached = len(run)
	progress(fmt.Sprintf("volumes constructed on %d sim-upstairs", sims), start, len(run))
	out.took = time.Since(began)
	return out
}

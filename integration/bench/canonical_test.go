package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"

	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// TestCanonical measures the canonical case (make bench): one disk, one
// snapshot, ten clones running on sim-upstairs, the disk of one of the
// snapshot's region snapshots expunged — time from ExpungePhysicalDisk to
// every request terminal (goal: under 2 s), on a fresh rack each round,
// fsync on. The expunged disk may also hold rw regions, whose replacements
// are included.
//
// Each round runs twice, with mutual TLS (the default) and with every
// process --insecure, alternating, so that the TLS overhead is measured on
// the same machine in the same minute.
func TestCanonical(t *testing.T) {
	if os.Getenv("STORAGECP_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	const rounds = 5
	took := map[string][]time.Duration{}
	for i := range rounds {
		for _, m := range transportModes() {
			t.Run(fmt.Sprintf("%s/%d", m.name, i), func(t *testing.T) {
				r := rack.Start(t, 4, 2, stack.Config{Fsync: true, Insecure: m.insecure})
				disk := r.CreateDisk(t)
				snap := r.Snapshot(t, disk)
				for c := range 10 {
					r.Construct(t, r.Clone(t, snap), c%2)
				}
				old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
				began := time.Now()
				r.Expunge(t, r.DiskOf(t, old.DatasetId))
				reqs := r.WaitRequests(t, 60*time.Second)
				took[m.name] = append(took[m.name], time.Since(began))
				t.Logf("%s round %d: %d requests terminal in %s", m.name, i, len(reqs), took[m.name][len(took[m.name])-1])
				r.Invariants(t)
				r.NoDataLoss(t)
			})
		}
	}
	out := map[string]any{}
	for _, m := range transportModes() {
		d := took[m.name]
		if len(d) == 0 {
			continue
		}
		slices.Sort(d)
		median, worst := d[len(d)/2], d[len(d)-1]
		fmt.Printf("\ncanonical (10 clones on sim-upstairs), %s: expunge → Complete median %.2fs, worst %.2fs over %d rounds (goal < 2s)\n",
			m.name, median.Seconds(), worst.Seconds(), len(d))
		out[m.name] = map[string]any{"rounds": len(d), "median_seconds": median.Seconds(), "worst_seconds": worst.Seconds()}
	}
	root, _ := stack.FindRepoRoot()
	dir := filepath.Join(root, ".run", "bench")
	_ = os.MkdirAll(dir, 0o755)
	b, _ := json.MarshalIndent(out, "", "  ")
	_ = os.WriteFile(filepath.Join(dir, "canonical.json"), b, 0o644)
}

// transportMode is how the processes talk in a benchmark run.
type transportMode struct {
	name     string
	insecure bool
}

// transportModes are the modes measured: both unless STORAGECP_BENCH_TLS
// says "on" (mutual TLS only) or "off" (plaintext only).
func transportModes() []transportMode {
	tls, plain := transportMode{"mtls", false}, transportMode{"plaintext", true}
	switch os.Getenv("STORAGECP_BENCH_TLS") {
	case "on":
		return []transportMode{tls}
	case "off":
		return []transportMode{plain}
	}
	return []transportMode{tls, plain}
}

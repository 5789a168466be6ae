package fencelog_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"storagecp.dev/testsupport/fencelog"
)

const (
	orch     = "spiffe://storagecp.local/replacement-orchestrator"
	advance  = "/storage.common.v1.FenceService/AdvanceEpoch"
	create   = "/storage.volume.v1.VolumeService/CreateVolume"
	allocate = "/storage.allocator.v1.RegionAllocatorService/Allocate"
)

// deployment is a log directory written line by line as the processes
// write theirs: slog JSON, one file per process.
type deployment struct {
	t   *testing.T
	dir string
}

func newDeployment(t *testing.T) *deployment {
	return &deployment{t: t, dir: t.TempDir()}
}

// raw appends text to a process's file as it is.
func (d *deployment) raw(proc, text string) {
	d.t.Helper()
	f, err := os.OpenFile(filepath.Join(d.dir, proc+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		d.t.Fatal(err)
	}
}

// log appends one line as the process's logger writes it.
func (d *deployment) log(proc string, level slog.Level, msg string, args ...any) {
	d.t.Helper()
	var b strings.Builder
	slog.New(slog.NewJSONHandler(&b, nil)).With("service", proc).Log(context.Background(), level, msg, args...)
	d.raw(proc, b.String())
}

func (d *deployment) start(proc string) {
	d.log(proc, slog.LevelInfo, "serving metrics", "addr", "127.0.0.1:1")
	d.log(proc, slog.LevelInfo, "serving", "addr", "127.0.0.1:2", "tls", true)
}

func (d *deployment) raised(proc string, from, to int64, method string) {
	d.log(proc, slog.LevelInfo, "fence raised", "from", from, "to", to, "method", method, "caller", orch)
}

func (d *deployment) refused(proc string, epoch, newest int64, method string) {
	d.log(proc, slog.LevelWarn, "fence refused stale epoch", "epoch", epoch, "newest", newest, "method", method, "caller", orch)
}

func (d *deployment) elected(proc string, epoch int64) {
	d.log(proc, slog.LevelInfo, "elected leader", "epoch", epoch)
}

func (d *deployment) ended(proc string, epoch int64) {
	d.log(proc, slog.LevelWarn, "leadership ended", "epoch", epoch, "why", "another process holds the lease")
}

func (d *deployment) check() fencelog.Report {
	d.t.Helper()
	r, err := fencelog.Check(d.dir)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Log(r.String())
	return r
}

// violated checks that the report has exactly one violation, containing
// want.
func violated(t *testing.T, r fencelog.Report, want string) {
	t.Helper()
	if len(r.Violations) != 1 || !strings.Contains(r.Violations[0], want) {
		t.Fatalf("violations %q, want one with %q", r.Violations, want)
	}
}

func terms(t *testing.T, r fencelog.Report, name string) []fencelog.Term {
	t.Helper()
	for _, o := range r.Orchestrators {
		if o.Name == name {
			return o.Terms
		}
	}
	t.Fatalf("no orchestrator %s in the report", name)
	return nil
}

// clean is a failover from orchestrator 0 to orchestrator 1 and back, with
// the stale leader refused: what a partition test should leave behind.
func clean(t *testing.T) *deployment {
	d := newDeployment(t)
	for _, p := range []string{"volume-service", "region-allocator", "upstairs-notifier", "replacement-orchestrator", "replacement-orchestrator-1", "sim-agent"} {
		d.start(p)
	}
	d.raw("sim-agent", "sim-agent: not a JSON line\n{truncated\n")
	d.elected("replacement-orchestrator", 1)
	d.raised("volume-service", 0, 1, advance)
	d.raised("region-allocator", 0, 1, advance)
	d.raised("upstairs-notifier", 0, 1, advance)
	// Orchestrator 0 is cut off; 1 takes over; 0's late write is refused.
	d.elected("replacement-orchestrator-1", 2)
	d.raised("volume-service", 1, 2, advance)
	d.raised("region-allocator", 1, 2, advance)
	d.raised("upstairs-notifier", 1, 2, advance)
	d.refused("volume-service", 1, 2, create)
	d.ended("replacement-orchestrator", 1)
	// 1 is cut off; 0 is back.
	d.ended("replacement-orchestrator-1", 2)
	d.elected("replacement-orchestrator", 3)
	d.raised("volume-service", 2, 3, advance)
	// A fenced write carrying the new epoch got to the allocator first.
	d.raised("region-allocator", 2, 3, allocate)
	d.refused("region-allocator", 2, 3, allocate)
	d.raised("upstairs-notifier", 2, 3, advance)
	return d
}

func TestClean(t *testing.T) {
	r := clean(t).check()
	if !r.OK() || len(r.Gaps) != 0 {
		t.Fatalf("violations %q, gaps %q", r.Violations, r.Gaps)
	}
	led := r.Led()
	if !slices.Equal(led["replacement-orchestrator"], []int64{1, 3}) || !slices.Equal(led["replacement-orchestrator-1"], []int64{2}) {
		t.Fatalf("led %v", led)
	}
	var names []string
	for _, s := range r.Services {
		names = append(names, s.Name)
		var to []int64
		for _, x := range s.Raises {
			to = append(to, x.To)
		}
		if !slices.Equal(to, []int64{1, 2, 3}) {
			t.Errorf("%s raised to %v", s.Name, to)
		}
	}
	if !slices.Equal(names, []string{"region-allocator", "upstairs-notifier", "volume-service"}) {
		t.Errorf("services %v", names)
	}
	vs := r.Services[2]
	if len(vs.Refusals) != 1 || vs.Refusals[0] != (fencelog.Refusal{Epoch: 1, Newest: 2, Method: create, Caller: orch, Line: vs.Refusals[0].Line}) {
		t.Errorf("volume-service refusals %+v", vs.Refusals)
	}
	last := terms(t, r, "replacement-orchestrator")[1]
	if last.Epoch != 3 || last.Ended {
		t.Errorf("the last term at the end of the log: %+v", last)
	}
	if s := r.String(); !strings.Contains(s, "OK") || !strings.Contains(s, "volume-service raised: 0→1 1→2 2→3") {
		t.Errorf("String:\n%s", s)
	}
}

func TestRaiseGoingDown(t *testing.T) {
	d := clean(t)
	d.raised("volume-service", 1, 2, advance)
	violated(t, d.check(), "volume-service.log:7: fence raised to 2 after it was raised to 3")
}

func TestRaiseNotUp(t *testing.T) {
	d := clean(t)
	d.raised("volume-service", 3, 2, advance)
	violated(t, d.check(), "fence raised from 3 to 2, which is not up")
}

func TestRaiseNotAboveThePrevious(t *testing.T) {
	d := clean(t)
	d.raised("upstairs-notifier", 1, 3, create) // a raise to 3 again
	violated(t, d.check(), "raised to 3 after it was raised to 3")
}

func TestRaiseFromBelowThePrevious(t *testing.T) {
	d := clean(t)
	d.raised("region-allocator", 2, 4, advance)
	violated(t, d.check(), "below the 3 it was raised to before")
}

// A raise from above the previous one's to is a gap, not a violation: an
// unlogged raise happened in between.
func TestGap(t *testing.T) {
	d := clean(t)
	d.raised("region-allocator", 4, 5, advance)
	r := d.check()
	if !r.OK() || len(r.Gaps) != 1 || !strings.Contains(r.Gaps[0], "region-allocator.log:7: raised from 4") {
		t.Fatalf("violations %q, gaps %q", r.Violations, r.Gaps)
	}
}

func TestRefusalOfANewerEpoch(t *testing.T) {
	d := clean(t)
	d.refused("volume-service", 3, 3, create)
	violated(t, d.check(), "refused epoch 3 as stale against newest 3")
}

func TestRefusalAgainstAnOlderFence(t *testing.T) {
	d := clean(t)
	d.refused("volume-service", 1, 2, create) // the fence is at 3
	violated(t, d.check(), "raised to 3 before")
}

func TestEpochElectedTwice(t *testing.T) {
	d := clean(t)
	d.elected("replacement-orchestrator-1", 3)
	violated(t, d.check(), "epoch 3 elected more than once")
}

func TestOverlappingTerms(t *testing.T) {
	d := clean(t)
	d.elected("replacement-orchestrator", 4) // 3 not ended
	violated(t, d.check(), "while still leading epoch 3")
}

func TestEndOfATermNotLed(t *testing.T) {
	d := clean(t)
	d.ended("replacement-orchestrator-1", 3)
	violated(t, d.check(), "not leading it")
}

// A process killed while leading never logs the end of its term; its
// restart (the same file) may be elected again.
func TestRestartEndsTheTerm(t *testing.T) {
	d := clean(t)
	d.start("replacement-orchestrator") // killed while leading 3, restarted
	d.elected("replacement-orchestrator", 4)
	d.raised("volume-service", 3, 4, advance)
	r := d.check()
	if !r.OK() {
		t.Fatalf("violations %q", r.Violations)
	}
	ts := terms(t, r, "replacement-orchestrator")
	if len(ts) != 3 || ts[1].Epoch != 3 || ts[1].Ended || ts[2].Epoch != 4 {
		t.Fatalf("terms %+v", ts)
	}
}

func TestMalformedLine(t *testing.T) {
	d := clean(t)
	d.log("volume-service", slog.LevelInfo, "fence raised", "to", 4)
	violated(t, d.check(), `"fence raised" without from and to`)
}

func TestNoDirectory(t *testing.T) {
	if _, err := fencelog.Check(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("no error for a missing directory")
	}
}

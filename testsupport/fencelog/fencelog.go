// Package fencelog reads a deployment's logs and checks that they show at
// most one leader acting at a time: the proof a partition test gives that
// the orchestrator's lease and the services' fences did their work.
//
// The log directory has one file per process (volume-service.log,
// replacement-orchestrator-1.log, sim-agent.log, …), each JSON lines as
// log/slog writes them; lines that are not JSON are skipped. A restarted
// process appends to its file; the directory must hold one deployment only
// (a second one, on fresh databases, starts its epochs again at 1, which
// reads as a fence going down and an epoch elected twice). The lines read
// are:
//
//   - "fence raised" {from, to, method, caller} and "fence refused stale
//     epoch" {epoch, newest, method, caller}, which every service with a
//     database logs (platform/fence);
//   - "elected leader" {epoch} and "leadership ended" {epoch, why}, which
//     the replacement-orchestrator logs (its leader package);
//   - "serving metrics" and "serving", which every process logs as it
//     starts (platform/server): where a restarted process's part of a file
//     begins.
//
// The rules, per file (process) unless said otherwise:
//
//  1. Raises go up: each "fence raised" has to > from, to greater than the
//     previous raise's to, and from at least the previous raise's to. From
//     may be higher than the previous to without a violation: the fence
//     only ever rises, but not every raise is logged (the orchestrator's
//     own database is raised by its lease transaction; a commit whose
//     acknowledgement was lost; processes sharing a database each log only
//     their own). Report.Gaps lists those, for a test that wants none. From
//     lower than the previous to means the fence went down, or a raise was
//     logged that did not happen: a violation.
//  2. A refusal is of an older epoch: epoch < newest, and newest is at
//     least the epoch last raised in that file before it (a service never
//     refuses against a fence older than one it raised). In principle a
//     refusal that read the fence just before a concurrent raise committed
//     can be logged just after that raise; that needs a call from a leader
//     two terms old racing the raise of the newest one.
//  3. Across files: each epoch was "elected leader" by at most one process,
//     and once.
//  4. A process's terms do not overlap: after "elected leader" for an
//     epoch comes "leadership ended" for that epoch before its next
//     "elected leader", unless the process exited in between (its file
//     ends, or a restart begins); such a term is reported as not ended. A
//     clean shutdown also leaves a term not ended (the term is over
//     before the lease is released). A restart is recognised by "serving
//     metrics", logged before the lease is first tried, or by "serving"
//     when the process serves no metrics (testsupport/stack always has it
//     serve them).
//
// Check returns what it read (Report) and the violations; Report.String
// is for a test's log.
package fencelog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Log messages read.
const (
	MsgRaised   = "fence raised"
	MsgRefused  = "fence refused stale epoch"
	MsgElected  = "elected leader"
	MsgEnded    = "leadership ended"
	msgServing  = "serving"
	msgServingM = "serving metrics"
)

// Raise is one "fence raised" line.
type Raise struct {
	From, To int64
	Method   string
	Caller   string
	Line     int
}

// Refusal is one "fence refused stale epoch" line.
type Refusal struct {
	Epoch, Newest int64
	Method        string
	Caller        string
	Line          int
}

// Service is what one file says of its fence.
type Service struct {
	// Name is the file's name without ".log".
	Name     string
	Raises   []Raise
	Refusals []Refusal
}

// Term is one "elected leader" and how it ended.
type Term struct {
	Epoch int64
	Line  int
	// Ended: "leadership ended" was logged for it; Why is its reason.
	Ended bool
	Why   string
}

// Orchestrator is what one file says of leadership.
type Orchestrator struct {
	Name  string
	Terms []Term
}

// Report is what Check read and found.
type Report struct {
	Dir string
	// Services are the files with fence lines, Orchestrators those with
	// leadership lines, both by name.
	Services      []Service
	Orchestrators []Orchestrator
	// Gaps are raises whose from is above the previous raise's to (rule 1):
	// allowed, listed for a test that wants every raise logged.
	Gaps []string
	// Violations is empty when the logs show at most one leader acting.
	Violations []string
}

// OK reports no violations.
func (r Report) OK() bool { return len(r.Violations) == 0 }

// Led returns the epochs each orchestrator process was elected for.
func (r Report) Led() map[string][]int64 {
	out := map[string][]int64{}
	for _, o := range r.Orchestrators {
		for _, t := range o.Terms {
			out[o.Name] = append(out[o.Name], t.Epoch)
		}
	}
	return out
}

// String shows the report for a test's log.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "fence log check of %s:", r.Dir)
	if r.OK() {
		b.WriteString(" OK\n")
	} else {
		fmt.Fprintf(&b, " %d violation(s)\n", len(r.Violations))
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "  VIOLATION %s\n", v)
		}
	}
	for _, o := range r.Orchestrators {
		fmt.Fprintf(&b, "  %s led:", o.Name)
		for _, t := range o.Terms {
			fmt.Fprintf(&b, " %d", t.Epoch)
			if !t.Ended {
				b.WriteString("(not ended)")
			}
		}
		b.WriteString("\n")
	}
	for _, s := range r.Services {
		fmt.Fprintf(&b, "  %s raised:", s.Name)
		for _, x := range s.Raises {
			fmt.Fprintf(&b, " %d→%d", x.From, x.To)
		}
		b.WriteString("\n")
		if len(s.Refusals) > 0 {
			fmt.Fprintf(&b, "  %s refused:", s.Name)
			for _, x := range s.Refusals {
				fmt.Fprintf(&b, " %d<%d %s;", x.Epoch, x.Newest, x.Method)
			}
			b.WriteString("\n")
		}
	}
	for _, g := range r.Gaps {
		fmt.Fprintf(&b, "  gap: %s\n", g)
	}
	return b.String()
}

// line is the part of a log line the rules need.
type line struct {
	Msg    string `json:"msg"`
	From   *int64 `json:"from"`
	To     *int64 `json:"to"`
	Epoch  *int64 `json:"epoch"`
	Newest *int64 `json:"newest"`
	Method string `json:"method"`
	Caller string `json:"caller"`
	Why    string `json:"why"`
}

// Check reads every *.log file of logDir and checks the rules of the
// package comment. The error is for a directory or file that cannot be
// read; what the logs say is in the report.
func Check(logDir string) (Report, error) {
	r := Report{Dir: logDir}
	if _, err := os.ReadDir(logDir); err != nil {
		return r, err // a mistyped directory must not pass as logs with nothing wrong
	}
	files, err := filepath.Glob(filepath.Join(logDir, "*.log"))
	if err != nil {
		return r, err
	}
	sort.Strings(files)
	electedBy := map[int64][]string{} // epoch → "file:line"
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".log")
		svc, orch, err := checkFile(f, name, &r)
		if err != nil {
			return r, err
		}
		if len(svc.Raises)+len(svc.Refusals) > 0 {
			r.Services = append(r.Services, svc)
		}
		if len(orch.Terms) > 0 {
			r.Orchestrators = append(r.Orchestrators, orch)
			for _, t := range orch.Terms {
				electedBy[t.Epoch] = append(electedBy[t.Epoch], fmt.Sprintf("%s:%d", filepath.Base(f), t.Line))
			}
		}
	}
	epochs := make([]int64, 0, len(electedBy))
	for e := range electedBy {
		epochs = append(epochs, e)
	}
	sort.Slice(epochs, func(i, j int) bool { return epochs[i] < epochs[j] })
	for _, e := range epochs {
		if by := electedBy[e]; len(by) > 1 {
			r.violate("epoch %d elected more than once: %s", e, strings.Join(by, ", "))
		}
	}
	return r, nil
}

func (r *Report) violate(format string, args ...any) {
	r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
}

// checkFile reads one process's file, applying rules 1, 2 and 4.
func checkFile(path, name string, r *Report) (Service, Orchestrator, error) {
	svc := Service{Name: name}
	orch := Orchestrator{Name: name}
	fh, err := os.Open(path)
	if err != nil {
		return svc, orch, err
	}
	defer fh.Close()

	var lastTo int64
	raised := false
	open := -1 // index in orch.Terms of the open term
	exited := map[int64]int{}
	startedWithMetrics, servingSeen := false, false
	restart := func() {
		if open >= 0 {
			exited[orch.Terms[open].Epoch] = open
			open = -1
		}
	}

	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
	n := 0
	for sc.Scan() {
		n++
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 || raw[0] != '{' {
			continue
		}
		var l line
		if json.Unmarshal(raw, &l) != nil {
			continue
		}
		at := fmt.Sprintf("%s:%d", filepath.Base(path), n)
		switch l.Msg {
		case msgServingM:
			restart()
			startedWithMetrics, servingSeen = true, false
		case msgServing:
			// A process logs "serving metrics" (if it serves them) before
			// anything else and "serving" once its services are up; a
			// "serving" is a start of its own only without the first.
			if !(startedWithMetrics && !servingSeen) {
				restart()
				startedWithMetrics = false
			}
			servingSeen = true
		case MsgRaised:
			if l.From == nil || l.To == nil {
				r.violate("%s: %q without from and to", at, l.Msg)
				continue
			}
			x := Raise{From: *l.From, To: *l.To, Method: l.Method, Caller: l.Caller, Line: n}
			svc.Raises = append(svc.Raises, x)
			if x.To <= x.From {
				r.violate("%s: fence raised from %d to %d, which is not up", at, x.From, x.To)
			} else if raised {
				switch {
				case x.To <= lastTo:
					r.violate("%s: fence raised to %d after it was raised to %d", at, x.To, lastTo)
				case x.From < lastTo:
					r.violate("%s: fence raised from %d, below the %d it was raised to before", at, x.From, lastTo)
				case x.From > lastTo:
					r.Gaps = append(r.Gaps, fmt.Sprintf("%s: raised from %d, previous raise logged was to %d", at, x.From, lastTo))
				}
			}
			if !raised || x.To > lastTo {
				lastTo = x.To
			}
			raised = true
		case MsgRefused:
			if l.Epoch == nil || l.Newest == nil {
				r.violate("%s: %q without epoch and newest", at, l.Msg)
				continue
			}
			x := Refusal{Epoch: *l.Epoch, Newest: *l.Newest, Method: l.Method, Caller: l.Caller, Line: n}
			svc.Refusals = append(svc.Refusals, x)
			if x.Epoch >= x.Newest {
				r.violate("%s: refused epoch %d as stale against newest %d", at, x.Epoch, x.Newest)
			}
			if raised && x.Newest < lastTo {
				r.violate("%s: refused epoch %d against newest %d, but the fence was raised to %d before", at, x.Epoch, x.Newest, lastTo)
			}
		case MsgElected:
			if l.Epoch == nil {
				r.violate("%s: %q without epoch", at, l.Msg)
				continue
			}
			if open >= 0 {
				t := orch.Terms[open]
				r.violate("%s: elected for epoch %d while still leading epoch %d (line %d)", at, *l.Epoch, t.Epoch, t.Line)
			}
			orch.Terms = append(orch.Terms, Term{Epoch: *l.Epoch, Line: n})
			open = len(orch.Terms) - 1
		case MsgEnded:
			if l.Epoch == nil {
				r.violate("%s: %q without epoch", at, l.Msg)
				continue
			}
			switch i, ok := exited[*l.Epoch]; {
			case open >= 0 && orch.Terms[open].Epoch == *l.Epoch:
				orch.Terms[open].Ended, orch.Terms[open].Why = true, l.Why
				open = -1
			case ok && !orch.Terms[i].Ended:
				// A restart marker came before the term's end: the
				// process had not exited after all.
				orch.Terms[i].Ended, orch.Terms[i].Why = true, l.Why
			default:
				r.violate("%s: leadership of epoch %d ended, but it was not leading it", at, *l.Epoch)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return svc, orch, fmt.Errorf("%s: %w", path, err)
	}
	return svc, orch, nil
}

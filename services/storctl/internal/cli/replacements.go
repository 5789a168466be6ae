package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

const (
	prefixKind    = "REPLACEMENT_KIND_"
	prefixROState = "READ_ONLY_REPLACEMENT_STATE_"
	prefixRWState = "REGION_REPLACEMENT_STATE_"
	prefixStep    = "STEP_STATE_"
	prefixWait    = "WAIT_KIND_"
)

// waitKind is what a request or step waits on, in one word ("-" when
// nothing is said).
func waitKind(w *orchestratorv1.Wait) string {
	if w == nil {
		return "-"
	}
	return enum(w.Kind, prefixWait)
}

// waitText is what a request or step waits on and since when.
func waitText(w *orchestratorv1.Wait) string {
	if w == nil {
		return "-"
	}
	out := waitKind(w) + ": " + w.Detail
	if w.Since != nil {
		out += " (since " + ts(w.Since) + ")"
	}
	return out
}

func (e *env) replacement() (orchestratorv1.ReplacementServiceClient, error) {
	c, err := e.conn(svcOrchestrator)
	if err != nil {
		return nil, err
	}
	return orchestratorv1.NewReplacementServiceClient(c), nil
}

// parseEnum finds the enum value whose short name (see enum) is v.
func parseEnum[T interface {
	~int32
	String() string
}](field, prefix, v string, values map[string]int32) (T, error) {
	want := strings.ToUpper(strings.ReplaceAll(v, "-", "_"))
	for name, n := range values {
		if name == prefix+want && n != 0 {
			return T(n), nil
		}
	}
	var names []string
	for name, n := range values {
		if n != 0 {
			names = append(names, strings.ToLower(strings.TrimPrefix(name, prefix)))
		}
	}
	return 0, usagef("%s: unknown %q (one of: %s)", field, v, strings.Join(sortedStrings(names), ", "))
}

func replacementState(r *orchestratorv1.Replacement) string {
	if r.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		return enum(r.RegionState, prefixRWState)
	}
	return enum(r.ReadOnlyState, prefixROState)
}

func replacementRows(rs []*orchestratorv1.Replacement) [][]string {
	var rows [][]string
	for _, r := range rs {
		since, detail := "-", "-"
		if r.Wait != nil {
			if r.Wait.Since != nil {
				since = ts(r.Wait.Since)
			}
			if r.Wait.Detail != "" {
				detail = r.Wait.Detail
			}
		}
		rows = append(rows, []string{
			r.ReplacementId, enum(r.Kind, prefixKind), replacementState(r), r.OldTargetId, r.LockVolumeId,
			r.OperatingSagaId, waitKind(r.Wait), since, fmt.Sprint(r.Attempts), ts(r.RequestTime), detail,
		})
	}
	return rows
}

// The wait's detail comes last: it is the long column.
var replacementHeader = []string{"ID", "KIND", "STATE", "TARGET", "LOCK_VOLUME", "SAGA", "WAITS_ON", "WAITING_SINCE", "ATTEMPTS", "REQUESTED", "WAIT_DETAIL"}

// pauseText says who holds a request, since when and why ("-" when no one).
func pauseText(p *orchestratorv1.Pause) string {
	if p == nil {
		return "-"
	}
	whose := "paused"
	if p.Rack {
		whose = "rack paused"
	}
	return fmt.Sprintf("%s by %s since %s: %s", whose, p.PausedBy, ts(p.PausedTime), p.Reason)
}

// progressText is a request's steps done of all, for read-only kinds.
func progressText(r *orchestratorv1.Replacement) string {
	c := r.StepCounts
	if c == nil || r.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		return "-"
	}
	total := c.Requested + c.Running + c.Complete + c.Collecting + c.VolumeDeleted
	return fmt.Sprintf("%d of %d steps done (requested %d, running %d, complete %d, collecting %d)",
		c.VolumeDeleted, total, c.Requested, c.Running, c.Complete, c.Collecting)
}

// estimateText is the time left and what it was made from.
func estimateText(e *orchestratorv1.Estimate) string {
	if e == nil {
		return "-"
	}
	if !e.Known {
		return "unknown: " + e.Basis
	}
	if e.Remaining.AsDuration() == 0 {
		return "nothing left (" + e.Basis + ")"
	}
	return fmt.Sprintf("%s left, done by %s (%s)", e.Remaining.AsDuration().Round(time.Second), ts(e.CompleteTime), e.Basis)
}

func replacementCommands() []command {
	return []command{{
		path: "replacements list", summary: "replacement requests (read-only and rw), oldest first",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			kind := fs.String("kind", "", "only this kind: region_snapshot, read_only_region, read_write_region")
			paused := fs.Bool("paused", false, "only requests an operator holds (their own pause, or the rack's)")
			state := fs.String("state", "", "only this state (read-only states, or rw states with --kind read_write_region)")
			return func(ctx context.Context, e *env, _ []string) error {
				req := &orchestratorv1.ListReplacementsRequest{PageSize: 1000, Paused: *paused}
				if *kind != "" {
					k, err := parseEnum[orchestratorv1.ReplacementKind]("--kind", prefixKind, *kind, orchestratorv1.ReplacementKind_value)
					if err != nil {
						return err
					}
					req.Kind = k
				}
				if *state != "" {
					if req.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
						s, err := parseEnum[orchestratorv1.RegionReplacementState]("--state", prefixRWState, *state, orchestratorv1.RegionReplacementState_value)
						if err != nil {
							return err
						}
						req.RegionState = s
					} else {
						s, err := parseEnum[orchestratorv1.ReadOnlyReplacementState]("--state", prefixROState, *state, orchestratorv1.ReadOnlyReplacementState_value)
						if err != nil {
							return err
						}
						req.ReadOnlyState = s
					}
				}
				c, err := e.replacement()
				if err != nil {
					return err
				}
				all := &orchestratorv1.ListReplacementsResponse{}
				if err := allPages(func(token string) (*orchestratorv1.ListReplacementsResponse, error) {
					req.PageToken = token
					return c.ListReplacements(ctx, req)
				}, func(resp *orchestratorv1.ListReplacementsResponse) {
					all.Replacements = append(all.Replacements, resp.Replacements...)
					all.RackPause = resp.RackPause
				}); err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(all)
				}
				if all.RackPause != nil {
					if _, err := fmt.Fprintf(e.stdout, "THE RACK IS PAUSED: %s\n\n", pauseText(all.RackPause)); err != nil {
						return err
					}
				}
				return renderTable(e.stdout, replacementHeader, replacementRows(all.Replacements))
			}
		},
	}, {
		path: "replacements show", args: "ID", summary: "one request with its steps (read-only) or drive steps (rw)",
		min: 1, max: 1,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				c, err := e.replacement()
				if err != nil {
					return err
				}
				resp, err := c.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: args[0]})
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(resp)
				}
				return renderReplacement(e.stdout, resp)
			}
		},
	}, {
		path: "replacements watch", args: "[ID]", summary: "stream progress of one request, or of every unfinished one, until terminal",
		max: 1, unbounded: true,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				req := &orchestratorv1.WatchReplacementRequest{}
				if len(args) == 1 {
					req.ReplacementId = args[0]
				}
				c, err := e.replacement()
				if err != nil {
					return err
				}
				stream, err := c.WatchReplacement(ctx, req)
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				for {
					msg, err := stream.Recv()
					if errors.Is(err, io.EOF) {
						return nil
					}
					if err != nil {
						return e.wrap(svcOrchestrator, err)
					}
					if e.json() {
						// One compact object per line, for line-oriented tools.
						b, err := marshalJSON(msg)
						if err != nil {
							return err
						}
						if _, err := fmt.Fprintln(e.stdout, compactJSON(b)); err != nil {
							return err
						}
					} else if err := renderWatch(e.stdout, time.Now(), msg); err != nil {
						return err
					}
					if msg.Done {
						return nil
					}
				}
			}
		},
	}, {
		path: "replacements request", args: "TARGET", summary: "request replacement of a read-only target by id (idempotent)",
		min: 1, max: 1,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				c, err := e.replacement()
				if err != nil {
					return err
				}
				resp, err := c.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: args[0]})
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(resp)
				}
				verb := "existing request"
				if resp.Created {
					verb = "created request"
				}
				_, err = fmt.Fprintf(e.stdout, "%s %s for target %s (%s)\n", verb, resp.Replacement.ReplacementId,
					resp.Replacement.OldTargetId, replacementState(resp.Replacement))
				return err
			}
		},
	}, {
		path: "replacements cancel", args: "ID", summary: "cancel a request that has not started (its target stays where it is until requested again)",
		min: 1, max: 1,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			reason := fs.String("reason", "", "why (required; recorded as the request's end reason)")
			return func(ctx context.Context, e *env, args []string) error {
				if strings.TrimSpace(*reason) == "" {
					return usagef("--reason is required")
				}
				c, err := e.replacement()
				if err != nil {
					return err
				}
				resp, err := c.CancelReplacement(ctx, &orchestratorv1.CancelReplacementRequest{ReplacementId: args[0], Reason: *reason})
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(resp)
				}
				_, err = fmt.Fprintf(e.stdout, "request %s is %s: %s\n", resp.Replacement.ReplacementId, replacementState(resp.Replacement), resp.Replacement.EndReason)
				return err
			}
		},
	}, {
		path: "replacements pause", args: "ID|--rack", summary: "hold a request (or every request, --rack): no new saga starts and no lock is taken until resumed; sagas in flight finish",
		max: 1,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			reason := fs.String("reason", "", "why (required; shown with the pause)")
			rack := fs.Bool("rack", false, "hold every request of the rack (maintenance); the detectors open no new request meanwhile")
			return func(ctx context.Context, e *env, args []string) error {
				if (len(args) == 1) == *rack {
					return usagef("name one request, or give --rack")
				}
				if strings.TrimSpace(*reason) == "" {
					return usagef("--reason is required")
				}
				req := &orchestratorv1.PauseReplacementRequest{Rack: *rack, Reason: *reason}
				if len(args) == 1 {
					req.ReplacementId = args[0]
				}
				c, err := e.replacement()
				if err != nil {
					return err
				}
				resp, err := c.PauseReplacement(ctx, req)
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(resp)
				}
				if *rack {
					_, err = fmt.Fprintf(e.stdout, "the rack is %s; %d waiting steps withdrawn\n", pauseText(resp.RackPause), resp.StepsWithdrawn)
					return err
				}
				_, err = fmt.Fprintf(e.stdout, "request %s (%s) is %s; %d waiting steps withdrawn\n", resp.Replacement.ReplacementId,
					replacementState(resp.Replacement), pauseText(resp.Replacement.Pause), resp.StepsWithdrawn)
				return err
			}
		},
	}, {
		path: "replacements resume", args: "ID|--rack", summary: "lift a request's pause (or the rack's, --rack)",
		max: 1,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			rack := fs.Bool("rack", false, "lift the rack's pause")
			return func(ctx context.Context, e *env, args []string) error {
				if (len(args) == 1) == *rack {
					return usagef("name one request, or give --rack")
				}
				req := &orchestratorv1.ResumeReplacementRequest{Rack: *rack}
				if len(args) == 1 {
					req.ReplacementId = args[0]
				}
				c, err := e.replacement()
				if err != nil {
					return err
				}
				resp, err := c.ResumeReplacement(ctx, req)
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(resp)
				}
				if *rack {
					_, err = fmt.Fprintln(e.stdout, "the rack is resumed")
					return err
				}
				still := ""
				if resp.RackPaused {
					still = " (the rack is still paused: it waits for the rack's resume too)"
				}
				_, err = fmt.Fprintf(e.stdout, "request %s (%s) is resumed%s\n", resp.Replacement.ReplacementId, replacementState(resp.Replacement), still)
				return err
			}
		},
	}, {
		path: "steps list", summary: "steps of read-only replacements (one per referencing volume)",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			rep := fs.String("replacement", "", "only the steps of this request")
			volume := fs.String("volume-id", "", "only the steps that swap a target out of this volume (--volume is the volume-service address)")
			state := fs.String("state", "", "only this state: requested, running, complete, collecting, done (volume_deleted: the step's stash volume deleted)")
			return func(ctx context.Context, e *env, _ []string) error {
				req := &orchestratorv1.ListStepsRequest{PageSize: 1000, ReplacementId: *rep, VolumeId: *volume}
				if *state != "" {
					name := *state
					if name == "done" {
						name = "volume_deleted"
					}
					s, err := parseEnum[orchestratorv1.StepState]("--state", prefixStep, name, orchestratorv1.StepState_value)
					if err != nil {
						return err
					}
					req.State = s
				}
				c, err := e.replacement()
				if err != nil {
					return err
				}
				all := &orchestratorv1.ListStepsResponse{}
				if err := allPages(func(token string) (*orchestratorv1.ListStepsResponse, error) {
					req.PageToken = token
					return c.ListSteps(ctx, req)
				}, func(resp *orchestratorv1.ListStepsResponse) { all.Steps = append(all.Steps, resp.Steps...) }); err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(all)
				}
				return renderTable(e.stdout, stepHeader, stepRows(all.Steps))
			}
		},
	}, {
		path: "locks list", summary: "volume repair locks and what holds them",
		max: 0,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, _ []string) error {
				c, err := e.replacement()
				if err != nil {
					return err
				}
				req := &orchestratorv1.ListLocksRequest{PageSize: 1000}
				all := &orchestratorv1.ListLocksResponse{}
				if err := allPages(func(token string) (*orchestratorv1.ListLocksResponse, error) {
					req.PageToken = token
					return c.ListLocks(ctx, req)
				}, func(resp *orchestratorv1.ListLocksResponse) { all.Locks = append(all.Locks, resp.Locks...) }); err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(all)
				}
				var rows [][]string
				for _, l := range all.Locks {
					rows = append(rows, []string{l.VolumeId, l.HolderKind, l.RepairId, ts(l.TimeAcquired)})
				}
				return renderTable(e.stdout, []string{"VOLUME", "HOLDER", "REPAIR_ID", "ACQUIRED"}, rows)
			}
		},
	}}
}

// stepState is how a table shows a step's state. STEP_STATE_VOLUME_DELETED
// is every step's successful end: the volume it names is the step's stash
// volume, not the user's, so a table says so rather than print a name a
// reader takes for data loss. -o json keeps the enum as the API has it, and
// --state still takes volume_deleted (or done).
func stepState(s orchestratorv1.StepState) string {
	if s == orchestratorv1.StepState_STEP_STATE_VOLUME_DELETED {
		return stepDoneText
	}
	return enum(s, prefixStep)
}

const stepDoneText = "done (stash deleted)"

var stepHeader = []string{"STEP", "REPLACEMENT", "VOLUME", "STATE", "SAGA", "WAITS_ON", "ATTEMPTS", "MODIFIED"}

func stepRows(steps []*orchestratorv1.Step) [][]string {
	var rows [][]string
	for _, s := range steps {
		rows = append(rows, []string{s.StepId, s.ReplacementId, s.VolumeId, stepState(s.State), s.OperatingSagaId, waitKind(s.Wait), fmt.Sprint(s.Attempts), ts(s.TimeModified)})
	}
	return rows
}

func renderReplacement(w io.Writer, resp *orchestratorv1.GetReplacementResponse) error {
	r := resp.Replacement
	fields := [][2]string{
		{"id", r.ReplacementId},
		{"kind", enum(r.Kind, prefixKind)},
		{"state", replacementState(r)},
		{"old target", r.OldTargetId},
		{"old region", r.OldRegionId},
	}
	if r.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		fields = append(fields, [2]string{"old dataset", r.OldDatasetId}, [2]string{"snapshot", r.OldSnapshotId})
	}
	fields = append(fields,
		[2]string{"lock volume", r.LockVolumeId},
		[2]string{"operating saga", r.OperatingSagaId},
		[2]string{"new region", r.NewRegionId},
	)
	if r.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		fields = append(fields, [2]string{"new region volume", r.NewRegionVolumeId})
	}
	fields = append(fields,
		[2]string{"old volume", r.OldSnapshotVolumeId},
		[2]string{"requested", ts(r.RequestTime)},
		[2]string{"modified", ts(r.TimeModified)},
		[2]string{"traceparent", r.Traceparent},
		[2]string{"waits on", waitText(r.Wait)},
		[2]string{"paused", pauseText(r.Pause)},
		[2]string{"progress", progressText(r)},
		[2]string{"estimate", estimateText(r.Estimate)},
		[2]string{"priority", fmt.Sprint(r.Priority)},
		[2]string{"live copies", liveCopies(r.LiveCopies)},
		[2]string{"attempts", fmt.Sprint(r.Attempts)},
		[2]string{"last error", r.LastError},
		[2]string{"end reason", r.EndReason},
	)
	for i := range fields {
		if fields[i][1] == "" {
			fields[i][1] = "-"
		}
	}
	if err := renderFields(w, fields); err != nil {
		return err
	}
	if r.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		fmt.Fprintf(w, "\nDrive steps (%d):\n", len(resp.DriveSteps))
		if len(resp.DriveSteps) == 0 {
			return nil
		}
		var rows [][]string
		for _, d := range resp.DriveSteps {
			rows = append(rows, []string{d.DriveStepId, d.StepType, d.AttachmentId, fmt.Sprint(d.Incarnation), d.Endpoint, ts(d.Time)})
		}
		return renderTable(w, []string{"DRIVE_STEP", "TYPE", "ATTACHMENT", "INCARNATION", "ENDPOINT", "TIME"}, rows)
	}
	fmt.Fprintf(w, "\nSteps (%d):\n", len(resp.Steps))
	if len(resp.Steps) == 0 {
		return nil
	}
	var rows [][]string
	for _, s := range resp.Steps {
		rows = append(rows, []string{s.StepId, s.VolumeId, stepState(s.State), s.OperatingSagaId, waitText(s.Wait), fmt.Sprint(s.Attempts), ts(s.TimeModified)})
	}
	return renderTable(w, []string{"STEP", "VOLUME", "STATE", "SAGA", "WAITS_ON", "ATTEMPTS", "MODIFIED"}, rows)
}

// renderWatch prints one progress update: a line of step counts, then a
// line per watched request.
func renderWatch(w io.Writer, now time.Time, msg *orchestratorv1.WatchReplacementResponse) error {
	s := msg.Steps
	// "done": steps in STEP_STATE_VOLUME_DELETED (their stash deleted, not
	// their volume).
	fmt.Fprintf(w, "%s  steps: requested=%d running=%d complete=%d collecting=%d done=%d\n",
		now.UTC().Format("15:04:05"), s.GetRequested(), s.GetRunning(), s.GetComplete(), s.GetCollecting(), s.GetVolumeDeleted())
	if msg.RackPause != nil {
		fmt.Fprintf(w, "  THE RACK IS PAUSED: %s\n", pauseText(msg.RackPause))
	}
	t := newTable(w)
	for _, r := range msg.Replacements {
		eta := "eta unknown"
		if e := r.Estimate; e.GetKnown() {
			eta = "eta " + e.Remaining.AsDuration().Round(time.Second).String()
		}
		t.row("  "+r.ReplacementId, enum(r.Kind, prefixKind), replacementState(r), r.OldTargetId, eta, waitText(r.Wait))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if msg.Done {
		if len(msg.Replacements) == 0 {
			_, err := fmt.Fprintln(w, "nothing in flight")
			return err
		}
		_, err := fmt.Fprintln(w, "done: every watched request is terminal")
		return err
	}
	return nil
}

// liveCopies prints a request's live-copies figure; -1 is "not counted
// yet" (its task has not planned it).
func liveCopies(n int32) string {
	if n < 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

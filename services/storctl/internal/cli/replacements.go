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
		rows = append(rows, []string{
			r.ReplacementId, enum(r.Kind, prefixKind), replacementState(r), r.OldTargetId, r.LockVolumeId,
			r.OperatingSagaId, waitKind(r.Wait), fmt.Sprint(r.Attempts), ts(r.RequestTime),
		})
	}
	return rows
}

var replacementHeader = []string{"ID", "KIND", "STATE", "TARGET", "LOCK_VOLUME", "SAGA", "WAITS_ON", "ATTEMPTS", "REQUESTED"}

func replacementCommands() []command {
	return []command{{
		path: "replacements list", summary: "replacement requests (read-only and rw), oldest first",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			kind := fs.String("kind", "", "only this kind: region_snapshot, read_only_region, read_write_region")
			state := fs.String("state", "", "only this state (read-only states, or rw states with --kind read_write_region)")
			return func(ctx context.Context, e *env, _ []string) error {
				req := &orchestratorv1.ListReplacementsRequest{PageSize: 1000}
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
				}); err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(all)
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
		path: "steps list", summary: "steps of read-only replacements (one per referencing volume)",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			rep := fs.String("replacement", "", "only the steps of this request")
			state := fs.String("state", "", "only this state: requested, running, complete, collecting, volume_deleted")
			return func(ctx context.Context, e *env, _ []string) error {
				req := &orchestratorv1.ListStepsRequest{PageSize: 1000, ReplacementId: *rep}
				if *state != "" {
					s, err := parseEnum[orchestratorv1.StepState]("--state", prefixStep, *state, orchestratorv1.StepState_value)
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

var stepHeader = []string{"STEP", "REPLACEMENT", "VOLUME", "STATE", "SAGA", "WAITS_ON", "ATTEMPTS", "MODIFIED"}

func stepRows(steps []*orchestratorv1.Step) [][]string {
	var rows [][]string
	for _, s := range steps {
		rows = append(rows, []string{s.StepId, s.ReplacementId, s.VolumeId, enum(s.State, prefixStep), s.OperatingSagaId, waitKind(s.Wait), fmt.Sprint(s.Attempts), ts(s.TimeModified)})
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
		rows = append(rows, []string{s.StepId, s.VolumeId, enum(s.State, prefixStep), s.OperatingSagaId, waitText(s.Wait), fmt.Sprint(s.Attempts), ts(s.TimeModified)})
	}
	return renderTable(w, []string{"STEP", "VOLUME", "STATE", "SAGA", "WAITS_ON", "ATTEMPTS", "MODIFIED"}, rows)
}

// renderWatch prints one progress update: a line of step counts, then a
// line per watched request.
func renderWatch(w io.Writer, now time.Time, msg *orchestratorv1.WatchReplacementResponse) error {
	s := msg.Steps
	fmt.Fprintf(w, "%s  steps: requested=%d running=%d complete=%d collecting=%d volume_deleted=%d\n",
		now.UTC().Format("15:04:05"), s.GetRequested(), s.GetRunning(), s.GetComplete(), s.GetCollecting(), s.GetVolumeDeleted())
	t := newTable(w)
	for _, r := range msg.Replacements {
		t.row("  "+r.ReplacementId, enum(r.Kind, prefixKind), replacementState(r), r.OldTargetId, waitText(r.Wait))
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

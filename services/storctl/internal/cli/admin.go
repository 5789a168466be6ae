package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

const prefixSaga = "SAGA_STATE_"

func (e *env) admin() (orchestratorv1.AdminServiceClient, error) {
	c, err := e.conn(svcOrchestrator)
	if err != nil {
		return nil, err
	}
	return orchestratorv1.NewAdminServiceClient(c), nil
}

func sagaCommands() []command {
	return []command{{
		path: "sagas list", summary: "sagas, oldest first",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			state := fs.String("state", "", "only this state: running, unwinding, done, abandoned")
			name := fs.String("name", "", "only sagas of this name (e.g. ro-replacement-step)")
			subject := fs.String("subject", "", "only sagas working on this id: a replacement request, a step or a volume")
			rep := fs.String("replacement", "", "every saga of this replacement request, its steps' included")
			return func(ctx context.Context, e *env, _ []string) error {
				req := &orchestratorv1.ListSagasRequest{PageSize: 1000, Name: *name, SubjectId: *subject, ReplacementId: *rep}
				if *state != "" {
					s, err := parseEnum[orchestratorv1.SagaState]("--state", prefixSaga, *state, orchestratorv1.SagaState_value)
					if err != nil {
						return err
					}
					req.State = s
				}
				c, err := e.admin()
				if err != nil {
					return err
				}
				all := &orchestratorv1.ListSagasResponse{}
				if err := allPages(func(token string) (*orchestratorv1.ListSagasResponse, error) {
					req.PageToken = token
					return c.ListSagas(ctx, req)
				}, func(resp *orchestratorv1.ListSagasResponse) { all.Sagas = append(all.Sagas, resp.Sagas...) }); err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(all)
				}
				var rows [][]string
				for _, s := range all.Sagas {
					rows = append(rows, []string{s.SagaId, s.Name, enum(s.State, prefixSaga), s.Outcome, s.SubjectId, s.CurrentSec, ts(s.TimeCreated)})
				}
				return renderTable(e.stdout, []string{"ID", "NAME", "STATE", "OUTCOME", "SUBJECT", "SEC", "CREATED"}, rows)
			}
		},
	}, {
		path: "sagas show", args: "ID", summary: "one saga: its row, parameters, DAG nodes and every log event",
		min: 1, max: 1,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				c, err := e.admin()
				if err != nil {
					return err
				}
				resp, err := c.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: args[0]})
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(resp)
				}
				return renderSaga(e.stdout, resp)
			}
		},
	}, {
		path: "sagas abandon", args: "ID", summary: "unwind a running or stuck saga (a stuck one past its failed undo, which you dealt with); --keep-effects only marks it abandoned (needs --comment)",
		// Bounded by --wait plus --timeout rather than --timeout alone: the
		// unwind of a hung saga takes at least the orchestrator's grace.
		min: 1, max: 1, unbounded: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			comment := fs.String("comment", "", "why (required; recorded with the saga; for a stuck saga it says you dealt with what the failed undo left)")
			keep := fs.Bool("keep-effects", false, "do not unwind: mark the saga abandoned and leave its effects for you to repair (last resort)")
			force := fs.Bool("force", false, "with --keep-effects: abandon even though the owning orchestrator's lease is live")
			wait := fs.Duration("wait", 30*time.Second, "how long to wait for the unwind to finish (it goes on regardless)")
			release := fs.Bool("release-locks", false, "accepted for compatibility; changes nothing")
			return func(ctx context.Context, e *env, args []string) error {
				if strings.TrimSpace(*comment) == "" {
					return usagef("sagas abandon: --comment is required: abandoning is destructive and needs a reason")
				}
				if e.opts.timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, *wait+e.opts.timeout)
					defer cancel()
				}
				c, err := e.admin()
				if err != nil {
					return err
				}
				resp, err := c.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: args[0], Comment: *comment,
					Force: *force, ReleaseLocks: *release, KeepEffects: *keep, Wait: durationpb.New(*wait)})
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(resp)
				}
				s := resp.Saga
				switch {
				case !resp.Unwound && s.GetOutcome() == "succeeded":
					fmt.Fprintf(e.stdout, "saga %s (%s) succeeded: every action had finished before the unwind could start, so nothing was undone\n", s.GetSagaId(), s.GetName())
				case !resp.Unwound:
					fmt.Fprintf(e.stdout, "saga %s (%s) is %s: not unwound, its effects are yours to repair\n", s.GetSagaId(), s.GetName(), enum(s.GetState(), prefixSaga))
				case !resp.Finished:
					fmt.Fprintf(e.stdout, "saga %s (%s) is unwinding (not finished after the wait; it goes on: storctl sagas show %s)\n", s.GetSagaId(), s.GetName(), s.GetSagaId())
				default:
					fmt.Fprintf(e.stdout, "saga %s (%s) unwound: %s, outcome %s\n", s.GetSagaId(), s.GetName(), enum(s.GetState(), prefixSaga), s.GetOutcome())
				}
				for _, n := range resp.SkippedUndos {
					fmt.Fprintf(e.stdout, "skipped the failed undo of %s (you dealt with its effect)\n", n)
				}
				for _, r := range resp.Reconciled {
					to := r.ToState
					if to == "" {
						to = "gone"
					}
					fmt.Fprintf(e.stdout, "%s %s: %s → %s\n", r.What, r.Id, r.FromState, to)
				}
				for _, v := range resp.ReleasedLockVolumeIds {
					fmt.Fprintf(e.stdout, "released the repair lock of volume %s\n", v)
				}
				return nil
			}
		},
	}}
}

func renderSaga(w io.Writer, resp *orchestratorv1.GetSagaResponse) error {
	s := resp.Saga
	if err := renderFields(w, [][2]string{
		{"id", s.SagaId}, {"name", s.Name}, {"state", enum(s.State, prefixSaga)}, {"outcome", orDash(s.Outcome)},
		{"subject", orDash(s.SubjectId)}, {"unwound by operator", orDash(s.UnwindComment)}, {"sec", orDash(s.CurrentSec)}, {"adopt generation", fmt.Sprint(s.AdoptGeneration)},
		{"created", ts(s.TimeCreated)}, {"params", orDash(compactJSON([]byte(resp.ParamsJson)))},
	}); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nNodes (%d):\n", len(resp.Nodes))
	var rows [][]string
	var notes []string
	for _, n := range resp.Nodes {
		undo := ""
		if n.HasUndo {
			undo = "undo"
		}
		runs := ""
		if n.Attempts > 1 {
			runs = fmt.Sprint(n.Attempts)
		}
		rows = append(rows, []string{fmt.Sprint(n.NodeIndex), fmt.Sprint(n.Stage), n.Name, n.Kind, n.Status, n.Subsaga, undo, runs})
		if note := nodeNote(n); note != "" {
			notes = append(notes, note)
		}
	}
	if err := renderTable(w, []string{"NODE", "STAGE", "NAME", "KIND", "STATUS", "SUBSAGA", "UNDO", "RUNS"}, rows); err != nil {
		return err
	}
	if len(notes) > 0 {
		// Why a node failed, why a stuck saga's undo was not retried, and
		// what a retrying one waits on: the first things an operator asks.
		fmt.Fprintf(w, "\nErrors and retries:\n")
		for _, note := range notes {
			fmt.Fprintf(w, "  %s\n", note)
		}
	}
	fmt.Fprintf(w, "\nEvents (%d):\n", len(resp.Events))
	rows = nil
	for _, ev := range resp.Events {
		rows = append(rows, []string{ts(ev.Time), fmt.Sprint(ev.NodeIndex), ev.NodeName, ev.EventType, ev.Creator})
	}
	return renderTable(w, []string{"TIME", "NODE", "NAME", "EVENT", "CREATOR"}, rows)
}

// nodeNote is one line about a node that failed or is retrying ("" for
// any other).
func nodeNote(n *orchestratorv1.SagaNode) string {
	runs := func() string {
		if n.Attempts > 1 {
			return fmt.Sprintf(" after %d runs", n.Attempts)
		}
		return ""
	}
	switch {
	case n.RetryError != "":
		next := ""
		if n.RetryTime != nil {
			next = ", next at " + ts(n.RetryTime)
		}
		return fmt.Sprintf("%s: retrying (run %d failed%s): %s", n.Name, n.Attempts, next, n.RetryError)
	case n.Status == "undo_failed":
		return fmt.Sprintf("%s: undo failed%s with a permanent error (%s), so the saga is stuck: %s", n.Name, runs(), orDash(n.ErrorReason), errorMessage(n.DataJson))
	case n.Status == "failed":
		return fmt.Sprintf("%s: failed%s (%s): %s", n.Name, runs(), orDash(n.ErrorReason), errorMessage(n.DataJson))
	}
	return ""
}

// errorMessage is the message of a node's persisted error.
func errorMessage(dataJSON string) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal([]byte(dataJSON), &e) != nil || e.Message == "" {
		return dataJSON
	}
	return e.Message
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func taskCommands() []command {
	return []command{{
		path: "tasks list", summary: "background tasks: period, activations, sagas in flight, last run",
		max: 0,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, _ []string) error {
				resp, err := e.listTasks(ctx)
				if err != nil {
					return err
				}
				if e.json() {
					return e.printJSON(resp)
				}
				var rows [][]string
				for _, t := range resp.Tasks {
					rows = append(rows, []string{t.Name, dur(t.Period), fmt.Sprint(t.Activations), fmt.Sprint(t.SagasInFlight), ts(t.LastFinished)})
				}
				return renderTable(e.stdout, []string{"NAME", "PERIOD", "ACTIVATIONS", "IN_FLIGHT", "LAST_FINISHED"}, rows)
			}
		},
	}, {
		path: "tasks show", args: "NAME", summary: "one background task with its last status",
		min: 1, max: 1,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				resp, err := e.listTasks(ctx)
				if err != nil {
					return err
				}
				for _, t := range resp.Tasks {
					if t.Name != args[0] {
						continue
					}
					if e.json() {
						return e.printJSON(t)
					}
					return renderFields(e.stdout, [][2]string{
						{"name", t.Name}, {"description", t.Description}, {"period", dur(t.Period)},
						{"activations", fmt.Sprint(t.Activations)}, {"sagas in flight", fmt.Sprint(t.SagasInFlight)},
						{"last started", orDash(ts(t.LastStarted))}, {"last finished", orDash(ts(t.LastFinished))},
						{"last status", orDash(compactJSON([]byte(t.LastStatusJson)))},
					})
				}
				return fmt.Errorf("no background task %q (see storctl tasks list)", args[0])
			}
		},
	}, {
		path: "tasks activate", args: "NAME", summary: "run a background task now",
		min: 1, max: 1,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				c, err := e.admin()
				if err != nil {
					return err
				}
				if _, err := c.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: args[0]}); err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				if e.json() {
					return e.printJSON(&orchestratorv1.ActivateBackgroundTaskResponse{})
				}
				_, err = fmt.Fprintf(e.stdout, "activated %s\n", args[0])
				return err
			}
		},
	}, {
		path: "validate", summary: "cross-service consistency check (exit 3 on violations)",
		max: 0,
		// It probes every target of the rack: over 10 s on a full one.
		timeout: 2 * time.Minute,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, _ []string) error {
				c, err := e.admin()
				if err != nil {
					return err
				}
				resp, err := c.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
				if err != nil {
					return e.wrap(svcOrchestrator, err)
				}
				return e.violations(resp, resp.Violations)
			}
		},
	}}
}

func (e *env) listTasks(ctx context.Context) (*orchestratorv1.ListBackgroundTasksResponse, error) {
	c, err := e.admin()
	if err != nil {
		return nil, err
	}
	req := &orchestratorv1.ListBackgroundTasksRequest{PageSize: 1000}
	all := &orchestratorv1.ListBackgroundTasksResponse{}
	err = allPages(func(token string) (*orchestratorv1.ListBackgroundTasksResponse, error) {
		req.PageToken = token
		return c.ListBackgroundTasks(ctx, req)
	}, func(resp *orchestratorv1.ListBackgroundTasksResponse) { all.Tasks = append(all.Tasks, resp.Tasks...) })
	return all, e.wrap(svcOrchestrator, err)
}

// violations prints a check's result and turns violations into exit 3.
func (e *env) violations(resp proto.Message, vs []*commonv1.Violation) error {
	if e.json() {
		if err := e.printJSON(resp); err != nil {
			return err
		}
	} else if len(vs) == 0 {
		fmt.Fprintln(e.stdout, "no violations")
	} else {
		var rows [][]string
		for _, v := range vs {
			rows = append(rows, []string{v.Code, v.Subject, v.Detail})
		}
		if err := renderTable(e.stdout, []string{"CODE", "SUBJECT", "DETAIL"}, rows); err != nil {
			return err
		}
	}
	if len(vs) > 0 {
		return violationsError{n: len(vs)}
	}
	return nil
}

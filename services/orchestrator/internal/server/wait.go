package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/internal/store"
)

// What a request or step waits on, for operators ("why is it not moving?").
// A record at rest waits on its task; the task may be holding off after a
// failed attempt (its backoff), and a record whose last attempt found no
// room waits on capacity. A record in an intermediate state waits on the
// saga that claimed it. A running read-only request waits on the volumes
// still in its lock queues, else on its steps, else on the old target's
// last references; a running rw request waits on the Upstairs' repair.
//
// The cheap form (lists) reads nothing but the record; the full form
// (GetReplacement, WatchReplacement) also reads the saga's name, the lock
// queues, the steps and the drive steps.

type waits struct {
	s    *Server
	full bool
	// holds are the operators' holds in force when the answer was made.
	holds store.Pauses
}

// newWaits reads the holds once for an answer's records.
func (s *Server) newWaits(ctx context.Context, full bool) (waits, error) {
	holds, err := s.store.LoadPauses(ctx)
	if err != nil {
		return waits{}, s.status(ctx, err)
	}
	return waits{s: s, full: full, holds: holds}, nil
}

// paused is the wait of a held record at rest: nothing starts until an
// operator resumes it.
func paused(p *store.Pause, what string) *orchestratorv1.Wait {
	whose, subject := "its request is paused", "request"
	if p.Rack() {
		whose, subject = "the rack is paused", "rack"
	} else {
		subject = p.RequestID.String()
	}
	return waitProto(orchestratorv1.WaitKind_WAIT_KIND_PAUSED, p.Time, subject,
		"%s by %s (%s): %s until it is resumed", whose, p.By, p.Reason, what)
}

// pauseProto is a hold as the API shows it.
func pauseProto(p *store.Pause) *orchestratorv1.Pause {
	if p == nil {
		return nil
	}
	return &orchestratorv1.Pause{PausedBy: p.By, PausedTime: timestamppb.New(p.Time), Reason: p.Reason, Rack: p.Rack()}
}

func waitProto(kind orchestratorv1.WaitKind, since time.Time, subject, format string, args ...any) *orchestratorv1.Wait {
	w := &orchestratorv1.Wait{Kind: kind, Detail: fmt.Sprintf(format, args...), Subject: subject}
	if !since.IsZero() {
		w.Since = timestamppb.New(since)
	}
	return w
}

// atRest is the wait of a record at rest with no saga: a rebuild budget
// when the leader's last pass held it back for one, else its task, after
// any backoff, or capacity when the last attempt found no room.
func (w waits) atRest(id uuid.UUID, task string, modified time.Time, a store.Attempts) *orchestratorv1.Wait {
	if why, ok := w.s.app.Admission().HeldBack(id); ok {
		return waitProto(orchestratorv1.WaitKind_WAIT_KIND_BUDGET, modified, "", "%s (%s admits it when a slot frees)", why, task)
	}
	if a.Attempts > 0 && a.LastErrorTime != nil {
		if capacityError(a.LastError) {
			return waitProto(orchestratorv1.WaitKind_WAIT_KIND_CAPACITY, *a.LastErrorTime, "",
				"room for a new region: %s (attempt %d)", a.LastError, a.Attempts)
		}
		retryAt := a.LastErrorTime.Add(w.s.app.Retry().After(a.Attempts))
		if time.Until(retryAt) > 0 {
			return waitProto(orchestratorv1.WaitKind_WAIT_KIND_TASK, *a.LastErrorTime, "",
				"%s retries at %s, after %d failed attempts", task, retryAt.UTC().Format(time.RFC3339Nano), a.Attempts)
		}
	}
	return waitProto(orchestratorv1.WaitKind_WAIT_KIND_TASK, modified, "", "%s to start its next saga", task)
}

func capacityError(msg string) bool {
	return strings.Contains(msg, "ResourceExhausted") || strings.Contains(msg, "not enough storage") || strings.Contains(msg, "not enough space")
}

func (w waits) saga(ctx context.Context, id uuid.UUID, since time.Time) *orchestratorv1.Wait {
	name := "saga"
	if w.full {
		if v, err := w.s.viewer.Get(ctx, id); err == nil {
			name = v.Name
			if v.Stuck {
				return waitProto(orchestratorv1.WaitKind_WAIT_KIND_SAGA, since, id.String(),
					"%s %s is stuck (an undo failed for good): an operator must look, then abandon it", name, id)
			}
		}
	}
	return waitProto(orchestratorv1.WaitKind_WAIT_KIND_SAGA, since, id.String(), "%s %s is working on it", name, id)
}

func (w waits) readOnly(ctx context.Context, r store.ROReplacement) *orchestratorv1.Wait {
	switch {
	case r.State.Terminal():
		return waitProto(orchestratorv1.WaitKind_WAIT_KIND_NONE, r.TimeModified, "", "ended %s", r.State)
	case r.OperatingSagaID != nil:
		return w.saga(ctx, *r.OperatingSagaID, r.TimeModified)
	case w.holds.Of(r.ID) != nil:
		return paused(w.holds.Of(r.ID), "no saga starts and no step is made")
	case r.State == store.RORequested:
		return w.atRest(r.ID, "the start task", r.TimeModified, r.Attempts)
	case r.State == store.ROReplacementDone:
		return w.atRest(r.ID, "the garbage-collect task", r.TimeModified, r.Attempts)
	}
	// Running.
	if !w.full {
		return waitProto(orchestratorv1.WaitKind_WAIT_KIND_STEPS, r.TimeModified, "", "its steps, then the old target's last references")
	}
	if lw, err := w.s.store.LockWaitsOf(ctx, r.ID); err == nil && len(lw) > 0 {
		return lockWait(lw)
	}
	if counts, err := w.s.store.StepCounts(ctx, &r.ID); err == nil {
		var open int64
		for state, n := range counts {
			if state != store.StepVolumeDeleted {
				open += n
			}
		}
		if open > 0 {
			return waitProto(orchestratorv1.WaitKind_WAIT_KIND_STEPS, r.TimeModified, "",
				"%d steps in progress (%d requested, %d running, %d complete, %d collecting)", open,
				counts[store.StepRequested], counts[store.StepRunning], counts[store.StepComplete], counts[store.StepCollecting])
		}
	}
	return waitProto(orchestratorv1.WaitKind_WAIT_KIND_REFERENCES, r.TimeModified, r.OldTargetID.String(),
		"old target %s to lose its last references (stashes being deleted), then the finish task", r.OldTargetID)
}

// lockWait describes a request's places in lock queues, oldest first.
func lockWait(lw []store.LockWait) *orchestratorv1.Wait {
	first := lw[0]
	holder, subject := "free, its turn is next", ""
	if first.Holder != nil {
		holder = fmt.Sprintf("held by %s %s", *first.HolderKind, *first.Holder)
		subject = first.Holder.String()
	}
	return waitProto(orchestratorv1.WaitKind_WAIT_KIND_LOCK, first.Since, subject,
		"%d volumes wait for their repair lock; the longest, volume %s (%d tries): %s", len(lw), first.VolumeID, first.Attempts, holder)
}

func (w waits) regionRequest(ctx context.Context, r store.RWReplacement) *orchestratorv1.Wait {
	switch {
	case r.State.Terminal():
		return waitProto(orchestratorv1.WaitKind_WAIT_KIND_NONE, r.TimeModified, "", "ended %s", r.State)
	case r.OperatingSagaID != nil:
		return w.saga(ctx, *r.OperatingSagaID, r.TimeModified)
	case w.holds.Of(r.ID) != nil:
		return paused(w.holds.Of(r.ID), "no saga starts (an Upstairs may still finish a repair it began)")
	case r.State == store.RWRequested:
		return w.atRest(r.ID, "the rw detector", r.TimeModified, r.Attempts)
	case r.State == store.RWReplacementDone:
		return w.atRest(r.ID, "the rw finish task", r.TimeModified, r.Attempts)
	}
	// Running: the Upstairs' repair of the new region.
	since := r.TimeModified
	detail := fmt.Sprintf("an Upstairs to repair new region %s", idStr(r.NewRegionID))
	if w.full {
		if steps, err := w.s.store.DriveSteps(ctx, r.ID); err == nil && len(steps) > 0 {
			last := steps[len(steps)-1]
			since = last.Time
			detail = fmt.Sprintf("%s (%d drive attempts; the last a %s step at %s)", detail, len(steps), last.StepType, last.Endpoint)
			if last.AttachmentID != nil {
				return waitProto(orchestratorv1.WaitKind_WAIT_KIND_UPSTAIRS, since, last.AttachmentID.String(), "%s", detail)
			}
		}
	}
	return waitProto(orchestratorv1.WaitKind_WAIT_KIND_UPSTAIRS, since, "", "%s", detail)
}

func (w waits) step(ctx context.Context, s store.Step) *orchestratorv1.Wait {
	switch s.State {
	case store.StepVolumeDeleted:
		return waitProto(orchestratorv1.WaitKind_WAIT_KIND_NONE, s.TimeModified, "", "ended")
	case store.StepRunning, store.StepCollecting:
		if s.OperatingSagaID != nil {
			return w.saga(ctx, *s.OperatingSagaID, s.TimeModified)
		}
	}
	if p := w.holds.Of(s.RequestID); p != nil {
		return paused(p, "no saga starts for the step")
	}
	if s.State == store.StepComplete {
		return w.atRest(s.ID, "the step task (to delete its stash)", s.TimeModified, s.Attempts)
	}
	return w.atRest(s.ID, "the step task", s.TimeModified, s.Attempts)
}

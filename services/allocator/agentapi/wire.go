package agentapi

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "storagecp.dev/gen/go/storage/agent/v1"
	"storagecp.dev/platform/apierr"
)

// How agent errors cross storage.agent.v1: the status code of the error's
// kind, and a google.rpc.ErrorInfo in ErrorDomain whose reason names the
// sentinel. The agent's server answers with Status, the allocator's client
// turns the answer back into the sentinel with FromStatus, so that the
// allocator tells the failures apart with errors.Is whether the agent is
// in its process or behind a socket.

// ErrorDomain is the ErrorInfo domain of agent errors.
const ErrorDomain = "agent.storagecp.dev"

// reasons pairs each sentinel with its wire reason.
var reasons = []struct {
	reason agentv1.AgentReason
	err    error
}{
	{agentv1.AgentReason_AGENT_REASON_GONE, ErrGone},
	{agentv1.AgentReason_AGENT_REASON_DESTROYED, ErrDestroyed},
	{agentv1.AgentReason_AGENT_REASON_HAS_SNAPSHOTS, ErrHasSnapshots},
	{agentv1.AgentReason_AGENT_REASON_RUNNING, ErrRunning},
	{agentv1.AgentReason_AGENT_REASON_NO_REGION, ErrNoRegion},
	{agentv1.AgentReason_AGENT_REASON_NO_SNAPSHOT, ErrNoSnapshot},
	{agentv1.AgentReason_AGENT_REASON_CLONE_SOURCE, ErrCloneSource},
	{agentv1.AgentReason_AGENT_REASON_NO_FREE_PORT, ErrNoFreePort},
	{agentv1.AgentReason_AGENT_REASON_UNKNOWN_DATASET, ErrUnknownDataset},
}

// reasonName is the ErrorInfo reason of r: its name without the prefix.
func reasonName(r agentv1.AgentReason) string {
	const prefix = "AGENT_REASON_"
	return r.String()[len(prefix):]
}

// Status is the status an agent answers err with: for an agent error, its
// kind's code, its message and the ErrorInfo naming it; anything else by
// apierr.Status (which logs what it hides on logger).
func Status(ctx context.Context, logger *slog.Logger, err error) error {
	for _, r := range reasons {
		if !errors.Is(err, r.err) {
			continue
		}
		st := status.New(apierr.KindOf(r.err).Code(), err.Error())
		withInfo, derr := st.WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: reasonName(r.reason)})
		if derr != nil {
			return st.Err()
		}
		return withInfo.Err()
	}
	return apierr.Status(ctx, logger, err)
}

// FromStatus turns the error of an agent call back into what it stands
// for: the sentinel its ErrorInfo names (wrapped, with the agent's
// message); ErrUnavailable for UNAVAILABLE without a reason (the agent, or
// the way to it, is down); the context's error for a deadline or a
// cancellation. Other statuses (a stale fence, say) are returned as they
// are, for the allocator to pass on.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != ErrorDomain {
			continue
		}
		for _, r := range reasons {
			if reasonName(r.reason) == info.GetReason() {
				return &wireError{msg: st.Message(), err: r.err}
			}
		}
	}
	switch st.Code() {
	case codes.Unavailable:
		return &wireError{msg: "agent: " + st.Message(), err: ErrUnavailable}
	case codes.DeadlineExceeded:
		return &wireError{msg: "agent: " + st.Message(), err: context.DeadlineExceeded}
	case codes.Canceled:
		return &wireError{msg: "agent: " + st.Message(), err: context.Canceled}
	}
	return err
}

// wireError is an agent error that came over the wire: the agent's
// message, and the error it stands for.
type wireError struct {
	msg string
	err error
}

func (e *wireError) Error() string { return e.msg }
func (e *wireError) Unwrap() error { return e.err }

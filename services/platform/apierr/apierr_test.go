package apierr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// typed is an error type with fields that carries its kind by Unwrap, as
// the allocator's guard and fault errors do.
type typed struct{ permanent bool }

func (e *typed) Error() string { return "typed failure" }
func (e *typed) Unwrap() error {
	if e.permanent {
		return Precondition
	}
	return Unavailable
}

// secret is what an unknown error carries that the caller must not see.
const secret = "password=hunter2"

type statusCase struct {
	name string
	err  error
	code codes.Code
	msg  string
	// logged: the case writes "internal error" and the detail to the log.
	logged bool
}

func statusCases() []statusCase {
	sentinel := New(NotFound, "not found")
	cases := []statusCase{
		{name: "nil", err: nil, code: codes.OK, msg: ""},
		{name: "status passes through", err: status.Error(codes.PermissionDenied, "stale epoch"), code: codes.PermissionDenied, msg: "stale epoch"},
		{name: "wrapped status passes through", err: fmt.Errorf("list disks: %w", status.Error(codes.Unavailable, "down")), code: codes.Unavailable, msg: "list disks: rpc error: code = Unavailable desc = down"},
		{name: "wrapped sentinel keeps its context", err: fmt.Errorf("region r1: %w", sentinel), code: codes.NotFound, msg: "region r1: not found"},
		{name: "formatted", err: Errorf(Precondition, "volume %s is live", "v1"), code: codes.FailedPrecondition, msg: "volume v1 is live"},
		{name: "type carrying a kind", err: &typed{permanent: true}, code: codes.FailedPrecondition, msg: "typed failure"},
		{name: "type carrying another kind", err: &typed{}, code: codes.Unavailable, msg: "typed failure"},
		{name: "retryable", err: fmt.Errorf("allocate: %w", &pgconn.PgError{Code: "40001", Message: secret}), code: codes.Unavailable, msg: Contention},
		{name: "deadlock", err: &pgconn.PgError{Code: "40P01"}, code: codes.Unavailable, msg: Contention},
		{name: "deadline", err: fmt.Errorf("query: %w", context.DeadlineExceeded), code: codes.DeadlineExceeded, msg: "query: context deadline exceeded"},
		{name: "canceled", err: context.Canceled, code: codes.Canceled, msg: "context canceled"},
		{name: "unknown", err: errors.New("dial " + secret), code: codes.Internal, msg: "internal error", logged: true},
		{name: "other SQL error", err: &pgconn.PgError{Code: "23505", Message: secret}, code: codes.Internal, msg: "internal error", logged: true},
		{name: "internal kind", err: Errorf(Internal, "volume v1: stored VCR undecodable: %s", secret), code: codes.Internal, msg: "internal error", logged: true},
		{name: "not a kind", err: fmt.Errorf("odd: %w %s", Kind(200), secret), code: codes.Internal, msg: "internal error", logged: true},
	}
	// Every kind but Internal, as a sentinel: its code, its own text.
	for k := Invalid; k < Internal; k++ {
		cases = append(cases, statusCase{name: "kind " + k.Error(), err: New(k, "the "+k.Error()+" text"), code: k.Code(), msg: "the " + k.Error() + " text"})
	}
	return cases
}

// problem says how err's status differs from the case ("" if it does not)
// and how the log does.
func problem(c statusCase, got error, log string) string {
	st, _ := status.FromError(got)
	var p []string
	if c.err == nil && got != nil {
		p = append(p, fmt.Sprintf("got %v for nil", got))
	}
	if st.Code() != c.code {
		p = append(p, fmt.Sprintf("code %v, want %v", st.Code(), c.code))
	}
	if st.Message() != c.msg {
		p = append(p, fmt.Sprintf("message %q, want %q", st.Message(), c.msg))
	}
	if strings.Contains(st.Message(), secret) {
		p = append(p, "message leaks the detail")
	}
	if c.logged {
		if !strings.Contains(log, "internal error") || !strings.Contains(log, "method=Get") || !strings.Contains(log, secret) {
			p = append(p, fmt.Sprintf("log %q lacks the detail", log))
		}
	} else if log != "" {
		p = append(p, fmt.Sprintf("logged %q", log))
	}
	return strings.Join(p, "; ")
}

func run(c statusCase) (error, string) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	got := Status(context.Background(), logger, c.err, "method", "Get")
	return got, buf.String()
}

func TestStatus(t *testing.T) {
	for _, c := range statusCases() {
		t.Run(c.name, func(t *testing.T) {
			got, log := run(c)
			if p := problem(c, got, log); p != "" {
				t.Error(p)
			}
		})
	}
}

// TestChecksCanFail: each case, with its expected code or message changed,
// or its log expectation turned around, is reported, so TestStatus would
// catch a rule that changed.
func TestChecksCanFail(t *testing.T) {
	for _, c := range statusCases() {
		got, log := run(c)
		wrongCode := c
		wrongCode.code = codes.Unknown
		wrongMsg := c
		wrongMsg.msg += "!"
		wrongLog := c
		wrongLog.logged = !c.logged
		for _, w := range []statusCase{wrongCode, wrongMsg, wrongLog} {
			if problem(w, got, log) == "" {
				t.Errorf("%s: a wrong expectation (%v %q logged=%v) passes", c.name, w.code, w.msg, w.logged)
			}
		}
	}
	// And a status that leaks the detail is caught.
	leak := statusCase{name: "leak", err: errors.New(secret), code: codes.Internal, msg: secret}
	if p := problem(leak, status.Error(codes.Internal, secret), ""); !strings.Contains(p, "leaks") {
		t.Errorf("a leaked detail passes: %q", p)
	}
}

func TestKindTable(t *testing.T) {
	want := map[Kind]codes.Code{
		Invalid:       codes.InvalidArgument,
		NotFound:      codes.NotFound,
		AlreadyExists: codes.AlreadyExists,
		Precondition:  codes.FailedPrecondition,
		Aborted:       codes.Aborted,
		Exhausted:     codes.ResourceExhausted,
		Unavailable:   codes.Unavailable,
		Internal:      codes.Internal,
	}
	if len(want) != len(kinds)-1 {
		t.Fatalf("%d kinds tested, %d declared", len(want), len(kinds)-1)
	}
	for k, c := range want {
		if k.Code() != c {
			t.Errorf("%v: code %v, want %v", k, k.Code(), c)
		}
	}
	for _, k := range []Kind{0, Internal + 1, 255} {
		if k.Code() != codes.Internal || !strings.HasPrefix(k.Error(), "apierr.Kind(") {
			t.Errorf("Kind(%d): %v %q", uint8(k), k.Code(), k.Error())
		}
	}
}

func TestSentinels(t *testing.T) {
	a, b := New(NotFound, "not found"), New(NotFound, "not found")
	wrapped := fmt.Errorf("volume v1: %w", a)
	switch {
	case !errors.Is(wrapped, a):
		t.Error("a wrapped sentinel is not itself")
	case errors.Is(wrapped, b):
		t.Error("two sentinels of one kind and text are the same error")
	case !errors.Is(wrapped, NotFound) || errors.Is(wrapped, Precondition):
		t.Error("errors.Is does not see the kind")
	case KindOf(wrapped) != NotFound, KindOf(&typed{}) != Unavailable, KindOf(errors.New("x")) != 0, KindOf(nil) != 0:
		t.Error("KindOf")
	}
}

// A database that cannot be reached is Unavailable (the caller retries and
// reaches the new primary), not Internal.
func TestUnreachableDatabaseIsUnavailable(t *testing.T) {
	err := Status(context.Background(), nil, fmt.Errorf("get volume: %w", &pgconn.PgError{Code: "57P01"}))
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != Unreachable {
		t.Fatalf("%v, want Unavailable %q", err, Unreachable)
	}
}

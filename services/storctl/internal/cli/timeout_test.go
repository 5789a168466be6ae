package cli

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// deadlineAdmin answers ValidateSystem with nothing wrong and records the
// deadline each call came with.
type deadlineAdmin struct {
	orchestratorv1.UnimplementedAdminServiceServer
	left chan time.Duration
}

func (a *deadlineAdmin) ValidateSystem(ctx context.Context, _ *orchestratorv1.ValidateSystemRequest) (*orchestratorv1.ValidateSystemResponse, error) {
	d, _ := ctx.Deadline()
	a.left <- time.Until(d)
	return &orchestratorv1.ValidateSystemResponse{}, nil
}

// validate reads the whole rack, so its deadline is two minutes unless
// --timeout is given; other commands keep the 10 s default.
func TestValidateHasItsOwnDeadline(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := &deadlineAdmin{left: make(chan time.Duration, 1)}
	srv := grpc.NewServer()
	orchestratorv1.RegisterAdminServiceServer(srv, admin)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	t.Chdir(t.TempDir())
	for _, c := range []struct {
		args     []string
		min, max time.Duration
	}{
		{[]string{"validate"}, 100 * time.Second, 2 * time.Minute},
		{[]string{"--timeout", "7s", "validate"}, 5 * time.Second, 7 * time.Second},
		{[]string{"validate", "--timeout=30s"}, 25 * time.Second, 30 * time.Second},
	} {
		args := append([]string{"--insecure", "--orchestrator", lis.Addr().String()}, c.args...)
		_, stderr, code := runCLI(t, noEnv, args...)
		if code != 0 {
			t.Fatalf("%q: exit %d, stderr %q", c.args, code, stderr)
		}
		if left := <-admin.left; left < c.min || left > c.max {
			t.Errorf("%q: the call came with %v left, want %v to %v", strings.Join(c.args, " "), left.Round(time.Second), c.min, c.max)
		}
	}
}

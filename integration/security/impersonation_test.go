package security

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"

	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// The policy lets every upstairs/* identity call the notifier's report
// RPCs; the notifier itself binds each upstairs_id to the identity of the
// Upstairs that accepted its activation. So sim-upstairs-1's certificate
// cannot report (start, finish, progress, downstairs stopped) for the
// Upstairs sim-upstairs-0 runs: PermissionDenied naming both identities,
// and nothing is recorded. sim-upstairs-0's certificate may. An upstairs_id
// no attachment has is accepted from any Upstairs: ids are random UUIDs
// handed out at activation, so an unknown one is no one else's.
func TestAnUpstairsCannotReportForAnother(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{SimUpstairs: 1})
	st := r.Stack
	ctx := context.Background()

	disk := r.CreateDisk(t)
	att := r.Construct(t, disk, 0)
	addr := r.Targets(t, disk, commonv1.TargetKind_TARGET_KIND_RW_REGION)[0].Address
	owner, other := spiffeID("upstairs/sim-upstairs-0"), spiffeID("upstairs/sim-upstairs-1")
	if att.UpstairsIdentity != owner {
		t.Fatalf("attachment records upstairs identity %q, want %q (the server that accepted the activation)", att.UpstairsIdentity, owner)
	}

	repairsOf := func(repairID string) int {
		t.Helper()
		resp, err := r.Notifier.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{TargetAddress: addr, PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, x := range resp.Notifications {
			if x.RepairId == repairID {
				n++
			}
		}
		return n
	}
	start := func(upstairsID, repairID string) *notifierv1.RepairStartRequest {
		return &notifierv1.RepairStartRequest{
			UpstairsId: upstairsID, SessionId: uuid.NewString(), RepairId: repairID,
			RepairType: notifierv1.RepairType_REPAIR_TYPE_LIVE, Time: timestamppb.Now(),
			Repairs: []*notifierv1.RepairedDownstairs{{TargetAddress: addr}},
		}
	}
	stopped := func(upstairsID string) *notifierv1.DownstairsStoppedRequest {
		return &notifierv1.DownstairsStoppedRequest{
			UpstairsId: upstairsID, DownstairsId: uuid.NewString(), Time: timestamppb.Now(),
			Reason: notifierv1.StoppedReason_STOPPED_REASON_CONNECTION_FAILED,
		}
	}
	progress := func(upstairsID, repairID string) *notifierv1.RepairProgressRequest {
		return &notifierv1.RepairProgressRequest{UpstairsId: upstairsID, RepairId: repairID, Time: timestamppb.Now(), CurrentItem: 1, TotalItems: 2}
	}

	// sim-upstairs-1 for sim-upstairs-0's Upstairs: refused, nothing recorded.
	impostor := notifierv1.NewUpstairsNotifierServiceClient(dialAs(t, st, "upstairs/sim-upstairs-1", st.Addr(stack.Notifier)))
	repairID := uuid.NewString()
	refused := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s by %s for %s's Upstairs: got %v, want PermissionDenied", what, other, owner, err)
		}
		msg := status.Convert(err).Message()
		if !strings.Contains(msg, other) || !strings.Contains(msg, owner) || !strings.Contains(msg, att.UpstairsId) {
			t.Errorf("%s refusal %q should name %s, %s and the upstairs id %s", what, msg, other, owner, att.UpstairsId)
		}
	}
	_, err := impostor.RepairStart(ctx, start(att.UpstairsId, repairID))
	refused("RepairStart", err)
	_, err = impostor.RepairFinish(ctx, &notifierv1.RepairFinishRequest{
		UpstairsId: att.UpstairsId, SessionId: uuid.NewString(), RepairId: repairID,
		RepairType: notifierv1.RepairType_REPAIR_TYPE_LIVE, Time: timestamppb.Now(),
		Repairs: []*notifierv1.RepairedDownstairs{{TargetAddress: addr}},
	})
	refused("RepairFinish", err)
	_, err = impostor.RepairProgress(ctx, progress(att.UpstairsId, repairID))
	refused("RepairProgress", err)
	_, err = impostor.DownstairsStopped(ctx, stopped(att.UpstairsId))
	refused("DownstairsStopped", err)
	if n := repairsOf(repairID); n != 0 {
		t.Fatalf("a refused report was recorded: %d rows of repair %s", n, repairID)
	}

	// sim-upstairs-0 for its own Upstairs: accepted and listed.
	owned := notifierv1.NewUpstairsNotifierServiceClient(dialAs(t, st, "upstairs/sim-upstairs-0", st.Addr(stack.Notifier)))
	if _, err := owned.RepairStart(ctx, start(att.UpstairsId, repairID)); err != nil {
		t.Fatalf("RepairStart by %s for its own Upstairs: %v", owner, err)
	}
	if _, err := owned.RepairProgress(ctx, progress(att.UpstairsId, repairID)); err != nil {
		t.Fatalf("RepairProgress by %s for its own Upstairs: %v", owner, err)
	}
	if _, err := owned.DownstairsStopped(ctx, stopped(att.UpstairsId)); err != nil {
		t.Fatalf("DownstairsStopped by %s for its own Upstairs: %v", owner, err)
	}
	if n := repairsOf(repairID); n != 1 {
		t.Fatalf("the owner's RepairStart: %d rows of repair %s listed, want 1", n, repairID)
	}

	// An upstairs_id no attachment has names no one's Upstairs: accepted.
	unknownRepair := uuid.NewString()
	if _, err := impostor.RepairStart(ctx, start(uuid.NewString(), unknownRepair)); err != nil {
		t.Fatalf("RepairStart for an unknown upstairs_id: %v", err)
	}
	if _, err := impostor.DownstairsStopped(ctx, stopped(uuid.NewString())); err != nil {
		t.Fatalf("DownstairsStopped for an unknown upstairs_id: %v", err)
	}
	if n := repairsOf(unknownRepair); n != 1 {
		t.Fatalf("RepairStart for an unknown upstairs_id: %d rows listed, want 1", n)
	}
}

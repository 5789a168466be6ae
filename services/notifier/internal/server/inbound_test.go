package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
)

const (
	live  = notifierv1.RepairType_REPAIR_TYPE_LIVE
	recon = notifierv1.RepairType_REPAIR_TYPE_RECONCILIATION
)

// repairCall is one inbound repair report in a scenario of
// store.RecordRepair's rules.
type repairCall struct {
	finish   bool
	aborted  bool
	repair   string // key into the scenario's ids
	upstairs string
	session  string
	typ      notifierv1.RepairType
	region   string // key into ids, or "" for an address-only report
	addr     string
	at       time.Duration // offset from the base time
	want     codes.Code
}

func TestRepairIngestRules(t *testing.T) {
	t.Parallel()
	n := startNotifier(t, freeAddr(t))
	ctx := ctxT(t)
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const a1, a2 = "[fd00:1122:3344:101::5]:19000", "[fd00:1122:3344:102::9]:19004"

	tests := []struct {
		name  string
		calls []repairCall
		// wantRows: notifications listed for address a1 afterwards.
		wantRows int
		// wantFirstTime: the time of the first started row, when checked.
		wantFirstTime time.Duration
	}{
		{name: "start is recorded", wantRows: 1, calls: []repairCall{
			{repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
		}},
		{name: "repeated start is a no-op and the first row wins", wantRows: 1, wantFirstTime: 0, calls: []repairCall{
			{repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, at: time.Minute, want: codes.OK},
		}},
		{name: "repair id keeps its type across upstairs, session and region", wantRows: 1, calls: []repairCall{
			{repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{repair: "r", upstairs: "u2", session: "s2", typ: recon, region: "g2", addr: a1, want: codes.AlreadyExists},
			{finish: true, repair: "r", upstairs: "u", session: "s", typ: recon, region: "g", addr: a1, want: codes.AlreadyExists},
		}},
		{name: "same finish twice is a no-op", wantRows: 2, calls: []repairCall{
			{repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{finish: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, at: time.Second, want: codes.OK},
			{finish: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, at: 2 * time.Second, want: codes.OK},
		}},
		{name: "contradicting finish is rejected", wantRows: 2, calls: []repairCall{
			{repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{finish: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{finish: true, aborted: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.AlreadyExists},
		}},
		{name: "failed then succeeded is rejected too", wantRows: 1, calls: []repairCall{
			{finish: true, aborted: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{finish: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.AlreadyExists},
		}},
		{name: "finish without start is accepted", wantRows: 1, calls: []repairCall{
			{finish: true, repair: "r", upstairs: "u", session: "s", typ: recon, region: "g", addr: a1, want: codes.OK},
		}},
		{name: "retry with a new repair id after a failure is accepted", wantRows: 4, calls: []repairCall{
			{repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{finish: true, aborted: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{repair: "r2", upstairs: "u", session: "s2", typ: live, region: "g", addr: a1, want: codes.OK},
			{finish: true, repair: "r2", upstairs: "u", session: "s2", typ: live, region: "g", addr: a1, want: codes.OK},
		}},
		{name: "new repair id after an interrupted repair is accepted", wantRows: 2, calls: []repairCall{
			{repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{repair: "r2", upstairs: "u", session: "s2", typ: live, region: "g", addr: a1, want: codes.OK},
		}},
		{name: "a finish per downstairs: another region of the same repair is separate", wantRows: 2, calls: []repairCall{
			{finish: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g", addr: a1, want: codes.OK},
			{finish: true, aborted: true, repair: "r", upstairs: "u", session: "s", typ: live, region: "g2", addr: a1, want: codes.OK},
		}},
		{name: "address-only reports are keyed by address", wantRows: 2, calls: []repairCall{
			{repair: "r", upstairs: "u", session: "s", typ: live, addr: a1, want: codes.OK},
			{repair: "r", upstairs: "u", session: "s", typ: live, addr: a2, want: codes.OK},
			{finish: true, repair: "r", upstairs: "u", session: "s", typ: live, addr: a1, want: codes.OK},
			{finish: true, aborted: true, repair: "r", upstairs: "u", session: "s", typ: live, addr: a1, want: codes.AlreadyExists},
			{finish: true, aborted: true, repair: "r", upstairs: "u", session: "s", typ: live, addr: a2, want: codes.OK},
		}},
	}
	for scenario, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ids := map[string]string{}
			id := func(k string) string {
				if k == "" {
					return ""
				}
				if _, ok := ids[k]; !ok {
					ids[k] = uuid.NewString()
				}
				return ids[k]
			}
			// Each scenario uses its own address so rows don't mix.
			addr1 := fmt.Sprintf("[fd00:1122:3344:1ff::%x]:19000", scenario+1)
			for i, c := range tc.calls {
				addr := c.addr
				if addr == a1 {
					addr = addr1
				}
				ds := []*notifierv1.RepairedDownstairs{{RegionId: id(c.region), TargetAddress: addr}}
				ts := timestamppb.New(base.Add(c.at))
				var err error
				if c.finish {
					_, err = n.client.RepairFinish(ctx, &notifierv1.RepairFinishRequest{
						UpstairsId: id(c.upstairs), SessionId: id(c.session), RepairId: id(c.repair), RepairType: c.typ,
						Time: ts, Repairs: ds, Aborted: c.aborted,
					})
				} else {
					_, err = n.client.RepairStart(ctx, &notifierv1.RepairStartRequest{
						UpstairsId: id(c.upstairs), SessionId: id(c.session), RepairId: id(c.repair), RepairType: c.typ,
						Time: ts, Repairs: ds,
					})
				}
				if got := status.Code(err); got != c.want {
					t.Fatalf("call %d: got %v (%v), want %v", i, got, err, c.want)
				}
			}
			resp, err := n.client.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{TargetAddress: addr1})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetNotifications()) != tc.wantRows {
				t.Fatalf("rows for %s: got %d, want %d: %v", addr1, len(resp.GetNotifications()), tc.wantRows, resp.GetNotifications())
			}
			if first := resp.GetNotifications()[0]; first.GetNotificationType() == notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_STARTED {
				if !first.GetTime().AsTime().Equal(base.Add(tc.wantFirstTime)) {
					t.Fatalf("first started row time %v, want %v", first.GetTime().AsTime(), base.Add(tc.wantFirstTime))
				}
			}
		})
	}
}

func TestRepairProgressRules(t *testing.T) {
	t.Parallel()
	n := startNotifier(t, freeAddr(t))
	ctx := ctxT(t)
	up, other, session, repair := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	now := time.Now().UTC().Truncate(time.Microsecond)
	progress := func(upstairs, repair string, at time.Time, cur, total int64) codes.Code {
		_, err := n.client.RepairProgress(ctx, &notifierv1.RepairProgressRequest{
			UpstairsId: upstairs, RepairId: repair, Time: timestamppb.New(at), CurrentItem: cur, TotalItems: total,
		})
		return status.Code(err)
	}
	if got := progress(up, repair, now, 1, 10); got != codes.NotFound {
		t.Fatalf("progress without start: %v, want NotFound", got)
	}
	if _, err := n.client.RepairStart(ctx, &notifierv1.RepairStartRequest{
		UpstairsId: up, SessionId: session, RepairId: repair, RepairType: live, Time: timestamppb.New(now),
		Repairs: []*notifierv1.RepairedDownstairs{{TargetAddress: "[fd00::1]:19000"}},
	}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name     string
		upstairs string
		at       time.Duration
		cur      int64
		want     codes.Code
	}{
		{"another upstairs has no started row", other, 0, 1, codes.NotFound},
		{"first report", up, 0, 1, codes.OK},
		{"exact duplicate", up, 0, 1, codes.AlreadyExists},
		{"later report", up, time.Second, 5, codes.OK},
		{"same time, other item", up, time.Second, 6, codes.OK},
	}
	for _, s := range steps {
		if got := progress(s.upstairs, repair, now.Add(s.at), s.cur, 10); got != s.want {
			t.Fatalf("%s: %v, want %v", s.name, got, s.want)
		}
	}
	if got := progress(up, uuid.NewString(), now, 1, 10); got != codes.NotFound {
		t.Fatalf("unknown repair id: %v, want NotFound", got)
	}
	p, err := n.srv.store.LatestProgress(ctx, uuid.MustParse(repair))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Time.Equal(now.Add(time.Second)) || p.TotalItems != 10 {
		t.Fatalf("latest progress %+v", p)
	}
}

func TestDownstairsClientNotificationsAreAppendOnly(t *testing.T) {
	t.Parallel()
	n := startNotifier(t, freeAddr(t))
	ctx := ctxT(t)
	up, ds := uuid.NewString(), uuid.NewString()
	at := timestamppb.New(time.Now())
	for range 2 {
		if _, err := n.client.DownstairsStopRequest(ctx, &notifierv1.DownstairsStopRequestRequest{
			UpstairsId: up, DownstairsId: ds, Time: at, Reason: notifierv1.StopRequestReason_STOP_REQUEST_REASON_REPLACING,
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := n.client.DownstairsStopped(ctx, &notifierv1.DownstairsStoppedRequest{
			UpstairsId: up, DownstairsId: ds, Time: at, Reason: notifierv1.StoppedReason_STOPPED_REASON_REQUESTED_STOP,
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.client.DownstairsStopped(ctx, &notifierv1.DownstairsStoppedRequest{
		UpstairsId: up, DownstairsId: ds, Time: at, Reason: notifierv1.StoppedReason_STOPPED_REASON_FINISHED,
	}); err != nil {
		t.Fatal(err)
	}
	upID := uuid.MustParse(up)
	if c, _ := n.srv.store.CountClientNotifications(ctx, false, upID); c != 1 {
		t.Fatalf("stop requests: %d, want 1", c)
	}
	if c, _ := n.srv.store.CountClientNotifications(ctx, true, upID); c != 2 {
		t.Fatalf("stopped: %d, want 2", c)
	}
}

func TestInboundBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	n := startNotifier(t, freeAddr(t))
	ctx := ctxT(t)
	good := func() *notifierv1.RepairStartRequest {
		return &notifierv1.RepairStartRequest{
			UpstairsId: uuid.NewString(), SessionId: uuid.NewString(), RepairId: uuid.NewString(), RepairType: live,
			Time: timestamppb.Now(), Repairs: []*notifierv1.RepairedDownstairs{{TargetAddress: "[fd00::77]:19000"}},
		}
	}
	cases := map[string]func(*notifierv1.RepairStartRequest){
		"no upstairs":     func(r *notifierv1.RepairStartRequest) { r.UpstairsId = "" },
		"bad session":     func(r *notifierv1.RepairStartRequest) { r.SessionId = "x" },
		"bad repair id":   func(r *notifierv1.RepairStartRequest) { r.RepairId = "nope" },
		"no type":         func(r *notifierv1.RepairStartRequest) { r.RepairType = 0 },
		"unknown type":    func(r *notifierv1.RepairStartRequest) { r.RepairType = 99 },
		"no time":         func(r *notifierv1.RepairStartRequest) { r.Time = nil },
		"bad time":        func(r *notifierv1.RepairStartRequest) { r.Time = &timestamppb.Timestamp{Nanos: -1} },
		"no downstairs":   func(r *notifierv1.RepairStartRequest) { r.Repairs = nil },
		"ipv4 address":    func(r *notifierv1.RepairStartRequest) { r.Repairs[0].TargetAddress = "10.0.0.1:19000" },
		"garbage address": func(r *notifierv1.RepairStartRequest) { r.Repairs[0].TargetAddress = "fd00::77" },
		"bad region id":   func(r *notifierv1.RepairStartRequest) { r.Repairs[0].RegionId = "region-1" },
		"second one bad": func(r *notifierv1.RepairStartRequest) {
			r.Repairs = append(r.Repairs, &notifierv1.RepairedDownstairs{TargetAddress: ""})
		},
	}
	for name, mutate := range cases {
		req := good()
		mutate(req)
		if _, err := n.client.RepairStart(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	resp, err := n.client.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{TargetAddress: "[fd00::77]:19000"})
	if err != nil || len(resp.GetNotifications()) != 0 {
		t.Fatalf("rows after bad input: %v %v", resp.GetNotifications(), err)
	}
	if _, err := n.client.RepairProgress(ctx, &notifierv1.RepairProgressRequest{UpstairsId: uuid.NewString(), RepairId: uuid.NewString(), Time: timestamppb.Now(), CurrentItem: -1}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("negative progress: %v", err)
	}
	if _, err := n.client.DownstairsStopRequest(ctx, &notifierv1.DownstairsStopRequestRequest{UpstairsId: uuid.NewString(), DownstairsId: uuid.NewString(), Time: timestamppb.Now()}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("stop request without reason: %v", err)
	}
	if _, err := n.client.DownstairsStopped(ctx, &notifierv1.DownstairsStoppedRequest{UpstairsId: uuid.NewString(), DownstairsId: "x", Time: timestamppb.Now(), Reason: 1}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("stopped with bad downstairs id: %v", err)
	}
	if _, err := n.client.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("list without filter: %v", err)
	}
}

func TestListRepairNotificationsPaginates(t *testing.T) {
	t.Parallel()
	n := startNotifier(t, freeAddr(t))
	ctx := ctxT(t)
	region := uuid.NewString()
	base := time.Now().UTC().Truncate(time.Microsecond)
	for i := range 5 {
		if _, err := n.client.RepairStart(ctx, &notifierv1.RepairStartRequest{
			UpstairsId: uuid.NewString(), SessionId: uuid.NewString(), RepairId: uuid.NewString(), RepairType: live,
			// Two rows share a time: the order must still be total.
			Time:    timestamppb.New(base.Add(time.Duration(i/2) * time.Second)),
			Repairs: []*notifierv1.RepairedDownstairs{{RegionId: region, TargetAddress: "[fd00::99]:19000"}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	var got []*notifierv1.RepairNotification
	tok := ""
	for {
		resp, err := n.client.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{RegionId: region, PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, resp.GetNotifications()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			break
		}
	}
	if len(got) != 5 {
		t.Fatalf("got %d rows, want 5", len(got))
	}
	seen := map[string]bool{}
	for i, r := range got {
		if seen[r.GetRepairId()] {
			t.Fatalf("repair %s listed twice", r.GetRepairId())
		}
		seen[r.GetRepairId()] = true
		if i > 0 && r.GetTime().AsTime().Before(got[i-1].GetTime().AsTime()) {
			t.Fatalf("not time ascending at %d", i)
		}
	}
	if _, err := n.client.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{RegionId: region, PageToken: "!!"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad token: %v", err)
	}
}

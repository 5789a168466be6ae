package demo

// The demo's last step: the consistency checks every end-to-end test ends
// with.

import (
	"context"
	"fmt"
	"strings"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// checks ends the demo the way every end-to-end test ends: the
// volume-service's invariants, the cross-service validation once the
// sagas settle, and neither a data-loss probe nor a content mismatch on any
// sim-upstairs.
func (d *run) checks(ctx context.Context) error {
	// Garbage collection may still be finishing behind the last request.
	idleCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := d.a.admin.WaitIdle(idleCtx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		return fmt.Errorf("wait idle: %w", err)
	}
	inv, err := d.a.vol.CheckInvariants(ctx, &volumev1.CheckInvariantsRequest{})
	if err != nil {
		return fmt.Errorf("check invariants: %w", err)
	}
	val, err := d.a.admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		return fmt.Errorf("validate system: %w", err)
	}
	var lossEvents, mismatchEvents int64
	for _, ep := range d.o.SimUpstairs {
		conn, err := d.sim(ep)
		if err != nil {
			return err
		}
		resp, err := upstairsv1.NewUpstairsServiceClient(conn).ListVolumes(ctx, &upstairsv1.ListVolumesRequest{})
		if err != nil {
			return fmt.Errorf("list volumes on upstairs %s: %w", ep, err)
		}
		lossEvents += resp.GetTotalDataLossEvents()
		mismatchEvents += resp.GetTotalContentMismatchEvents()
	}
	d.printf("\n  %-10s CheckInvariants: %s   ValidateSystem: %s   data-loss probes: %d   content mismatches: %d\n", "checks",
		clean(len(inv.GetViolations())), clean(len(val.GetViolations())), lossEvents, mismatchEvents)
	var problems []string
	for _, v := range inv.GetViolations() {
		problems = append(problems, fmt.Sprintf("invariant %s on %s: %s", v.GetCode(), v.GetSubject(), v.GetDetail()))
	}
	for _, v := range val.GetViolations() {
		problems = append(problems, fmt.Sprintf("system %s on %s: %s", v.GetCode(), v.GetSubject(), v.GetDetail()))
	}
	for _, p := range problems {
		d.printf("    %s\n", p)
	}
	if lossEvents > 0 {
		problems = append(problems, fmt.Sprintf("%d data-loss probes on sim-upstairs", lossEvents))
	}
	if mismatchEvents > 0 {
		problems = append(problems, fmt.Sprintf("%d content mismatches on sim-upstairs", mismatchEvents))
	}
	if len(problems) > 0 {
		return fmt.Errorf("consistency checks: %s", strings.Join(problems, "; "))
	}
	return nil
}

func clean(n int) string {
	if n == 0 {
		return "clean"
	}
	return fmt.Sprintf("%d violation(s)", n)
}

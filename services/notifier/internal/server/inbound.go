package server

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/notifier/internal/store"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
	"storagecp.dev/platform/target"
)

// repairReport is the common part of a repair start and finish.
type repairReport struct {
	upstairsID, sessionID, repairID string
	repairType                      notifierv1.RepairType
	repairs                         []*notifierv1.RepairedDownstairs
}

func (r repairReport) rows(at time.Time, notification string) ([]store.RepairNotification, error) {
	up, err := ids.Parse("upstairs_id", r.upstairsID)
	if err != nil {
		return nil, err
	}
	session, err := ids.Parse("session_id", r.sessionID)
	if err != nil {
		return nil, err
	}
	repair, err := ids.Parse("repair_id", r.repairID)
	if err != nil {
		return nil, err
	}
	typ, ok := repairTypeNames[r.repairType]
	if !ok {
		return nil, invalid("repair_type", "must be LIVE or RECONCILIATION")
	}
	if len(r.repairs) == 0 {
		return nil, invalid("repairs", "at least one downstairs required")
	}
	rows := make([]store.RepairNotification, 0, len(r.repairs))
	for i, d := range r.repairs {
		field := fmt.Sprintf("repairs[%d]", i)
		addr, err := target.Canonical(d.GetTargetAddress())
		if err != nil {
			return nil, invalid(field+".target_address", "%v", err)
		}
		region := d.GetRegionId()
		if region != "" {
			id, err := ids.Parse(field+".region_id", region)
			if err != nil {
				return nil, err
			}
			region = id.String()
		}
		rows = append(rows, store.RepairNotification{
			Time: at, RepairID: repair, RepairType: typ, UpstairsID: up, SessionID: session,
			RegionID: region, TargetAddress: addr, Type: notification, ReportedRegion: region != "",
		})
	}
	return rows, nil
}

// resolveTimeout bounds the best-effort lookup of a repaired address.
const resolveTimeout = 2 * time.Second

// resolveRegions fills the region of rows the Upstairs reported by address
// only (an Upstairs knows no region ids), by asking the volume-service which
// target serves the address, so that a region's repairs can be listed by
// region id as the drive task looks for them. Best effort: an unresolved
// row keeps an empty region and is still listed by address.
func (s *Server) resolveRegions(ctx context.Context, rows []store.RepairNotification) {
	// One bound for the whole report, so that an unreachable volume-service
	// delays an Upstairs' report by at most resolveTimeout.
	rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	for i := range rows {
		if rows[i].RegionID != "" || rctx.Err() != nil {
			continue
		}
		resp, err := s.volumes.ResolveAddress(rctx, &volumev1.ResolveAddressRequest{Address: rows[i].TargetAddress})
		if err != nil {
			s.logger.DebugContext(ctx, "repaired address not resolved", "address", rows[i].TargetAddress, "err", err)
			continue
		}
		if id, err := uuid.Parse(resp.GetTarget().GetRegionId()); err == nil {
			rows[i].RegionID = id.String()
		}
	}
}

// recordRepairRows stores each row in its own transaction, by the rules of
// store.RecordRepair; the first
// rejected row stops the report.
func (s *Server) recordRepairRows(ctx context.Context, rows []store.RepairNotification) error {
	s.resolveRegions(ctx, rows)
	for _, r := range rows {
		if err := s.store.RecordRepair(ctx, r); err != nil {
			return s.storeError(ctx, "record repair", err)
		}
	}
	return nil
}

// RepairStart implements UpstairsNotifierService.
func (s *Server) RepairStart(ctx context.Context, req *notifierv1.RepairStartRequest) (*notifierv1.RepairStartResponse, error) {
	at, err := parseTime("time", req.GetTime())
	if err != nil {
		return nil, err
	}
	rows, err := repairReport{req.GetUpstairsId(), req.GetSessionId(), req.GetRepairId(), req.GetRepairType(), req.GetRepairs()}.rows(at, store.RepairStarted)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeReport(ctx, rows[0].UpstairsID); err != nil {
		return nil, err
	}
	if err := s.recordRepairRows(ctx, rows); err != nil {
		return nil, err
	}
	return &notifierv1.RepairStartResponse{}, nil
}

// RepairFinish implements UpstairsNotifierService.
func (s *Server) RepairFinish(ctx context.Context, req *notifierv1.RepairFinishRequest) (*notifierv1.RepairFinishResponse, error) {
	at, err := parseTime("time", req.GetTime())
	if err != nil {
		return nil, err
	}
	outcome := store.RepairSucceeded
	if req.GetAborted() {
		outcome = store.RepairFailed
	}
	rows, err := repairReport{req.GetUpstairsId(), req.GetSessionId(), req.GetRepairId(), req.GetRepairType(), req.GetRepairs()}.rows(at, outcome)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeReport(ctx, rows[0].UpstairsID); err != nil {
		return nil, err
	}
	if err := s.recordRepairRows(ctx, rows); err != nil {
		return nil, err
	}
	return &notifierv1.RepairFinishResponse{}, nil
}

// RepairProgress implements UpstairsNotifierService.
func (s *Server) RepairProgress(ctx context.Context, req *notifierv1.RepairProgressRequest) (*notifierv1.RepairProgressResponse, error) {
	up, err := ids.Parse("upstairs_id", req.GetUpstairsId())
	if err != nil {
		return nil, err
	}
	repair, err := ids.Parse("repair_id", req.GetRepairId())
	if err != nil {
		return nil, err
	}
	at, err := parseTime("time", req.GetTime())
	if err != nil {
		return nil, err
	}
	if req.GetCurrentItem() < 0 {
		return nil, invalid("current_item", "must not be negative")
	}
	if req.GetTotalItems() < 0 {
		return nil, invalid("total_items", "must not be negative")
	}
	if err := s.authorizeReport(ctx, up); err != nil {
		return nil, err
	}
	if err := s.store.RecordProgress(ctx, repair, up, at, req.GetCurrentItem(), req.GetTotalItems()); err != nil {
		return nil, s.storeError(ctx, "record progress", err)
	}
	return &notifierv1.RepairProgressResponse{}, nil
}

// downstairsNotification validates the common part of a downstairs stop
// request or stopped report.
func downstairsNotification(upstairsID, downstairsID string, req interface {
	GetTime() *timestamppb.Timestamp
}) (store.DownstairsClientNotification, error) {
	var n store.DownstairsClientNotification
	var err error
	if n.UpstairsID, err = ids.Parse("upstairs_id", upstairsID); err != nil {
		return n, err
	}
	if n.DownstairsID, err = ids.Parse("downstairs_id", downstairsID); err != nil {
		return n, err
	}
	if n.Time, err = parseTime("time", req.GetTime()); err != nil {
		return n, err
	}
	return n, nil
}

// enumSuffix stores an enum value by its lower-case name without prefix,
// e.g. STOPPED_REASON_READ_FAILED → read_failed.
func enumSuffix(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

// DownstairsStopRequest implements UpstairsNotifierService.
func (s *Server) DownstairsStopRequest(ctx context.Context, req *notifierv1.DownstairsStopRequestRequest) (*notifierv1.DownstairsStopRequestResponse, error) {
	n, err := downstairsNotification(req.GetUpstairsId(), req.GetDownstairsId(), req)
	if err != nil {
		return nil, err
	}
	if req.GetReason() == notifierv1.StopRequestReason_STOP_REQUEST_REASON_UNSPECIFIED || notifierv1.StopRequestReason_name[int32(req.GetReason())] == "" {
		return nil, invalid("reason", "required")
	}
	n.Reason = enumSuffix(req.GetReason().String(), "STOP_REQUEST_REASON_")
	if err := s.authorizeReport(ctx, n.UpstairsID); err != nil {
		return nil, err
	}
	if err := s.store.RecordStopRequest(ctx, n); err != nil {
		return nil, s.storeError(ctx, "record stop request", err)
	}
	return &notifierv1.DownstairsStopRequestResponse{}, nil
}

// DownstairsStopped implements UpstairsNotifierService.
func (s *Server) DownstairsStopped(ctx context.Context, req *notifierv1.DownstairsStoppedRequest) (*notifierv1.DownstairsStoppedResponse, error) {
	n, err := downstairsNotification(req.GetUpstairsId(), req.GetDownstairsId(), req)
	if err != nil {
		return nil, err
	}
	if req.GetReason() == notifierv1.StoppedReason_STOPPED_REASON_UNSPECIFIED || notifierv1.StoppedReason_name[int32(req.GetReason())] == "" {
		return nil, invalid("reason", "required")
	}
	n.Reason = enumSuffix(req.GetReason().String(), "STOPPED_REASON_")
	if err := s.authorizeReport(ctx, n.UpstairsID); err != nil {
		return nil, err
	}
	if err := s.store.RecordStopped(ctx, n); err != nil {
		return nil, s.storeError(ctx, "record stopped", err)
	}
	return &notifierv1.DownstairsStoppedResponse{}, nil
}

// ListRepairNotifications implements UpstairsNotifierService.
func (s *Server) ListRepairNotifications(ctx context.Context, req *notifierv1.ListRepairNotificationsRequest) (*notifierv1.ListRepairNotificationsResponse, error) {
	limit, err := paging.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var after *store.RepairCursor
	if req.GetPageToken() != "" {
		parts, err := decodeToken(req.GetPageToken(), 2)
		if err != nil {
			return nil, err
		}
		nanos, err1 := strconv.ParseInt(parts[0], 10, 64)
		seq, err2 := strconv.ParseInt(parts[1], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, paging.BadToken(req.GetPageToken())
		}
		after = &store.RepairCursor{Time: time.Unix(0, nanos), Seq: seq}
	}
	region := req.GetRegionId()
	if region != "" {
		id, err := ids.Parse("region_id", region)
		if err != nil {
			return nil, err
		}
		region = id.String()
	}
	addr := req.GetTargetAddress()
	if addr != "" {
		if addr, err = target.Canonical(addr); err != nil {
			return nil, invalid("target_address", "%v", err)
		}
	}
	if region == "" && addr == "" {
		return nil, invalid("region_id", "region_id or target_address required")
	}
	rows, err := s.store.ListRepairs(ctx, region, addr, after, limit+1)
	if err != nil {
		return nil, s.storeError(ctx, "list repairs", err)
	}
	resp := &notifierv1.ListRepairNotificationsResponse{}
	if len(rows) > limit {
		rows = rows[:limit]
		last := rows[limit-1]
		resp.NextPageToken = encodeToken(strconv.FormatInt(last.Time.UnixNano(), 10), strconv.FormatInt(last.Seq, 10))
	}
	for _, r := range rows {
		resp.Notifications = append(resp.Notifications, repairProto(r))
	}
	return resp, nil
}

package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/pgtest"
)

// TestErrorTable is the volume-service's error→code table as it was before
// the mapping moved to platform/apierr, checked through the handlers: each
// kind of store error, a VCR error, a status, context errors and an
// internal one keep their codes (and the kinds their messages).
func TestErrorTable(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, "volume")
	s := New(pool, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	want := func(what string, err error, code codes.Code, msg string) {
		t.Helper()
		if st, _ := status.FromError(err); st.Code() != code || !strings.Contains(st.Message(), msg) {
			t.Errorf("%s: %v %q, want %v %q", what, st.Code(), st.Message(), code, msg)
		}
	}

	missing := uuid.NewString()
	_, err := s.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: missing})
	want("store NotFound", err, codes.NotFound, missing)

	_, err = s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: uuid.NewString(),
		Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{Id: "x"}}}})
	want("VCR InvalidError", err, codes.InvalidArgument, "vcr.volume")

	_, err = s.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: "nope"})
	want("status", err, codes.InvalidArgument, "volume_id: not a UUID")

	_, err = s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: uuid.NewString(), Vcr: volumePB(regionPB(true, "[fd00::1]:1"))})
	want("store FailedPrecondition", err, codes.FailedPrecondition, "[fd00::1]:1")

	broken := uuid.New()
	if _, err := pool.Exec(ctx, `INSERT INTO volume (id, data) VALUES ($1, '"not a VCR"')`, broken); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: broken.String()})
	want("store Internal", err, codes.Internal, "")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.GetVolume(cctx, &volumev1.GetVolumeRequest{VolumeId: missing})
	want("canceled", err, codes.Canceled, "")

	want("unknown", s.toStatus(ctx, "Test", errors.New("boom")), codes.Internal, "")
	// The one change: contention was Internal, is now Unavailable as in
	// every service.
	want("retryable", s.toStatus(ctx, "Test", &pgconn.PgError{Code: "40001"}), codes.Unavailable, "database contention, retry")
}

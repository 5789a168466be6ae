package server

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/notifier/internal/store"
	"storagecp.dev/platform/mtls"
)

// An activation records the identity of the Upstairs that accepted it;
// a failed one, or one over plaintext, keeps the recorded identity. Only
// that identity (or an anonymous caller, in a plaintext deployment) may
// then report for the attachment's upstairs_id; an upstairs_id nobody
// recorded an identity for is open to any caller.
func TestReportsAreBoundToTheActivatingUpstairs(t *testing.T) {
	t.Parallel()
	n := startNotifier(t, freeAddr(t))
	ctx := ctxT(t)
	st := n.srv.store
	const up0, up1 = "spiffe://storagecp.local/upstairs/sim-upstairs-0", "spiffe://storagecp.local/upstairs/sim-upstairs-1"

	start := func(volume uuid.UUID, upstairsID uuid.UUID) store.Attachment {
		t.Helper()
		a, err := st.StartConstruction(ctx, store.ConstructionStart{
			VolumeID: volume, Kind: "propolis", Endpoint: "127.0.0.1:4000", UpstairsID: upstairsID, ReadOnly: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	identities := func(upstairsID uuid.UUID, want ...string) {
		t.Helper()
		got, err := st.UpstairsIdentities(ctx, upstairsID)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("identities of %s: got %q, want %q", upstairsID, got, want)
		}
	}
	mayReport := func(caller string, upstairsID uuid.UUID, want codes.Code) {
		t.Helper()
		err := n.srv.reporterMayReportFor(ctx, caller, upstairsID)
		if status.Code(err) != want {
			t.Fatalf("%s reporting for %s: got %v, want %s", caller, upstairsID, err, want)
		}
	}

	volume, upstairsID := uuid.New(), uuid.New()
	a := start(volume, upstairsID)
	identities(upstairsID)
	mayReport(up1, upstairsID, codes.OK) // nothing recorded yet

	a, err := st.FinishConstruction(ctx, a.ID, a.Incarnation, store.StateRunning, "", up0)
	if err != nil {
		t.Fatal(err)
	}
	if a.UpstairsIdentity != up0 {
		t.Fatalf("attachment identity %q, want %q", a.UpstairsIdentity, up0)
	}
	identities(upstairsID, up0)
	mayReport(up0, upstairsID, codes.OK)
	mayReport(mtls.Anonymous, upstairsID, codes.OK)
	mayReport(up1, upstairsID, codes.PermissionDenied)
	err = n.srv.reporterMayReportFor(ctx, up1, upstairsID)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, up1) || !strings.Contains(msg, up0) || !strings.Contains(msg, upstairsID.String()) {
		t.Fatalf("refusal %q should name both identities and the upstairs id", msg)
	}
	mayReport(up1, uuid.New(), codes.OK) // an unknown upstairs_id names no one's Upstairs

	// A restart on the same endpoint that fails, or runs plaintext, keeps
	// the identity; a successful one from another identity replaces it.
	a = start(volume, uuid.Nil)
	if a, err = st.FinishConstruction(ctx, a.ID, a.Incarnation, store.StateFailed, "activate: refused", ""); err != nil {
		t.Fatal(err)
	}
	if a.UpstairsIdentity != up0 {
		t.Fatalf("a failed activation changed the identity to %q", a.UpstairsIdentity)
	}
	a = start(volume, uuid.Nil)
	if _, err = st.FinishConstruction(ctx, a.ID, a.Incarnation, store.StateRunning, "", up1); err != nil {
		t.Fatal(err)
	}
	identities(upstairsID, up1)
	mayReport(up0, upstairsID, codes.PermissionDenied)
	mayReport(up1, upstairsID, codes.OK)

	// The same upstairs_id constructed on an Upstairs of another identity
	// (another endpoint): both may report for it.
	b, err := st.StartConstruction(ctx, store.ConstructionStart{
		VolumeID: uuid.New(), Kind: "propolis", Endpoint: "127.0.0.1:4001", UpstairsID: upstairsID, ReadOnly: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err = st.FinishConstruction(ctx, b.ID, b.Incarnation, store.StateRunning, "", up0); err != nil {
		t.Fatal(err)
	}
	identities(upstairsID, up0, up1)
	mayReport(up0, upstairsID, codes.OK)
	mayReport(up1, upstairsID, codes.OK)
	mayReport("spiffe://storagecp.local/upstairs/sim-upstairs-2", upstairsID, codes.PermissionDenied)
}

package mtls

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func MustTD(t *testing.T) spiffeid.TrustDomain {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return td
}

package security

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"storagecp.dev/integration/harness"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pgcluster"
	"storagecp.dev/testsupport/stack"
)

// Metrics and profiles served off loopback are served over the same mutual
// TLS as gRPC: plain HTTP and a client without a certificate get nothing;
// a member of the trust domain scrapes /metrics and reads pprof.
func TestMetricsOffLoopbackNeedMutualTLS(t *testing.T) {
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	st := harness.Start(t, stack.Config{
		Only: []string{stack.Volume},
		// The last --metrics-addr wins: every interface, not loopback.
		ExtraArgs: map[string][]string{stack.Volume: {"--metrics-addr", fmt.Sprintf("0.0.0.0:%d", port)}},
	})
	url := fmt.Sprintf("https://127.0.0.1:%d", port)

	id, err := st.Identity("viewer/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	bundle, err := x509bundle.Load(td, st.CA().BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Load(id.Cert, id.Key)
	if err != nil {
		t.Fatal(err)
	}
	withCert := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(td, "/"+mtls.VolumeService)))
	withoutCert := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeMemberOf(td))
	get := func(cfg *tls.Config, u string) (int, string, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := c.Get(u)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}

	var code int
	var body string
	harness.Eventually(t, 10*time.Second, "metrics over mTLS", func() error {
		code, body, err = get(withCert, url+"/metrics")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	if code, body, err := get(withCert, url+"/debug/pprof/cmdline"); err != nil || code != http.StatusOK || !strings.Contains(body, "volume-service") {
		t.Fatalf("pprof over mTLS: %d %v %.80q", code, err, body)
	}
	if code, _, err := get(withoutCert, url+"/metrics"); err == nil {
		t.Fatalf("a client without a certificate scraped the metrics (status %d)", code)
	} else {
		t.Logf("no client certificate: %v", err)
	}
	if code, _, err := get(nil, fmt.Sprintf("http://127.0.0.1:%d/metrics", port)); err == nil && code == http.StatusOK {
		t.Fatal("plain HTTP scraped the metrics")
	} else {
		t.Logf("plain HTTP: status %d, %v", code, err)
	}
}

package pki

import (
	"os"
	"path/filepath"
	"testing"
)

const td = "storagecp.local"

func TestEnsureKeepsAValidIdentityAndReissuesABadOne(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.Ensure("operator", "spiffe://storagecp.local/operator/a", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(id.Cert)

	// Kept across runs: the same CA, the same certificate.
	again, err := LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cert.Equal(ca.Cert) {
		t.Fatal("a second start made a new CA")
	}
	if _, err := again.Ensure("operator", "spiffe://storagecp.local/operator/a"); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.ReadFile(id.Cert); string(now) != string(first) {
		t.Fatal("a valid certificate was re-issued")
	}

	// Another ID for the same name, a missing key, a foreign issuer: each
	// is re-issued.
	for _, tc := range []struct {
		name  string
		spoil func()
		want  string
	}{
		{"other id", func() {}, "spiffe://storagecp.local/operator/b"},
		{"missing key", func() { os.Remove(id.Key) }, "spiffe://storagecp.local/operator/b"},
		{"foreign issuer", func() {
			other, err := NewCA(filepath.Join(t.TempDir(), "other"), td)
			if err != nil {
				t.Fatal(err)
			}
			if err := other.Issue(filepath.Dir(id.Cert), "spiffe://storagecp.local/operator/b"); err != nil {
				t.Fatal(err)
			}
		}, "spiffe://storagecp.local/operator/b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spoil()
			before, _ := os.ReadFile(id.Cert)
			got, err := ca.Ensure("operator", tc.want)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := os.ReadFile(got.Cert)
			if string(raw) == string(before) {
				t.Fatal("not re-issued")
			}
			certs, err := ParseCertificates(raw)
			if err != nil || len(certs) != 1 {
				t.Fatalf("certificates: %v %d", err, len(certs))
			}
			if certs[0].URIs[0].String() != tc.want || certs[0].CheckSignatureFrom(ca.Cert) != nil {
				t.Fatalf("issued %s by %s", certs[0].URIs[0], certs[0].Issuer)
			}
		})
	}
}

func TestBundleHoldsBothAuthoritiesDuringARotation(t *testing.T) {
	a, err := NewCA(filepath.Join(t.TempDir(), "a"), td)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewCA(filepath.Join(t.TempDir(), "b"), td)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.WriteBundle(b); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(a.BundlePath())
	certs, err := ParseCertificates(raw)
	if err != nil || len(certs) != 2 || !certs[0].Equal(a.Cert) || !certs[1].Equal(b.Cert) {
		t.Fatalf("bundle: %d certificates, %v", len(certs), err)
	}
}

func TestIssueRefusesWhatIsNotASPIFFEID(t *testing.T) {
	ca, err := NewCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Issue(t.TempDir(), "https://storagecp.local/x"); err == nil {
		t.Fatal("issued a certificate for an https URI")
	}
}

// Package pki is a small certificate authority for deployments that have no
// issuer of their own: `make run` and the test stacks. It issues X509-SVIDs,
// certificates whose only URI SAN is the holder's SPIFFE ID, which is what
// every storagecp process presents and verifies (platform/mtls). Production
// deployments use their own issuer (cert-manager, SPIRE through
// spiffe-helper); storagecp reads files either way.
//
// Layout under a PKI directory:
//
//	ca.pem, ca.key             the authority (key never leaves this directory)
//	bundle.pem                 the trust bundle every process reads
//	<name>/svid.pem, svid.key  one identity, e.g. operator/local/svid.pem
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// Lifetimes. Short enough that rotation is exercised, long enough that a
// `make run` session never sees an expiry; Ensure re-issues anything that
// has less than Renew left.
const (
	CALifetime   = 365 * 24 * time.Hour
	SVIDLifetime = 30 * 24 * time.Hour
	Renew        = 7 * 24 * time.Hour
)

// File names inside a PKI directory.
const (
	BundleFile = "bundle.pem"
	CertFile   = "svid.pem"
	KeyFile    = "svid.key"
	caCertFile = "ca.pem"
	caKeyFile  = "ca.key"
)

// CA is a loaded certificate authority.
type CA struct {
	Dir  string
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Identity is one holder's files.
type Identity struct {
	// ID is the SPIFFE ID, e.g. spiffe://storagecp.local/operator/local.
	ID   string
	Cert string
	Key  string
}

// LoadOrCreateCA opens the CA under dir, creating it (and dir) when it is
// missing or near expiry. A re-created CA invalidates every identity it
// issued; Ensure notices (the issuer no longer matches) and re-issues.
func LoadOrCreateCA(dir, trustDomain string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := loadCA(dir)
	if err == nil && time.Until(ca.Cert.NotAfter) > Renew {
		return ca, ca.writeBundle(nil)
	}
	return NewCA(dir, trustDomain)
}

// NewCA creates a fresh authority under dir (replacing any there) and
// writes a bundle holding only it.
func NewCA(dir, trustDomain string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	td, err := url.Parse("spiffe://" + trustDomain)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"storagecp"}, CommonName: "storagecp local CA " + now.UTC().Format(time.RFC3339)},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{Dir: dir, Cert: cert, key: key}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(filepath.Join(dir, caKeyFile), pemBlock("EC PRIVATE KEY", keyDER), 0o600); err != nil {
		return nil, err
	}
	if err := writeAtomic(filepath.Join(dir, caCertFile), pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return nil, err
	}
	return ca, ca.writeBundle(nil)
}

// BundlePath is the trust bundle's file.
func (ca *CA) BundlePath() string { return filepath.Join(ca.Dir, BundleFile) }

// WriteBundle writes a bundle of this CA and the extra ones (a rotation
// trusts the old and the new authority at once).
func (ca *CA) WriteBundle(extra ...*CA) error { return ca.writeBundle(extra) }

func (ca *CA) writeBundle(extra []*CA) error {
	var buf bytes.Buffer
	buf.Write(pemBlock("CERTIFICATE", ca.Cert.Raw))
	for _, e := range extra {
		buf.Write(pemBlock("CERTIFICATE", e.Cert.Raw))
	}
	path := ca.BundlePath()
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, buf.Bytes()) {
		return nil
	}
	return writeAtomic(path, buf.Bytes(), 0o644)
}

// Ensure returns the identity named name (a path under the CA directory,
// e.g. "operator"), issuing it when its files are missing, unreadable,
// from another authority, for another ID, or near expiry. hosts are DNS
// names or IP addresses added as SANs, so that tools that verify host
// names (grpcurl, grpc-health-probe) accept the certificate too.
func (ca *CA) Ensure(name, spiffeID string, hosts ...string) (Identity, error) {
	dir := filepath.Join(ca.Dir, name)
	id := Identity{ID: spiffeID, Cert: filepath.Join(dir, CertFile), Key: filepath.Join(dir, KeyFile)}
	if cert, err := readCert(id.Cert); err == nil && ca.issued(cert, spiffeID) {
		if _, kerr := os.Stat(id.Key); kerr == nil {
			return id, nil
		}
	}
	return id, ca.Issue(dir, spiffeID, hosts...)
}

// Issue writes a fresh SVID for spiffeID into dir (svid.pem, svid.key),
// replacing files atomically so a process reloading them never reads half.
func (ca *CA) Issue(dir, spiffeID string, hosts ...string) error {
	u, err := url.Parse(spiffeID)
	if err != nil || u.Scheme != "spiffe" {
		return fmt.Errorf("pki: %q is not a SPIFFE ID", spiffeID)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"storagecp"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     minTime(now.Add(SVIDLifetime), ca.Cert.NotAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// Key first: a reader that sees the new certificate finds its key.
	if err := writeAtomic(filepath.Join(dir, KeyFile), pemBlock("PRIVATE KEY", keyDER), 0o600); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, CertFile), pemBlock("CERTIFICATE", der), 0o644)
}

func (ca *CA) issued(cert *x509.Certificate, spiffeID string) bool {
	if len(cert.URIs) != 1 || cert.URIs[0].String() != spiffeID {
		return false
	}
	if time.Until(cert.NotAfter) < Renew {
		return false
	}
	return cert.CheckSignatureFrom(ca.Cert) == nil
}

func loadCA(dir string) (*CA, error) {
	cert, err := readCert(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, errors.New("pki: CA key is not PEM")
	}
	key, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	return &CA{Dir: dir, Cert: cert, key: key}, nil
}

func readCert(path string) (*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, fmt.Errorf("pki: %s is not PEM", path)
	}
	return x509.ParseCertificate(b.Bytes)
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

// writeAtomic replaces path by renaming a complete temporary file over it.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// ParseCertificates parses every PEM certificate in raw, in order.
func ParseCertificates(raw []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, raw = pem.Decode(raw)
		if b == nil {
			return out, nil
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

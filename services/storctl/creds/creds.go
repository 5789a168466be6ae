// Package creds finds the credentials storctl uses when it is given none:
// the operator identity `make run` issues under .run/pki (the launcher
// keeps its PKI there across runs). The launcher asks the same question
// to know whether the storctl commands it prints need TLS flags.
package creds

import (
	"os"
	"path/filepath"

	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
)

// RunPKI is where `make run` keeps its PKI, relative to the repository
// root.
const RunPKI = ".run/pki"

// Operator is the identity storctl presents by default, the operator
// `make run` issues (testsupport/stack.OperatorID).
const Operator = mtls.Operators + "/local"

// Files are an identity's files under a PKI directory laid out as
// platform/pki writes it: <dir>/bundle.pem, <dir>/<identity>/svid.pem and
// svid.key.
func Files(dir, identity string) mtls.Files {
	return mtls.Files{
		CA:   filepath.Join(dir, pki.BundleFile),
		Cert: filepath.Join(dir, identity, pki.CertFile),
		Key:  filepath.Join(dir, identity, pki.KeyFile),
	}
}

// FindRunPKI returns the nearest .run/pki holding a trust bundle at start
// or above it, and whether there is one.
func FindRunPKI(start string) (string, bool) {
	dir, err := filepath.Abs(start)
	if err != nil {
		return "", false
	}
	for {
		cand := filepath.Join(dir, RunPKI)
		if _, err := os.Stat(filepath.Join(cand, pki.BundleFile)); err == nil {
			return cand, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// Default returns the operator's files under the nearest .run/pki at
// start or above, and whether they exist.
func Default(start string) (mtls.Files, bool) {
	dir, ok := FindRunPKI(start)
	if !ok {
		return mtls.Files{}, false
	}
	f := Files(dir, Operator)
	for _, p := range []string{f.Cert, f.Key} {
		if _, err := os.Stat(p); err != nil {
			return mtls.Files{}, false
		}
	}
	return f, true
}

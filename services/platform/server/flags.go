package server

import (
	"flag"
	"io"
	"time"

	"storagecp.dev/platform/config"
)

// commonFlags are the settings every service shares.
type commonFlags struct {
	listen      *string
	metricsAddr *string
	dev         *bool
	sec         *securityFlags
	// dsn and dbWait are nil for a service without a database.
	dsn    *string
	dbWait *time.Duration
}

// newFlagSet registers every flag of svc. Their environment variables and
// the --config file are config.Parse's: one rule for every flag.
func newFlagSet(svc Service) (*flag.FlagSet, *commonFlags) {
	fset := flag.NewFlagSet(svc.Name, flag.ContinueOnError)
	f := &commonFlags{}
	f.listen = fset.String("listen", svc.DefaultAddr, "gRPC listen address")
	f.metricsAddr = fset.String("metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics; empty: no metrics")
	f.dev = fset.Bool("dev", false, "serve development-only RPCs such as fault injection")
	f.sec = registerSecurityFlags(fset)
	if svc.Migrations != nil {
		f.dsn = fset.String("db", "", "PostgreSQL DSN")
		f.dbWait = fset.Duration("db-wait", 15*time.Second, "how long to wait for the database at start")
	}
	if svc.Flags != nil {
		svc.Flags(fset)
	}
	return fset, f
}

// sharedEnv are the variables some flags have always also read, shared by
// every service of a deployment; each service's own variable
// (STORAGECP_VOLUME_TLS_CA) comes first.
var sharedEnv = map[string][]string{
	"tls-ca":       {"STORAGECP_TLS_CA"},
	"trust-domain": {"STORAGECP_TRUST_DOMAIN"},
	"authz-policy": {"STORAGECP_AUTHZ_POLICY"},
	"dev":          {"STORAGECP_DEV"},
}

func (svc Service) configOptions() config.Options {
	return config.Options{EnvPrefix: svc.EnvPrefix, EnvAliases: sharedEnv}
}

// CheckConfig loads a --config file against svc's flags as Run would,
// ignoring the environment, and says what is wrong with it: a key no flag
// has, a value its flag rejects. For tests of shipped example files.
func CheckConfig(svc Service, path string) error {
	fset, _ := newFlagSet(svc)
	fset.SetOutput(io.Discard)
	opts := svc.configOptions()
	opts.Getenv = func(string) string { return "" }
	return config.Parse(fset, []string{"--" + config.Flag, path}, opts)
}

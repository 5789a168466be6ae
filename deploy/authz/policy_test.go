package authz

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/emptypb"

	// Every generated package, so that every storage.* file descriptor is
	// in protoregistry.GlobalFiles (TestEveryProtoIsRegistered checks that
	// none is missing from this list).
	_ "storagecp.dev/gen/go/storage/agent/v1"
	_ "storagecp.dev/gen/go/storage/allocator/v1"
	_ "storagecp.dev/gen/go/storage/common/v1"
	_ "storagecp.dev/gen/go/storage/notifier/v1"
	_ "storagecp.dev/gen/go/storage/orchestrator/v1"
	_ "storagecp.dev/gen/go/storage/upstairs/v1"
	_ "storagecp.dev/gen/go/storage/volume/v1"

	platformauthz "storagecp.dev/platform/authz"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
)

func api(t *testing.T) []Method {
	t.Helper()
	ms := Methods(protoregistry.GlobalFiles, "storage.")
	if len(ms) < 50 {
		t.Fatalf("only %d storage.* methods in the registry: are the generated packages imported?", len(ms))
	}
	return ms
}

func load(t *testing.T) *Policy {
	t.Helper()
	p, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The policy as committed grants every RPC of the API by its exact path,
// names no path that is not an RPC, and uses wildcards only for health and
// reflection.
func TestPolicyCoversEveryMethod(t *testing.T) {
	ms := api(t)
	problems := load(t).Check(ms)
	for _, p := range problems {
		t.Errorf("deploy/authz/policy.json: %s", p)
	}
	t.Logf("%d methods of %d storage.* services checked, %d problems", len(ms), countServices(ms), len(problems))
}

func countServices(ms []Method) int {
	seen := map[string]bool{}
	for _, m := range ms {
		seen[string(m.Descriptor.Parent().FullName())] = true
	}
	return len(seen)
}

// The embedded policy is the file on disk (go:embed reads it at build
// time; a stale test binary would check an old policy).
func TestEmbeddedPolicyIsTheFile(t *testing.T) {
	raw, err := os.ReadFile("policy.json")
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != string(PolicyJSON) {
		t.Fatal("PolicyJSON differs from policy.json")
	}
}

// Every .proto under proto/storage is in the registry: a new package that
// this test does not import would otherwise escape the coverage check.
func TestEveryProtoIsRegistered(t *testing.T) {
	root := filepath.Join("..", "..", "proto")
	n := 0
	err := filepath.WalkDir(filepath.Join(root, "storage"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".proto") {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		n++
		if _, err := protoregistry.GlobalFiles.FindFileByPath(filepath.ToSlash(rel)); err != nil {
			t.Errorf("%s is not registered: import its generated package in this test", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("no .proto found under %s", root)
	}
}

// The check fails when it should: a policy missing any one method reports
// exactly that method.
func TestCheckReportsEachMissingMethod(t *testing.T) {
	ms := api(t)
	for _, m := range ms {
		raw, err := Without(PolicyJSON, m.Path)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		problems := p.Check(ms)
		if len(problems) != 1 || problems[0].Path != m.Path || problems[0].Rule != "" {
			t.Errorf("policy without %s: problems %v, want that method reported alone", m.Path, problems)
		}
	}
	raw, _ := Without(PolicyJSON, "/storage.orchestrator.v1.AdminService/AbandonSaga")
	p, _ := Parse(raw)
	t.Logf("policy without AbandonSaga: %v", p.Check(ms))
}

// A typo, a wildcard beyond health and reflection, a rule without paths or
// principals and a principal outside the trust domain are each reported.
func TestCheckReportsTyposAndWildcards(t *testing.T) {
	ms := api(t)
	cases := []struct {
		name   string
		rule   map[string]any
		path   string
		reason string
	}{
		{"typo", rule([]string{TrustDomainPrefix + "operator/*"}, []string{"/storage.volume.v1.VolumeService/GetVolumes"}), "/storage.volume.v1.VolumeService/GetVolumes", "not a method"},
		{"wrong package", rule([]string{TrustDomainPrefix + "operator/*"}, []string{"/storage.volume.v2.VolumeService/GetVolume"}), "/storage.volume.v2.VolumeService/GetVolume", "not a method"},
		{"service wildcard", rule([]string{TrustDomainPrefix + "operator/*"}, []string{"/storage.volume.v1.VolumeService/*"}), "/storage.volume.v1.VolumeService/*", "wildcard"},
		{"suffix wildcard", rule([]string{TrustDomainPrefix + "operator/*"}, []string{"*/GetVolume"}), "*/GetVolume", "wildcard"},
		{"everything", rule([]string{TrustDomainPrefix + "operator/*"}, []string{"*"}), "*", "wildcard"},
		{"no paths", rule([]string{TrustDomainPrefix + "operator/*"}, nil), "(no paths)", "every method"},
		{"no principals", rule(nil, []string{"/storage.volume.v1.VolumeService/GetVolume"}), "(no principals)", "every caller"},
		{"foreign principal", rule([]string{"spiffe://evil.example/operator"}, []string{"/storage.volume.v1.VolumeService/GetVolume"}), "spiffe://evil.example/operator", "outside"},
		{"any principal", rule([]string{"*"}, []string{"/storage.volume.v1.VolumeService/GetVolume"}), "*", "outside"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var doc map[string]any
			if err := json.Unmarshal(PolicyJSON, &doc); err != nil {
				t.Fatal(err)
			}
			doc["allow_rules"] = append(doc["allow_rules"].([]any), c.rule)
			raw, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			problems := p.Check(ms)
			if len(problems) != 1 || problems[0].Path != c.path || problems[0].Rule != "injected" || !strings.Contains(problems[0].Reason, c.reason) {
				t.Fatalf("problems %v, want one for %q (%s)", problems, c.path, c.reason)
			}
			t.Logf("%s", problems[0])
		})
	}
}

func rule(principals, paths []string) map[string]any {
	r := map[string]any{"name": "injected", "source": map[string]any{}, "request": map[string]any{}}
	if principals != nil {
		r["source"] = map[string]any{"principals": principals}
	}
	if paths != nil {
		r["request"] = map[string]any{"paths": paths}
	}
	return r
}

// An unknown field (a misspelt "paths") is an error, as it is for grpc-go.
func TestParseRejectsUnknownFields(t *testing.T) {
	_, err := Parse([]byte(`{"name":"x","allow_rules":[{"name":"r","request":{"path":["/a/b"]}}]}`))
	if err == nil {
		t.Fatal("a rule with \"path\" parsed")
	}
	t.Logf("%v", err)
}

// Allows, which the integration tests use to decide which calls must be
// refused, agrees with the interceptor the servers run (platform/authz over
// grpc-go's authz) for every method and a caller of every kind, over real
// mutual-TLS connections.
func TestAllowsAgreesWithTheServers(t *testing.T) {
	ms := api(t)
	policy := load(t)
	dir := t.TempDir()
	ca, err := pki.NewCA(filepath.Join(dir, "pki"), mtls.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policyPath, PolicyJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	transport := func(path string) *mtls.Transport {
		id, err := ca.Ensure(path, mtls.ServiceID(mtls.DefaultTrustDomain, path), "localhost")
		if err != nil {
			t.Fatal(err)
		}
		tr, err := mtls.Load(mtls.DefaultTrustDomain, mtls.Files{CA: ca.BundlePath(), Cert: id.Cert, Key: id.Key}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	guard, err := platformauthz.New(policyPath, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer guard.Close()
	errReached := status.Error(codes.Unimplemented, "reached the handler")
	srv := grpc.NewServer(transport(mtls.VolumeService).ServerOption(),
		grpc.ChainStreamInterceptor(guard.Stream()),
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error { return errReached }))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	callers := []string{
		mtls.VolumeService, mtls.RegionAllocator, mtls.UpstairsNotifier, mtls.ReplacementOrchestrator,
		"crucible-agent/sim", "upstairs/sim-upstairs-0", "operator/x", "viewer/x", "test/x", "stranger/x",
		// Prefixes without the slash must not pass for the role.
		"operatorx", "viewer",
	}
	extra := []string{"/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "/storage.volume.v1.VolumeService/NoSuchMethod"}
	for _, c := range callers {
		conn, err := grpc.NewClient(lis.Addr().String(), transport(c).DialOption())
		if err != nil {
			t.Fatal(err)
		}
		principal := mtls.ServiceID(mtls.DefaultTrustDomain, c)
		granted := 0
		paths := extra
		for _, m := range ms {
			paths = append(paths, m.Path)
		}
		for _, path := range paths {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := conn.Invoke(ctx, path, &emptypb.Empty{}, &emptypb.Empty{})
			cancel()
			var served bool
			switch status.Code(err) {
			case codes.Unimplemented:
				served = true
			case codes.PermissionDenied:
				want := principal + " may not call " + path
				if msg := status.Convert(err).Message(); msg != want {
					t.Errorf("%s calling %s: refusal %q, want %q", c, path, msg, want)
				}
			default:
				t.Fatalf("%s calling %s: %v", c, path, err)
			}
			if served != policy.Allows(principal, path) {
				t.Errorf("%s calling %s: server allowed=%v, Allows=%v", c, path, served, !served)
			}
			if served {
				granted++
			}
		}
		conn.Close()
		t.Logf("%-40s may call %d of %d paths", principal, granted, len(paths))
	}
}

// The batch RPCs write replacement state (ReplaceReadOnlyTargets,
// DeleteReadOnlyStashes), serve the batch swap's safety check
// (FindAttachedVolumes) or the tasks' pass (GetVolumeStates): like the
// per-volume calls, only the orchestrator may call them, never an
// operator, viewer, Upstairs or another service.
func TestBatchRPCsAreTheOrchestratorsOnly(t *testing.T) {
	p := load(t)
	callers := []string{
		TrustDomainPrefix + "replacement-orchestrator",
		TrustDomainPrefix + "operator/local",
		TrustDomainPrefix + "viewer/local",
		TrustDomainPrefix + "upstairs-notifier",
		TrustDomainPrefix + "volume-service",
		TrustDomainPrefix + "region-allocator",
		TrustDomainPrefix + "upstairs/sim",
	}
	for _, path := range []string{
		"/storage.volume.v1.VolumeService/ReplaceReadOnlyTargets",
		"/storage.volume.v1.VolumeService/DeleteReadOnlyStashes",
		"/storage.notifier.v1.UpstairsNotifierService/FindAttachedVolumes",
		"/storage.volume.v1.VolumeService/GetVolumeStates",
	} {
		for i, c := range callers {
			if got := p.Allows(c, path); got != (i == 0) {
				t.Errorf("%s allowed to %s: %v", path, c, got)
			}
		}
	}
}

// Package authz reads the deployment's authorization policy (policy.json
// beside this file, grpc-go's authorization-policy format) and checks it
// against the API: every RPC of every storage.* service is granted to
// someone by its exact path, every path the policy names is a real RPC, and
// wildcards are used only for the gRPC health and reflection services.
//
// Allows evaluates the policy the way grpc-go's authz package does (allow
// rules only; the policy has no deny rules), so tests can ask who may call
// what without starting a server.
package authz

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// PolicyJSON is deploy/authz/policy.json as built into this package.
//
//go:embed policy.json
var PolicyJSON []byte

// TrustDomainPrefix starts every principal the policy may name.
const TrustDomainPrefix = "spiffe://storagecp.local/"

// WildcardServices are the only services the policy may grant by wildcard
// ("/<service>/*"): the standard gRPC ones every process serves and every
// member of the trust domain may use.
var WildcardServices = []string{
	"grpc.health.v1.Health",
	"grpc.reflection.v1.ServerReflection",
	"grpc.reflection.v1alpha.ServerReflection",
}

// Policy is grpc-go's authorization policy (google.golang.org/grpc/authz).
type Policy struct {
	Name                string          `json:"name"`
	DenyRules           []Rule          `json:"deny_rules"`
	AllowRules          []Rule          `json:"allow_rules"`
	AuditLoggingOptions json.RawMessage `json:"audit_logging_options"`
}

// Rule is one allow or deny rule.
type Rule struct {
	Name   string `json:"name"`
	Source struct {
		Principals []string `json:"principals"`
	} `json:"source"`
	Request struct {
		Paths   []string `json:"paths"`
		Headers []struct {
			Key    string   `json:"key"`
			Values []string `json:"values"`
		} `json:"headers"`
	} `json:"request"`
}

// Parse decodes a policy as strictly as grpc-go does (an unknown field is
// an error there, so it is here).
func Parse(raw []byte) (*Policy, error) {
	var p Policy
	d := json.NewDecoder(bytes.NewReader(raw))
	d.DisallowUnknownFields()
	if err := d.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return &p, nil
}

// Load parses PolicyJSON.
func Load() (*Policy, error) { return Parse(PolicyJSON) }

// Method is one RPC of the API.
type Method struct {
	// Path is the gRPC method path, "/storage.volume.v1.VolumeService/GetVolume".
	Path       string
	Descriptor protoreflect.MethodDescriptor
}

// Streaming reports whether either side streams.
func (m Method) Streaming() bool {
	return m.Descriptor.IsStreamingClient() || m.Descriptor.IsStreamingServer()
}

// Methods lists every method of every service declared in a proto package
// under prefix ("storage.") in files, sorted by path.
func Methods(files *protoregistry.Files, prefix string) []Method {
	var out []Method
	files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if !strings.HasPrefix(string(fd.Package()), prefix) {
			return true
		}
		for i := 0; i < fd.Services().Len(); i++ {
			out = append(out, ServiceMethods(fd.Services().Get(i))...)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// ServiceMethods lists the methods of one service, in declaration order.
func ServiceMethods(sd protoreflect.ServiceDescriptor) []Method {
	var out []Method
	for i := 0; i < sd.Methods().Len(); i++ {
		md := sd.Methods().Get(i)
		out = append(out, Method{Path: "/" + string(sd.FullName()) + "/" + string(md.Name()), Descriptor: md})
	}
	return out
}

// Problem is one thing wrong with a policy.
type Problem struct {
	// Rule names the rule ("" for a method no rule grants).
	Rule string
	// Path is the method path or policy entry concerned.
	Path   string
	Reason string
}

func (p Problem) String() string {
	if p.Rule == "" {
		return fmt.Sprintf("%s: %s", p.Path, p.Reason)
	}
	return fmt.Sprintf("rule %q, %s: %s", p.Rule, p.Path, p.Reason)
}

// Check compares the policy with the API's methods:
//   - a method that no allow rule lists by its exact path is callable by
//     nobody (or only through a wildcard nobody reviewed);
//   - a path that is no method (a typo, or an RPC since removed) grants
//     nothing and hides the mistake;
//   - a wildcard path other than "/<health or reflection service>/*"
//     grants RPCs nobody listed, including ones added later;
//   - a rule with no paths or no principals allows every path or every
//     caller (that is what grpc-go makes of an empty list);
//   - a principal outside the trust domain names nobody this deployment
//     can verify.
func (p *Policy) Check(methods []Method) []Problem {
	var out []Problem
	known := map[string]bool{}
	for _, m := range methods {
		known[m.Path] = true
	}
	listed := map[string]bool{}
	for _, r := range p.AllowRules {
		if len(r.Request.Paths) == 0 {
			out = append(out, Problem{Rule: r.Name, Path: "(no paths)", Reason: "a rule without paths allows every method"})
		}
		if len(r.Source.Principals) == 0 {
			out = append(out, Problem{Rule: r.Name, Path: "(no principals)", Reason: "a rule without principals allows every caller, even an unauthenticated one"})
		}
		for _, pr := range r.Source.Principals {
			if !strings.HasPrefix(pr, TrustDomainPrefix) {
				out = append(out, Problem{Rule: r.Name, Path: pr, Reason: "principal outside " + TrustDomainPrefix})
			}
		}
		for _, path := range r.Request.Paths {
			if strings.Contains(path, "*") {
				if !wildcardAllowed(path) {
					out = append(out, Problem{Rule: r.Name, Path: path, Reason: "wildcard path; only " + strings.Join(WildcardServices, ", ") + " may be granted as /<service>/*"})
				}
				continue
			}
			if !known[path] {
				out = append(out, Problem{Rule: r.Name, Path: path, Reason: "not a method of the API"})
				continue
			}
			listed[path] = true
		}
	}
	for _, r := range p.DenyRules {
		for _, path := range r.Request.Paths {
			if !strings.Contains(path, "*") && !known[path] {
				out = append(out, Problem{Rule: r.Name, Path: path, Reason: "deny rule names no method of the API"})
			}
		}
	}
	for _, m := range methods {
		if !listed[m.Path] {
			out = append(out, Problem{Path: m.Path, Reason: "no allow rule lists this method: nobody may call it"})
		}
	}
	return out
}

func wildcardAllowed(path string) bool {
	for _, s := range WildcardServices {
		if path == "/"+s+"/*" {
			return true
		}
	}
	return false
}

// Allows reports whether the policy lets principal (a SPIFFE ID) call the
// method path: some allow rule matches both, and no deny rule does. Matching
// is grpc-go's: "*" is any non-empty value, a trailing "*" a prefix, a
// leading "*" a suffix, anything else exact; an empty list matches all.
func (p *Policy) Allows(principal, path string) bool {
	for _, r := range p.DenyRules {
		if r.matches(principal, path) {
			return false
		}
	}
	for _, r := range p.AllowRules {
		if r.matches(principal, path) {
			return true
		}
	}
	return false
}

// Granted lists the methods of methods that principal may call.
func (p *Policy) Granted(principal string, methods []Method) []string {
	var out []string
	for _, m := range methods {
		if p.Allows(principal, m.Path) {
			out = append(out, m.Path)
		}
	}
	return out
}

func (r Rule) matches(principal, path string) bool {
	if len(r.Request.Headers) > 0 {
		// Headers are not modelled; no rule of ours uses them.
		return false
	}
	okPrincipal := len(r.Source.Principals) == 0 || slices.ContainsFunc(r.Source.Principals, func(pat string) bool { return match(pat, principal) })
	okPath := len(r.Request.Paths) == 0 || slices.ContainsFunc(r.Request.Paths, func(pat string) bool { return match(pat, path) })
	return okPrincipal && okPath
}

func match(pattern, value string) bool {
	switch {
	case pattern == "*":
		return value != ""
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(value, strings.TrimSuffix(pattern, "*"))
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(value, strings.TrimPrefix(pattern, "*"))
	default:
		return pattern == value
	}
}

// Without returns a copy of the policy's JSON with path removed from every
// allow rule (a rule granting nothing else goes too): what a test proving
// Check can fail feeds it.
func Without(raw []byte, path string) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	rules, _ := doc["allow_rules"].([]any)
	removed := false
	keptRules := rules[:0]
	for _, r := range rules {
		req, _ := r.(map[string]any)["request"].(map[string]any)
		paths, _ := req["paths"].([]any)
		kept := paths[:0]
		for _, p := range paths {
			if p == path {
				removed = true
				continue
			}
			kept = append(kept, p)
		}
		if req != nil {
			req["paths"] = kept
		}
		// A rule that granted only this method goes with it (a rule left
		// without paths would allow everything).
		if req != nil && len(kept) == 0 && len(paths) > 0 {
			continue
		}
		keptRules = append(keptRules, r)
	}
	doc["allow_rules"] = keptRules
	if !removed {
		return nil, fmt.Errorf("policy lists no %s", path)
	}
	return json.MarshalIndent(doc, "", "  ")
}

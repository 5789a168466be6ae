package main

import (
	"strings"
	"testing"
)

func TestSlug(t *testing.T) {
	for heading, want := range map[string]string{
		"Register before create":                                         "register-before-create",
		`"Gone" means the reference count reached zero: DELETING`:        "gone-means-the-reference-count-reached-zero-deleting",
		"Benchmarks (`make bench`)":                                      "benchmarks-make-bench",
		"Layer 4: integration tests over real processes":                 "layer-4-integration-tests-over-real-processes",
		"Read-only request: deleting P, D or a clone F":                  "read-only-request-deleting-p-d-or-a-clone-f",
		"What a replacement waits on, and for how long":                  "what-a-replacement-waits-on-and-for-how-long",
		"A rw request ended needs_operator":                              "a-rw-request-ended-needs_operator",
		"Volume purposes: data, stash, reference":                        "volume-purposes-data-stash-reference",
		"[storctl](services/storctl), the **operator** CLI":              "storctl-the-operator-cli",
		"ro-replacement-step-garbage-collect":                            "ro-replacement-step-garbage-collect",
		"How a replacement works (in brief)":                             "how-a-replacement-works-in-brief",
		"The `make run` demo":                                            "the-make-run-demo",
		"Ids, not addresses":                                             "ids-not-addresses",
		"Snapshot identity: the snapshot id is the snapshot volume's id": "snapshot-identity-the-snapshot-id-is-the-snapshot-volumes-id",
	} {
		if got := Slug(heading); got != want {
			t.Errorf("Slug(%q) = %q, want %q", heading, got, want)
		}
	}
}

func check(t *testing.T, files map[string]string) []string {
	t.Helper()
	in := map[string][]byte{}
	for k, v := range files {
		in[k] = []byte(v)
	}
	var out []string
	for _, p := range Check(in) {
		out = append(out, p.String())
	}
	return out
}

const doc = "# Doc\n\n## State machines\n\n## Step\n\n## Step\n\n```\n## Not a heading\n```\n"

func TestCleanTree(t *testing.T) {
	got := check(t, map[string]string{
		"docs/a.md": doc,
		"docs/README.md": "[a](a.md) [sm](a.md#state-machines) [dup](a.md#step-1) [self](#links)\n" +
			"[root](../README.md) [dir](../services) [web](https://example.com/x.md)\n## Links\n" +
			"```\n[not checked](docs/a.md)\n```\n`[code](docs/a.md)`\n",
		"README.md":            "see docs/a.md, or a.md for short\n",
		"services/x/x.go":      "// (docs/a.md, \"State\n// machines\") and docs/a.md#step\n",
		"services/x/README.md": "[up](../../docs/a.md#step)\n",
	})
	if len(got) != 0 {
		t.Fatalf("problems in a clean tree:\n%s", strings.Join(got, "\n"))
	}
}

// specWord is built from pieces, as outsideDir is, so that this file
// does not itself cite what the check refuses.
const specWord = "sp" + "ec"

func TestBadReferences(t *testing.T) {
	sec := "\u00a7"
	got := check(t, map[string]string{
		"docs/a.md": doc,
		"docs/README.md": "[gone](b.md)\n[anchor](a.md#no-such-heading)\n[out](../../elsewhere.md)\n" +
			"[ref]: missing/dir\n",
		"x.go":    "// (" + specWord + " " + sec + "A.3) and " + sec + "9.1\n// " + outsideDir + "/" + specWord + "/volumes.md\n",
		"y.proto": "// ARCHITECTURE.md says; docs/a.md#nope\n// (docs/a.md, \"No such\n// heading\")\n",
	})
	want := []string{
		"docs/README.md:1: link \"b.md\": docs/b.md is not in the repository",
		"docs/README.md:2: link \"a.md#no-such-heading\": docs/a.md has no heading with anchor #no-such-heading",
		"docs/README.md:3: link \"../../elsewhere.md\" leaves the repository",
		"docs/README.md:4: link \"missing/dir\": docs/missing/dir is not in the repository",
		"x.go:1: cites a numbered section of a document outside the repository",
		"x.go:2: " + outsideDir + "/" + specWord + "/volumes.md is not in the repository",
		"x.go:2: cites the " + outsideDir + " directory, which is outside the repository",
		"y.proto:1: ARCHITECTURE.md is not in the repository",
		"y.proto:1: link \"docs/a.md#nope\": docs/a.md has no heading with anchor #nope",
		"y.proto:2: docs/a.md has no heading \"No such heading\"",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

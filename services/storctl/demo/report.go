package demo

// What the demo prints once every request is terminal: the summary of the
// requests, and the commands to look further.

import (
	"fmt"
	"strings"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// maxListed bounds the requests listed by id: the demo keeps the volumes
// of earlier runs, so a later run's disk holds more of their rw regions.
const maxListed = 8

// summary prints the final requests, this run's snapshot's first.
func (d *run) summary() {
	d.printf("\n  %-10s every request is terminal %s after the expunge\n", "done", fmtDur(d.res.ExpungeToComplete))
	d.printf("  %-10s %d: %s\n", "requests", len(d.res.RequestIDs), statesLine(d.res.States))
	finished := ""
	if d.res.Steps.Done() == d.res.Steps.Total() {
		finished = ", every one switched"
	}
	d.printf("  %-10s %d, one per volume that referenced an expunged read-only target%s: %s\n", "steps",
		d.res.Steps.Total(), finished, stepsLine(d.res.Steps))
	d.printf("\n")
	for i, r := range d.res.Replacements {
		if i == maxListed && len(d.res.Replacements) > maxListed+1 {
			d.printf("    … and %d more (storctl replacements list)\n", len(d.res.Replacements)-i)
			break
		}
		line := fmt.Sprintf("    %s  %-16s %-9s", r.GetReplacementId(), kindName(r.GetKind()), stateName(r))
		if tid := d.res.TraceIDs[r.GetReplacementId()]; tid != "" {
			if d.o.JaegerURL != "" {
				line += "  " + d.o.JaegerURL + "/trace/" + tid
			} else {
				line += "  trace " + tid
			}
		}
		d.printf("%s\n", line)
	}
}

// hints prints what to run next to look at what happened.
func (d *run) hints() {
	s, g := d.o.StorctlPath, d.o.GrpcurlPath
	orch, vol := d.c.Orchestrator.Target(), d.c.Volume.Target()
	// The first listed is this run's snapshot's request (see finish).
	var ro *orchestratorv1.Replacement
	if len(d.res.Replacements) > 0 && !isRW(d.res.Replacements[0]) {
		ro = d.res.Replacements[0]
	}
	d.printf("\nExplore what happened:\n")
	// storctl's defaults are make run's fixed ports and operator
	// certificate; anything else is passed the way storctl reads it.
	var env []string
	for _, e := range []struct{ name, addr, def string }{
		{"STORAGECP_VOLUME_ADDR", vol, "127.0.0.1:7101"},
		{"STORAGECP_ALLOCATOR_ADDR", d.c.Allocator.Target(), "127.0.0.1:7102"},
		{"STORAGECP_NOTIFIER_ADDR", d.c.Notifier.Target(), "127.0.0.1:7103"},
		{"STORAGECP_ORCHESTRATOR_ADDR", orch, "127.0.0.1:7104"},
	} {
		if e.addr != e.def && e.addr != "localhost"+strings.TrimPrefix(e.def, "127.0.0.1") {
			env = append(env, e.name+"="+e.addr)
		}
	}
	tls := d.o.TLS
	switch {
	case tls.Insecure:
		s += " --insecure"
	case tls.Cert != "" && !tls.StorctlFinds:
		env = append(env, "STORCTL_CA="+tls.CA, "STORCTL_CERT="+tls.Cert, "STORCTL_KEY="+tls.Key)
	}
	if len(env) > 0 {
		d.printf("  export %s\n", strings.Join(env, " "))
	}
	g += " " + tls.grpcurlFlags()
	d.printf("  %s replacements list\n", s)
	if ro != nil {
		d.printf("  %s replacements show %s    # the read-only request and its steps\n", s, ro.GetReplacementId())
	}
	d.printf("  %s sagas list\n", s)
	if ro != nil && ro.GetNewRegionId() != "" {
		d.printf("  %s volumes refs %s    # the new read-only region: the snapshot and every clone\n", s, ro.GetNewRegionId())
	}
	d.printf("  %s disks list\n", s)
	d.printf("  %s validate\n", s)
	if ro != nil {
		d.printf("  %s -d '{\"replacement_id\":\"%s\"}' %s storage.orchestrator.v1.ReplacementService/GetReplacement\n",
			g, ro.GetReplacementId(), orch)
	}
	d.printf("  %s -d '{}' %s storage.orchestrator.v1.AdminService/ListSagas\n", g, orch)
	if ro != nil && ro.GetNewRegionId() != "" {
		d.printf("  %s -d '{\"target_id\":\"%s\"}' %s storage.volume.v1.VolumeService/FindVolumesReferencingTarget\n",
			g, ro.GetNewRegionId(), vol)
	}
	if d.o.JaegerURL != "" && ro != nil {
		if tid := d.res.TraceIDs[ro.GetReplacementId()]; tid != "" {
			d.printf("\nThe read-only replacement as one trace: %s/trace/%s\n", d.o.JaegerURL, tid)
		}
	}
}

// grpcurlFlags are grpcurl's connection flags for these credentials.
func (t HintTLS) grpcurlFlags() string {
	switch {
	case t.Insecure:
		return "-plaintext"
	case t.Cert == "":
		return "-cacert BUNDLE.pem -cert SVID.pem -key SVID.key"
	}
	return "-cacert " + t.CA + " -cert " + t.Cert + " -key " + t.Key
}

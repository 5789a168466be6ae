package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/storctl/internal/redact"
)

const (
	prefixTargetKind  = "TARGET_KIND_"
	prefixTargetState = "TARGET_STATE_"
)

func (e *env) volumes() (volumev1.VolumeServiceClient, error) {
	c, err := e.conn(svcVolume)
	if err != nil {
		return nil, err
	}
	return volumev1.NewVolumeServiceClient(c), nil
}

// redactVCR returns a copy of vcr without key material (package redact,
// which the console shares, says why storctl redacts again).
func redactVCR(vcr *commonv1.VolumeConstructionRequest) *commonv1.VolumeConstructionRequest {
	return redact.VCR(vcr)
}

func volumeCommands() []command {
	return []command{{
		path: "volumes show", args: "ID", summary: "a volume: its targets and its VCR tree (key material redacted)",
		min: 1, max: 1,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, args []string) error {
				c, err := e.volumes()
				if err != nil {
					return err
				}
				resp, err := c.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: args[0], IncludeReferenceCounts: true, IncludeRedundancy: true})
				noRedundancy := ""
				if code := status.Code(err); code == codes.FailedPrecondition || code == codes.Unavailable || code == codes.Unimplemented {
					// The volume without its redundancy beats nothing.
					noRedundancy = status.Convert(err).Message()
					resp, err = c.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: args[0], IncludeReferenceCounts: true})
				}
				if err != nil {
					return e.wrap(svcVolume, err)
				}
				resp.Volume.Vcr = redactVCR(resp.Volume.Vcr)
				if e.json() {
					return e.printJSON(resp)
				}
				if err := renderVolume(e.stdout, resp.Volume); err != nil {
					return err
				}
				if resp.Redundancy == nil {
					_, err := fmt.Fprintf(e.stdout, "\nRedundancy: unknown (%s)\n", noRedundancy)
					return err
				}
				return renderRedundancy(e.stdout, resp.Redundancy)
			}
		},
	}, {
		path: "volumes refs", args: "TARGET", summary: "a target and the volumes that reference it (index lookup)",
		min: 1, max: 1,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			deleted := fs.Bool("include-deleted", false, "also list soft-deleted volumes")
			return func(ctx context.Context, e *env, args []string) error {
				c, err := e.volumes()
				if err != nil {
					return err
				}
				tg, err := c.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: args[0], IncludeReferenceCount: true})
				if err != nil {
					return e.wrap(svcVolume, err)
				}
				req := &volumev1.FindVolumesReferencingTargetRequest{TargetId: args[0], IncludeDeleted: *deleted, PageSize: 1000}
				all := &volumev1.FindVolumesReferencingTargetResponse{}
				if err := allPages(func(token string) (*volumev1.FindVolumesReferencingTargetResponse, error) {
					req.PageToken = token
					return c.FindVolumesReferencingTarget(ctx, req)
				}, func(resp *volumev1.FindVolumesReferencingTargetResponse) {
					all.Volumes = append(all.Volumes, resp.Volumes...)
				}); err != nil {
					return e.wrap(svcVolume, err)
				}
				if e.json() {
					return e.printJSON(all)
				}
				t := tg.Target
				if err := renderFields(e.stdout, [][2]string{
					{"target", t.TargetId}, {"kind", enum(t.Kind, prefixTargetKind)}, {"state", enum(t.State, prefixTargetState)},
					{"address", orDash(t.Address)}, {"references", fmt.Sprint(t.ReferenceCount)},
				}); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "\nVolumes (%d):\n", len(all.Volumes))
				var rows [][]string
				for _, v := range all.Volumes {
					rows = append(rows, []string{v.VolumeId, yesNo(v.SoftDeleted)})
				}
				return renderTable(e.stdout, []string{"VOLUME", "SOFT_DELETED"}, rows)
			}
		},
	}, {
		path: "volumes invariants", summary: "the volume-service's reference-count invariants (exit 3 on violations)",
		max: 0,
		setup: func(*flag.FlagSet) func(context.Context, *env, []string) error {
			return func(ctx context.Context, e *env, _ []string) error {
				c, err := e.volumes()
				if err != nil {
					return err
				}
				resp, err := c.CheckInvariants(ctx, &volumev1.CheckInvariantsRequest{})
				if err != nil {
					return e.wrap(svcVolume, err)
				}
				return e.violations(resp, resp.Violations)
			}
		},
	}}
}

func renderVolume(w io.Writer, v *volumev1.Volume) error {
	deleted := "no"
	if v.TimeDeleted != nil {
		deleted = ts(v.TimeDeleted)
	}
	if err := renderFields(w, [][2]string{{"id", v.VolumeId}, {"created", ts(v.TimeCreated)}, {"deleted", deleted}}); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nTargets (%d):\n", len(v.Targets))
	var rows [][]string
	for _, t := range v.Targets {
		refs := ""
		if t.Kind != commonv1.TargetKind_TARGET_KIND_RW_REGION {
			refs = fmt.Sprint(t.ReferenceCount)
		}
		rows = append(rows, []string{t.TargetId, enum(t.Kind, prefixTargetKind), enum(t.State, prefixTargetState), t.Address, t.DatasetId, refs})
	}
	if err := renderTable(w, []string{"TARGET", "KIND", "STATE", "ADDRESS", "DATASET", "REFS"}, rows); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nVCR (key material redacted):")
	var b strings.Builder
	writeVCR(&b, v.Vcr, "  ")
	_, err := io.WriteString(w, b.String())
	return err
}

// writeVCR renders the construction tree, one node a line. It prints only
// structure, never CrucibleOpts secrets.
func writeVCR(b *strings.Builder, v *commonv1.VolumeConstructionRequest, indent string) {
	switch k := v.GetKind().(type) {
	case *commonv1.VolumeConstructionRequest_Volume:
		fmt.Fprintf(b, "%svolume %s block_size=%d\n", indent, k.Volume.Id, k.Volume.BlockSize)
		for _, sv := range k.Volume.SubVolumes {
			writeVCR(b, sv, indent+"  ")
		}
		if k.Volume.ReadOnlyParent != nil {
			fmt.Fprintf(b, "%s  read-only parent:\n", indent)
			writeVCR(b, k.Volume.ReadOnlyParent, indent+"    ")
		}
	case *commonv1.VolumeConstructionRequest_Region:
		r := k.Region
		mode := "rw"
		if r.GetOpts().GetReadOnly() {
			mode = "read-only"
		}
		fmt.Fprintf(b, "%sregion set (%s) gen=%d blocks=%d×%d×%d\n", indent, mode, r.Gen, r.BlockSize, r.BlocksPerExtent, r.ExtentCount)
		for _, t := range r.GetOpts().GetTarget() {
			fmt.Fprintf(b, "%s  %s\n", indent, t)
		}
	case *commonv1.VolumeConstructionRequest_File:
		fmt.Fprintf(b, "%sfile %s %s\n", indent, k.File.Id, k.File.Path)
	case *commonv1.VolumeConstructionRequest_Url:
		fmt.Fprintf(b, "%surl %s %s\n", indent, k.Url.Id, k.Url.Url)
	case nil:
		fmt.Fprintf(b, "%s(none)\n", indent)
	}
}

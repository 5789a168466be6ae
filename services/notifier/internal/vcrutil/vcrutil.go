// Package vcrutil reads the proto VCRs the notifier and the sim-upstairs
// hold through platform/vcr, the one home of VCR traversal: each function
// converts the message (vcr.FromProto) and calls its namesake there.
package vcrutil

import (
	"fmt"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	"storagecp.dev/platform/vcr"
)

// Types and errors of platform/vcr, under the names callers use.
type (
	Target       = vcr.TargetRef
	RegionSet    = vcr.RegionSet
	TargetChange = vcr.TargetChange
)

var (
	ErrShape    = vcr.ErrShape
	ErrMismatch = vcr.ErrMismatch
)

// from converts a message; nil if it has an empty node (Validate refuses
// those, so an activation never holds one).
func from(p *commonv1.VolumeConstructionRequest) *vcr.VCR {
	v, err := vcr.FromProto(p)
	if err != nil {
		return nil
	}
	return v
}

// Generation is vcr.Generation.
func Generation(p *commonv1.VolumeConstructionRequest) uint64 { return vcr.Generation(from(p)) }

// Targets is vcr.AllTargets: every target of the whole tree, breadth first,
// duplicates kept.
func Targets(p *commonv1.VolumeConstructionRequest) []Target { return vcr.AllTargets(from(p)) }

// RegionSets is vcr.RegionSets.
func RegionSets(p *commonv1.VolumeConstructionRequest) []RegionSet { return vcr.RegionSets(from(p)) }

// Validate is vcr.CheckShape.
func Validate(p *commonv1.VolumeConstructionRequest) error {
	v, err := vcr.FromProto(p)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrShape, err)
	}
	return vcr.CheckShape(v)
}

// Diff is vcr.Diff.
func Diff(cur, next *commonv1.VolumeConstructionRequest) ([]TargetChange, error) {
	a, err := vcr.FromProto(cur)
	if err != nil {
		return nil, fmt.Errorf("%w: current: %v", ErrMismatch, err)
	}
	b, err := vcr.FromProto(next)
	if err != nil {
		return nil, fmt.Errorf("%w: next: %v", ErrMismatch, err)
	}
	return vcr.Diff(a, b)
}

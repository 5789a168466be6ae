package store

// Checkout: bumping the generation of a volume's direct regions and handing
// out the VCR as it was before. CreateVolume's snapshot and read-only-parent
// copies check out inside their own transaction (checkoutInTx).

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/vcr"
)

// CheckoutReason is why a volume is checked out.
type CheckoutReason int

// Checkout reasons.
const (
	ReasonReadOnlyCopy CheckoutReason = iota + 1
	ReasonCopyAndModify
	ReasonConstruct
)

// Checkout bumps the generation of every direct Region sub-volume and
// returns the VCR as it was before, optionally with fresh ids (refused
// without bumping anything when any region is rw). Soft-deleted volumes are
// not refused.
func (s *Store) Checkout(ctx context.Context, id uuid.UUID, reason CheckoutReason, randomize bool) (*vcr.VCR, error) {
	if reason < ReasonReadOnlyCopy || reason > ReasonConstruct {
		return nil, invalidArgument("reason: required")
	}
	var out *vcr.VCR
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		v, ok, err := loadVolume(ctx, tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return notFound("volume %s not found", id)
		}
		if randomize {
			if _, err := vcr.RandomizeIDs(v.VCR); err != nil {
				return failedPrecondition("volume %s: cannot copy with fresh ids: %v", id, err)
			}
		}
		out, err = checkoutInTx(ctx, tx, id, reason)
		if err != nil {
			return err
		}
		if randomize {
			out, err = vcr.RandomizeIDs(out)
			if err != nil {
				return failedPrecondition("volume %s: cannot copy with fresh ids: %v", id, err)
			}
		}
		return nil
	})
	return out, err
}

// checkoutInTx admits the checkout, bumps and returns the pre-bump VCR.
func checkoutInTx(ctx context.Context, tx pgx.Tx, id uuid.UUID, reason CheckoutReason) (*vcr.VCR, error) {
	v, ok, err := loadVolume(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound("volume %s not found", id)
	}
	if reason == ReasonReadOnlyCopy {
		ro, err := vcr.IsReadOnly(v.VCR)
		if err != nil {
			return nil, internal("volume %s: invalid volume for a read-only copy: %v", id, err)
		}
		if !ro {
			return nil, failedPrecondition("volume %s has rw regions; a read-only copy is refused", id)
		}
	}
	bumped := v.VCR.Clone()
	changed, err := vcr.BumpDirectRegionGens(bumped)
	if err != nil {
		return nil, internal("volume %s: invalid volume: %v", id, err)
	}
	if changed {
		if err := writeVCR(ctx, tx, id, bumped, false); err != nil {
			return nil, err
		}
	}
	return v.VCR, nil
}

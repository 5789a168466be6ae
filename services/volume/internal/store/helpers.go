package store

// Helpers the other files of this package share: canonical target
// addresses (and shortening them for messages), and recomputing a volume's
// index rows after a VCR rewrite (RemoveReadOnlyParent, ReplaceRegion).

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/vcr"
)

func short(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

func canonicalAll(in []string) ([]string, error) {
	out := make([]string, len(in))
	for i, a := range in {
		c, err := vcr.Canonical(a)
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", short(a), err)
		}
		out[i] = c
	}
	return out, nil
}

// reindex recomputes a live volume's index rows from its VCR.
func reindex(ctx context.Context, tx pgx.Tx, volumeID uuid.UUID, v *vcr.VCR) error {
	index, _, err := resolveVCR(ctx, tx, volumeID, v)
	if err != nil {
		return err
	}
	return writeIndex(ctx, tx, volumeID, index)
}

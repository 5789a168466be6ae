package demo

import (
	"context"
	"crypto/sha1"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// GiB is a gibibyte.
const GiB = 1 << 30

// maxSlots bounds the sled and disk slots SeedRack tries, so a rack whose
// every demo slot was expunged fails instead of growing without end.
const maxSlots = 256

// SeedOptions shape the demo rack.
type SeedOptions struct {
	// Sleds in service wanted; default 4 (a rw replacement needs a sled
	// beyond the three of a region set).
	Sleds int
	// In-service disks wanted on each of those sleds; default 2.
	DisksPerSled int
	// Capacity of each added disk; default 200 GiB.
	DiskCapacityBytes int64
	// Out, if set, gets one line saying what was added or reused.
	Out io.Writer
}

func (o SeedOptions) withDefaults() SeedOptions {
	if o.Sleds <= 0 {
		o.Sleds = 4
	}
	if o.DisksPerSled <= 0 {
		o.DisksPerSled = 2
	}
	if o.DiskCapacityBytes <= 0 {
		o.DiskCapacityBytes = 200 * GiB
	}
	return o
}

// seedReport says what SeedRack found and did.
type seedReport struct {
	Sleds, Disks           int // in service in the demo slots, after seeding
	SledsAdded, DisksAdded int
	// SledSerial maps a demo sled id to its serial, for printing.
	SledSerial map[string]string
}

func (r seedReport) String() string {
	switch {
	case r.DisksAdded == 0:
		return fmt.Sprintf("%d sleds × %d disks in service (reused)", r.Sleds, r.Disks/max(r.Sleds, 1))
	case r.DisksAdded == r.Disks:
		return fmt.Sprintf("%d sleds × %d disks in service (seeded)", r.Sleds, r.Disks/max(r.Sleds, 1))
	default:
		return fmt.Sprintf("%d sleds × %d disks in service (reused; added %d disk(s) in place of expunged ones)",
			r.Sleds, r.Disks/max(r.Sleds, 1), r.DisksAdded)
	}
}

// SeedRack makes sure the demo rack exists: at least Sleds in-service
// sleds, each with at least DisksPerSled in-service disks. It is
// idempotent and self-healing: sleds and disks have name-derived ids
// ("storagecp-demo/sled-<s>/disk-<d>"), so a second call adds nothing, and
// a disk expunged by an earlier demo is made up for by the next free disk
// slot of its sled — every run of the demo expunges one disk, and the next
// still needs four sleds with room for a replacement region.
func SeedRack(ctx context.Context, c Clients, o SeedOptions) error {
	a, err := c.api()
	if err != nil {
		return err
	}
	rep, err := seedRack(ctx, a, o)
	if err != nil {
		return err
	}
	if o.Out != nil {
		fmt.Fprintf(o.Out, "rack: %s\n", rep)
	}
	return nil
}

func seedRack(ctx context.Context, a api, o SeedOptions) (seedReport, error) {
	o = o.withDefaults()
	rep := seedReport{SledSerial: map[string]string{}}
	for s := 0; rep.Sleds < o.Sleds; s++ {
		if s >= maxSlots {
			return rep, fmt.Errorf("seed rack: only %d of %d demo sleds are in service after %d slots", rep.Sleds, o.Sleds, maxSlots)
		}
		serial := fmt.Sprintf("demo-sled-%d", s)
		sledResp, err := a.alloc.AddSled(ctx, &allocatorv1.AddSledRequest{SledId: nameID(serial), Serial: serial})
		if status.Code(err) == codes.AlreadyExists {
			// Another sled (not a demo one) has this serial: sleds are
			// unique by serial, so try the next slot.
			continue
		}
		if err != nil {
			return rep, fmt.Errorf("seed rack: add sled %s: %w", serial, err)
		}
		sled := sledResp.GetSled()
		if sled.GetPolicy() == allocatorv1.Policy_POLICY_EXPUNGED {
			continue
		}
		rep.SledSerial[sled.GetSledId()] = serial
		disks, err := listDisks(ctx, a, sled.GetSledId())
		if err != nil {
			return rep, fmt.Errorf("seed rack: %w", err)
		}
		known := map[string]bool{}
		healthy := 0
		for _, d := range disks {
			known[d.GetDiskId()] = true
			if d.GetPolicy() == allocatorv1.Policy_POLICY_IN_SERVICE {
				healthy++
			}
		}
		if len(disks) == 0 {
			rep.SledsAdded++
		}
		for d := 0; healthy < o.DisksPerSled; d++ {
			if d >= maxSlots {
				return rep, fmt.Errorf("seed rack: sled %s has no free disk slot", serial)
			}
			id := nameID(fmt.Sprintf("%s/disk-%d", serial, d))
			if known[id] {
				continue
			}
			_, err := a.alloc.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
				SledId: sled.GetSledId(), DiskId: id, CapacityBytes: o.DiskCapacityBytes,
				DatasetAddress: fmt.Sprintf("fd00:1122:3344:%x::%x", 0x200+s, d+1),
			})
			if status.Code(err) == codes.AlreadyExists {
				// Another disk (not a demo one) has this dataset address:
				// try the next slot.
				continue
			}
			if err != nil {
				return rep, fmt.Errorf("seed rack: add disk %d to sled %s: %w", d, serial, err)
			}
			healthy++
			rep.DisksAdded++
		}
		rep.Sleds++
		rep.Disks += healthy
	}
	return rep, nil
}

// listDisks lists every physical disk, or those of one sled.
func listDisks(ctx context.Context, a api, sledID string) ([]*allocatorv1.PhysicalDisk, error) {
	var out []*allocatorv1.PhysicalDisk
	token := ""
	for {
		resp, err := a.alloc.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000, PageToken: token, SledId: sledID})
		if err != nil {
			return nil, fmt.Errorf("list physical disks: %w", err)
		}
		out = append(out, resp.GetDisks()...)
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// demoNamespace is the namespace of the demo's name-based ids (the bytes
// of a fixed random UUID).
const demoNamespace = "\x6b\x1e\x2d\x0c\x93\x5a\x4f\x21\xa7\x3e\x52\x11\xc4\x08\x9d\x77"

// nameID is the RFC 9562 version-5 UUID of name in the demo namespace: the
// same name gives the same sled or disk id on every run.
func nameID(name string) string {
	h := sha1.New()
	h.Write([]byte(demoNamespace))
	h.Write([]byte("storagecp-demo/" + name))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

-- Volumes, the target registry, the reference-count ledger and the
-- volume→target index (docs/architecture.md, "Four services and what each
-- owns"). They change together, in one SERIALIZABLE transaction per
-- operation.

-- A volume: its VCR (the JSON of services/volume/internal/vcr) and, once
-- soft-deleted, what its soft delete freed (CrucibleResources, V3 only).
CREATE TABLE volume (
	id                    uuid PRIMARY KEY,
	time_created          timestamptz NOT NULL DEFAULT now(),
	time_deleted          timestamptz,
	data                  jsonb NOT NULL,
	resources_to_clean_up jsonb
);
CREATE INDEX volume_time_deleted ON volume (time_deleted);

-- The registry: every downstairs target a volume may name. A region's target
-- id is its region id; a region snapshot's is ids.RegionSnapshotTargetID.
CREATE TABLE target (
	target_id       uuid PRIMARY KEY,
	kind            text NOT NULL CHECK (kind IN ('RW_REGION', 'RO_REGION', 'REGION_SNAPSHOT')),
	state           text NOT NULL CHECK (state IN ('PENDING', 'ACTIVE', 'DELETING')),
	region_id       uuid NOT NULL,
	dataset_id      uuid,
	-- canonical "[ipv6]:port"; NULL exactly while PENDING.
	address         text,
	snapshot_id     uuid,
	-- RW: owning volume (swapped by ReplaceRegion). RO region: allocated for.
	owner_volume_id uuid,
	time_created    timestamptz NOT NULL DEFAULT now(),
	CHECK ((state = 'PENDING') = (address IS NULL)),
	CHECK ((kind = 'REGION_SNAPSHOT') = (snapshot_id IS NOT NULL)),
	CHECK (kind <> 'RW_REGION' OR owner_volume_id IS NOT NULL),
	-- DELETING means "count reached zero", which only read-only targets have.
	CHECK (kind <> 'RW_REGION' OR state <> 'DELETING')
);
-- Agents reuse ports: at most one non-deleting target per address.
CREATE UNIQUE INDEX target_address_live ON target (address) WHERE state <> 'DELETING';
-- "Does this region have snapshots?" — read by soft delete and written by
-- RegisterTargets, so the two conflict under SERIALIZABLE.
CREATE INDEX target_region_id ON target (region_id);
CREATE INDEX target_owner_volume_id ON target (owner_volume_id);

-- The ledger: one row per read-only reference a live volume's VCR makes.
-- A target's reference count is the number of rows naming it.
CREATE TABLE volume_resource_usage (
	usage_id  uuid PRIMARY KEY,
	volume_id uuid NOT NULL,
	target_id uuid NOT NULL
);
CREATE INDEX volume_resource_usage_target_id ON volume_resource_usage (target_id);
CREATE INDEX volume_resource_usage_volume_id ON volume_resource_usage (volume_id);

-- The index: which volume's VCR names which target (rw and read-only),
-- soft-deleted volumes included. Written with every VCR write.
CREATE TABLE volume_target (
	volume_id uuid NOT NULL,
	target_id uuid NOT NULL,
	read_only bool NOT NULL,
	PRIMARY KEY (volume_id, target_id)
);
CREATE INDEX volume_target_target_id ON volume_target (target_id, volume_id);

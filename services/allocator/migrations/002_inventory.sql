-- Inventory and placement (docs/architecture.md, "Four services and what
-- each owns"): sled → physical disk → zpool → Crucible dataset → region /
-- region snapshot.

CREATE TABLE sled (
	id           uuid PRIMARY KEY,
	serial       text NOT NULL DEFAULT '',
	policy       text NOT NULL DEFAULT 'in_service' CHECK (policy IN ('in_service', 'expunged')),
	state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'decommissioned')),
	time_created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE physical_disk (
	id           uuid PRIMARY KEY,
	sled_id      uuid NOT NULL REFERENCES sled (id),
	policy       text NOT NULL DEFAULT 'in_service' CHECK (policy IN ('in_service', 'expunged')),
	state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'decommissioned')),
	time_created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX physical_disk_sled ON physical_disk (sled_id);

-- Exactly one zpool per disk and one Crucible dataset per zpool.
CREATE TABLE zpool (
	id               uuid PRIMARY KEY,
	physical_disk_id uuid NOT NULL UNIQUE REFERENCES physical_disk (id),
	sled_id          uuid NOT NULL REFERENCES sled (id),
	time_deleted     timestamptz
);

CREATE TABLE crucible_dataset (
	id           uuid PRIMARY KEY,
	zpool_id     uuid NOT NULL UNIQUE REFERENCES zpool (id),
	-- The agent's address; a region is served at [ip]:port. Unique so that an
	-- address names at most one agent.
	ip           inet NOT NULL UNIQUE CHECK (family(ip) = 6),
	capacity     bigint NOT NULL CHECK (capacity > 0),
	-- Upper bound owned by the control plane: the sum of the reservations
	-- of the dataset's regions. The CHECK is defence in depth: even a
	-- concurrency bug in allocation cannot commit an over-committed dataset.
	size_used    bigint NOT NULL DEFAULT 0 CHECK (size_used >= 0 AND size_used <= capacity),
	no_provision boolean NOT NULL DEFAULT false,
	-- Ports the simulated agent hands out.
	port_min     int NOT NULL DEFAULT 19000,
	port_max     int NOT NULL DEFAULT 19999,
	time_deleted timestamptz,
	CHECK (0 < port_min AND port_min <= port_max AND port_max < 65536)
);

CREATE TABLE region (
	id                  uuid PRIMARY KEY,
	dataset_id          uuid NOT NULL REFERENCES crucible_dataset (id),
	-- The volume the region was allocated for; never changes (ownership
	-- of rw regions lives in the volume-service's registry).
	allocated_for       uuid NOT NULL,
	block_size          bigint NOT NULL CHECK (block_size IN (512, 4096)),
	blocks_per_extent   bigint NOT NULL CHECK (blocks_per_extent > 0),
	extent_count        bigint NOT NULL CHECK (extent_count >= 0),
	read_only           boolean NOT NULL,
	-- The agent reserves this much extra; "25" is the only value today.
	reservation_percent int NOT NULL DEFAULT 25 CHECK (reservation_percent = 25),
	reserved_bytes      bigint GENERATED ALWAYS AS (
		block_size * blocks_per_extent * extent_count
		+ block_size * blocks_per_extent * extent_count * reservation_percent / 100) STORED,
	-- NULL until ensured on the agent.
	port                int CHECK (port > 0 AND port < 65536),
	time_created        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX region_allocated_for ON region (allocated_for);
CREATE INDEX region_dataset ON region (dataset_id);

CREATE FUNCTION region_allocated_for_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.allocated_for <> OLD.allocated_for OR NEW.dataset_id <> OLD.dataset_id THEN
		RAISE EXCEPTION 'region % : allocated_for and dataset_id are immutable', OLD.id;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER region_immutable BEFORE UPDATE ON region
	FOR EACH ROW EXECUTE FUNCTION region_allocated_for_immutable();

-- The FK to region makes deleting a region that still has snapshots
-- impossible (ZFS could not destroy it either).
CREATE TABLE region_snapshot (
	dataset_id   uuid NOT NULL REFERENCES crucible_dataset (id),
	region_id    uuid NOT NULL REFERENCES region (id),
	snapshot_id  uuid NOT NULL,
	-- "[ipv6]:port" of the running snapshot.
	address      text NOT NULL,
	time_created timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (region_id, snapshot_id)
);
CREATE INDEX region_snapshot_snapshot ON region_snapshot (snapshot_id);
CREATE INDEX region_snapshot_dataset ON region_snapshot (dataset_id);

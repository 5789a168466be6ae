-- State of the simulated Crucible agents. Kept in the database (not in
-- memory) so that it survives an allocator restart and is shared by every
-- allocator process on the database, like a real agent would be.

CREATE TABLE agent_region (
	dataset_id   uuid NOT NULL REFERENCES crucible_dataset (id),
	region_id    uuid NOT NULL,
	port         int NOT NULL,
	state        text NOT NULL CHECK (state IN ('created', 'destroyed')),
	clone_source text NOT NULL DEFAULT '',
	PRIMARY KEY (dataset_id, region_id)
);

-- A ZFS snapshot of a region and its optional running snapshot (a
-- read-only downstairs on its own port).
CREATE TABLE agent_snapshot (
	dataset_id    uuid NOT NULL REFERENCES crucible_dataset (id),
	region_id     uuid NOT NULL,
	snapshot_id   uuid NOT NULL,
	state         text NOT NULL CHECK (state IN ('created', 'destroyed')),
	running_port  int,
	running_state text CHECK (running_state IN ('created', 'destroyed')),
	PRIMARY KEY (dataset_id, region_id, snapshot_id)
);

-- Ports in use on an agent right now. A row is removed when what listens
-- there is destroyed, so ports are reused afterwards (as real agents do).
CREATE TABLE agent_port (
	dataset_id  uuid NOT NULL REFERENCES crucible_dataset (id),
	port        int NOT NULL,
	region_id   uuid NOT NULL,
	-- NULL for a region, the snapshot id for a running snapshot.
	snapshot_id uuid,
	PRIMARY KEY (dataset_id, port)
);

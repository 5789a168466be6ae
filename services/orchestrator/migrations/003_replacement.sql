-- Volume repair locks and replacement records (docs/replacement.md, "Records
-- and the state lock"; docs/architecture.md, "One repair per volume: the
-- repair lock"). A lock is always taken in the same transaction that
-- creates the record holding it (repair_id = that record's id) and released
-- in the same transaction as the record's terminal transition.

CREATE TABLE volume_repair (
	-- At most one holder per volume. The volume need not exist (yet, or any
	-- more): the lock serialises allocation on that volume id.
	volume_id     uuid PRIMARY KEY,
	repair_id     uuid NOT NULL,
	holder_kind   text NOT NULL CHECK (holder_kind IN
		('region_snapshot_replacement', 'step', 'region_replacement', 'snapshot_create', 'other')),
	time_acquired timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX volume_repair_by_repair ON volume_repair (repair_id);

-- Read-only target replacement requests (region snapshots and read-only
-- regions). Keyed by the target being replaced: at most one request per
-- target over its lifetime.
CREATE TABLE ro_replacement (
	id                     uuid PRIMARY KEY,
	request_time           timestamptz NOT NULL DEFAULT now(),
	time_modified          timestamptz NOT NULL DEFAULT now(),
	kind                   text NOT NULL CHECK (kind IN ('region_snapshot', 'read_only_region')),
	old_target_id          uuid NOT NULL UNIQUE,
	old_region_id          uuid NOT NULL,
	old_dataset_id         uuid,
	-- The snapshot (= snapshot volume id). Set for both kinds: a read-only
	-- region is allocated for the snapshot volume.
	old_snapshot_id        uuid NOT NULL,
	-- The volume whose repair lock this request holds (the snapshot volume).
	lock_volume_id         uuid NOT NULL,
	state                  text NOT NULL CHECK (state IN ('requested', 'allocating', 'replacement_done',
		'deleting_old_volume', 'running', 'completing', 'complete', 'data_lost')),
	operating_saga_id      uuid,
	new_region_id          uuid,
	new_region_volume_id   uuid,
	old_snapshot_volume_id uuid,
	-- W3C traceparent of the span that created the request.
	traceparent            text NOT NULL DEFAULT '',
	data_lost_reason       text,
	CONSTRAINT ro_replacement_snapshot_fields CHECK (kind <> 'region_snapshot' OR old_dataset_id IS NOT NULL),
	-- Intermediate states always carry the saga that owns them; rest states never do.
	CONSTRAINT ro_replacement_state_lock CHECK (
		(state IN ('allocating', 'deleting_old_volume', 'completing')) = (operating_saga_id IS NOT NULL))
);
CREATE INDEX ro_replacement_by_state ON ro_replacement (state);

CREATE TABLE ro_replacement_step (
	id                     uuid PRIMARY KEY,
	request_id             uuid NOT NULL REFERENCES ro_replacement (id),
	request_time           timestamptz NOT NULL DEFAULT now(),
	time_modified          timestamptz NOT NULL DEFAULT now(),
	volume_id              uuid NOT NULL,
	-- The step's stash volume, set at Complete.
	old_snapshot_volume_id uuid,
	state                  text NOT NULL CHECK (state IN ('requested', 'running', 'complete', 'collecting', 'volume_deleted')),
	operating_saga_id      uuid,
	CONSTRAINT ro_replacement_step_state_lock CHECK (
		(state IN ('running', 'collecting')) = (operating_saga_id IS NOT NULL))
);
CREATE INDEX ro_replacement_step_by_request ON ro_replacement_step (request_id, state);
CREATE INDEX ro_replacement_step_by_state ON ro_replacement_step (state);
CREATE INDEX ro_replacement_step_by_volume ON ro_replacement_step (volume_id);
CREATE INDEX ro_replacement_step_by_stash ON ro_replacement_step (old_snapshot_volume_id);

-- Read/write region replacement requests, one per rw region.
CREATE TABLE rw_replacement (
	id                   uuid PRIMARY KEY,
	request_time         timestamptz NOT NULL DEFAULT now(),
	time_modified        timestamptz NOT NULL DEFAULT now(),
	old_region_id        uuid NOT NULL UNIQUE,
	-- The volume that owns the region; its repair lock is held.
	volume_id            uuid NOT NULL,
	state                text NOT NULL CHECK (state IN ('requested', 'allocating', 'running', 'driving',
		'replacement_done', 'completing', 'complete')),
	operating_saga_id    uuid,
	new_region_id        uuid,
	-- The stash volume that owns the old region after the swap.
	old_region_volume_id uuid,
	traceparent          text NOT NULL DEFAULT '',
	CONSTRAINT rw_replacement_state_lock CHECK (
		(state IN ('allocating', 'driving', 'completing')) = (operating_saga_id IS NOT NULL))
);
CREATE INDEX rw_replacement_by_state ON rw_replacement (state);

-- Each attempt at driving a rw replacement (a Propolis-like live repair or a
-- Pantry-like reconciliation).
CREATE TABLE rw_replacement_drive_step (
	id            uuid PRIMARY KEY,
	request_id    uuid NOT NULL REFERENCES rw_replacement (id),
	time          timestamptz NOT NULL DEFAULT now(),
	step_type     text NOT NULL CHECK (step_type IN ('propolis', 'pantry')),
	attachment_id uuid,
	incarnation   bigint,
	endpoint      text NOT NULL DEFAULT ''
);
CREATE INDEX rw_replacement_drive_step_by_request ON rw_replacement_drive_step (request_id, time);

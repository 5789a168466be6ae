-- Why a volume exists. Replacement sagas make stash volumes (holding the
-- reference a swap took from another volume) and reference volumes (keeping
-- a new target alive for a request's life) beside the disks, snapshots and
-- images users make. A stash names the old target from the moment it is
-- created, so a step scan that cannot tell it from a user's volume gives it a
-- step of its own: the purpose is recorded where the volume is created, and
-- the step scan never steps anything but data volumes.
ALTER TABLE volume ADD COLUMN purpose text NOT NULL DEFAULT 'data'
	CHECK (purpose IN ('data', 'stash', 'reference'));

-- What operators need to see of a request or step that is not moving, and
-- the ways a request ends other than Complete.

-- Attempts: sagas that worked on the record and unwound (or were
-- abandoned), with the last one's error. A task retries an unwound record
-- after a backoff that grows with its attempts.
ALTER TABLE ro_replacement ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE ro_replacement ADD COLUMN last_error text NOT NULL DEFAULT '';
ALTER TABLE ro_replacement ADD COLUMN last_error_time timestamptz;
ALTER TABLE ro_replacement_step ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE ro_replacement_step ADD COLUMN last_error text NOT NULL DEFAULT '';
ALTER TABLE ro_replacement_step ADD COLUMN last_error_time timestamptz;
ALTER TABLE rw_replacement ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE rw_replacement ADD COLUMN last_error text NOT NULL DEFAULT '';
ALTER TABLE rw_replacement ADD COLUMN last_error_time timestamptz;

-- Ends other than Complete carry their reason: a read-only request ends
-- DataLost (no copy survives) or Cancelled (by an operator, before any
-- copy was made); a rw request ends DataLost (no copy to repair from),
-- NeedsOperator (the repair never finished within its bounds) or
-- Cancelled. give_up is set on a Running rw request the drive gave up on:
-- its finish saga then ends it in that state instead of Complete.
ALTER TABLE ro_replacement RENAME COLUMN data_lost_reason TO end_reason;
ALTER TABLE ro_replacement DROP CONSTRAINT ro_replacement_state_check;
ALTER TABLE ro_replacement ADD CONSTRAINT ro_replacement_state_check CHECK (state IN ('requested', 'allocating',
	'replacement_done', 'deleting_old_volume', 'running', 'completing', 'complete', 'data_lost', 'cancelled'));
ALTER TABLE rw_replacement ADD COLUMN end_reason text;
ALTER TABLE rw_replacement ADD COLUMN give_up text CHECK (give_up IN ('data_lost', 'needs_operator'));
ALTER TABLE rw_replacement DROP CONSTRAINT rw_replacement_state_check;
ALTER TABLE rw_replacement ADD CONSTRAINT rw_replacement_state_check CHECK (state IN ('requested', 'allocating',
	'running', 'driving', 'replacement_done', 'completing', 'complete', 'data_lost', 'needs_operator', 'cancelled'));

-- Who waits for a volume's repair lock, and since when. A lock taker that
-- finds the lock held records itself here (and refreshes last_attempt on
-- every try); a taker finding an older live waiter of another repair queued
-- for the volume stands back, so a volume under continuous contention is
-- served in arrival order instead of to whoever retries first. A waiter
-- that stopped trying (its request ended, the user gave up) goes stale
-- after a while and is skipped, then removed.
CREATE TABLE volume_lock_waiter (
	volume_id    uuid NOT NULL,
	-- Stable across retries: the step's request (one step per request and
	-- volume), the rw request's old region, the read-only request's old
	-- target, the snapshot's id.
	waiter_id    uuid NOT NULL,
	kind         text NOT NULL,
	since        timestamptz NOT NULL DEFAULT now(),
	last_attempt timestamptz NOT NULL DEFAULT now(),
	attempts     integer NOT NULL DEFAULT 1,
	PRIMARY KEY (volume_id, waiter_id)
);
CREATE INDEX volume_lock_waiter_since ON volume_lock_waiter (since);

-- Operators' holds on replacements (ReplacementService/PauseReplacement).
-- A held request starts no saga and takes no lock until resumed; the rack's
-- hold does the same for every request and keeps the detectors from opening
-- new ones. Kept apart from the request tables: a hold is an operator's
-- note about a request, not a state of it, and removing the row is the
-- whole of resuming. A row whose request has ended means nothing and is
-- removed by the next resume or pause of that request.
CREATE TABLE replacement_pause (
	-- A read-only or rw replacement request's id.
	request_id  uuid PRIMARY KEY,
	paused_by   text NOT NULL,
	paused_time timestamptz NOT NULL DEFAULT now(),
	reason      text NOT NULL
);

-- At most one row: the rack is held while it exists.
CREATE TABLE rack_pause (
	singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	paused_by   text NOT NULL,
	paused_time timestamptz NOT NULL DEFAULT now(),
	reason      text NOT NULL
);

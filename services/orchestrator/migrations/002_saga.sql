-- The durable saga log (docs/architecture.md, "The saga engine"): one row per
-- saga plus an append-only event log. Every write the engine makes is
-- conditional on the saga still being owned by the writer (current_sec and
-- adopt_generation), so a SEC whose sagas were adopted cannot append to them
-- any more.
CREATE TABLE saga (
	id               uuid PRIMARY KEY,
	name             text NOT NULL,
	creator          text NOT NULL,
	time_created     timestamptz NOT NULL DEFAULT now(),
	-- The whole DAG, parameters included; never changes once written.
	dag              jsonb NOT NULL,
	saga_state       text NOT NULL CHECK (saga_state IN ('running', 'unwinding', 'done', 'abandoned')),
	current_sec      text,
	adopt_generation bigint NOT NULL DEFAULT 1 CHECK (adopt_generation >= 1),
	adopt_time       timestamptz NOT NULL DEFAULT now(),
	abandon_time     timestamptz,
	abandon_reason   text CHECK (abandon_reason IN ('operator', 'unrecoverable', 'orphaned')),
	abandon_comment  text,
	-- What the saga acts on (e.g. a volume id), for admin filters and locks.
	subject_id       text,
	-- W3C traceparent of the creating request, so a recovered saga continues
	-- the same trace.
	traceparent      text,
	CONSTRAINT saga_abandon_all_or_none CHECK (
		(abandon_time IS NULL AND abandon_reason IS NULL AND abandon_comment IS NULL)
		OR (abandon_time IS NOT NULL AND abandon_reason IS NOT NULL AND abandon_comment IS NOT NULL)
	),
	CONSTRAINT saga_abandoned_iff_reason CHECK ((saga_state = 'abandoned') = (abandon_reason IS NOT NULL))
);

-- Recovery lists the unfinished sagas of one SEC.
CREATE UNIQUE INDEX saga_unfinished_by_sec ON saga (current_sec, id)
	WHERE saga_state IN ('running', 'unwinding');
CREATE INDEX saga_by_state_time ON saga (saga_state, time_created);

CREATE TABLE saga_node_event (
	-- No foreign key: every insert already checks (and share-locks) the saga
	-- row for ownership, so a second per-row check would only cost time.
	saga_id    uuid NOT NULL,
	node_id    integer NOT NULL CHECK (node_id >= 0),
	event_type text NOT NULL CHECK (event_type IN
		('started', 'succeeded', 'failed', 'undo_started', 'undo_finished', 'undo_failed')),
	data       jsonb,
	event_time timestamptz NOT NULL DEFAULT now(),
	creator    text NOT NULL,
	PRIMARY KEY (saga_id, node_id, event_type)
);

-- Tests and the admin API look for stuck sagas.
CREATE INDEX saga_node_event_undo_failed ON saga_node_event (saga_id) WHERE event_type = 'undo_failed';

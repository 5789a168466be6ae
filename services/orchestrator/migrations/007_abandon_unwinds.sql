-- An operator's abandonment unwinds a saga instead of only stopping it
-- (saga package comment, "Abandonment").
--
-- undo_skipped: an operator asserted that they dealt with the effect of an
-- undo that failed for good (undo_failed) by hand. Replay takes the node as
-- undone, so the unwind of a stuck saga goes on past it and runs every
-- remaining undo. The event's data holds the operator's comment.
ALTER TABLE saga_node_event DROP CONSTRAINT saga_node_event_event_type_check;
ALTER TABLE saga_node_event ADD CONSTRAINT saga_node_event_event_type_check CHECK (event_type IN
	('started', 'succeeded', 'failed', 'undo_started', 'undo_finished', 'undo_failed', 'undo_skipped'));

-- An operator asked for the saga to be unwound, when and why. Durable before
-- the engine acts on it, so a SEC that recovers the saga after a crash
-- unwinds it too: the actions that were in flight are recorded failed with
-- the comment instead of being run again.
ALTER TABLE saga ADD COLUMN unwind_time timestamptz;
ALTER TABLE saga ADD COLUMN unwind_comment text;
ALTER TABLE saga ADD CONSTRAINT saga_unwind_all_or_none CHECK ((unwind_time IS NULL) = (unwind_comment IS NULL));

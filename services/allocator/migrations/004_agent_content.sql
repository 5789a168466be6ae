-- What bytes each object on a simulated agent would hold, as a content
-- identity derived from its lineage (see the agent package): "blank" for a
-- region created empty, the source's identity for a clone, the region's
-- identity at the time for a snapshot, a new one for each write through an
-- Upstairs, the set's for a repaired region. Objects created before this
-- migration were never written (nothing could write), so "blank" is right
-- for them.

ALTER TABLE agent_region ADD COLUMN content text NOT NULL DEFAULT 'blank';
ALTER TABLE agent_snapshot ADD COLUMN content text NOT NULL DEFAULT 'blank';

-- The new regions a volume's rw replacements gave up on
-- (Store.UnrepairedRegions) are read whenever a repair of the volume is
-- planned or checked for a source: during a sled's replacement, about twice
-- per repair. Without an index each read scanned every rw request ever
-- made (126 buffers a call with 800 requests, 0.7 s of a full-rack run).
-- Given-up requests are rare, so the partial index stays tiny.
CREATE INDEX rw_replacement_unrepaired_by_volume ON rw_replacement (volume_id)
	WHERE new_region_id IS NOT NULL AND give_up IS NOT NULL;

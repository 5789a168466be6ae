-- A notification attempt that found its volume being deleted: its Upstairs
-- are detached, not notified, and the attempt is not a failure.
ALTER TABLE notification DROP CONSTRAINT notification_outcome_check;
ALTER TABLE notification ADD CONSTRAINT notification_outcome_check
	CHECK (outcome IN ('no_upstairs', 'notified', 'failed', 'volume_deleted'));

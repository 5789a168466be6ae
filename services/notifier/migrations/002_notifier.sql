-- The upstairs-notifier's records: who has which volume constructed
-- (attachments), what every replacement notification did, and what Upstairs
-- report about repairs and downstairs clients (docs/architecture.md, "The
-- notifier and the construction race").

-- One consumer of a volume on one Upstairs endpoint. Constructing again on
-- the same (volume, endpoint) is a restart: the row is kept and its
-- incarnation rises.
CREATE TABLE attachment (
	attachment_id uuid PRIMARY KEY,
	volume_id     uuid NOT NULL,
	kind          text NOT NULL CHECK (kind IN ('propolis', 'pantry')),
	endpoint      text NOT NULL,
	upstairs_id   uuid NOT NULL,
	incarnation   bigint NOT NULL CHECK (incarnation > 0),
	state         text NOT NULL CHECK (state IN ('starting', 'running', 'rebooting', 'migrating', 'stopping', 'stopped', 'failed')),
	read_only     boolean NOT NULL,
	error         text NOT NULL DEFAULT '',
	time_updated  timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT attachment_volume_endpoint UNIQUE (volume_id, endpoint)
);

-- Every NotifyReplacement attempt and outcome. attachment_id is NULL for a
-- NO_UPSTAIRS outcome and for failures not tied to one attachment.
CREATE TABLE notification (
	seq            bigserial PRIMARY KEY,
	notification_id uuid NOT NULL UNIQUE,
	volume_id      uuid NOT NULL,
	step_key       text NOT NULL,
	attachment_id  uuid,
	incarnation    bigint NOT NULL DEFAULT 0,
	vcr_generation bigint NOT NULL,
	outcome        text NOT NULL CHECK (outcome IN ('no_upstairs', 'notified', 'failed')),
	result         text NOT NULL DEFAULT '',
	error          text NOT NULL DEFAULT '',
	time           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_volume ON notification (volume_id, seq);
-- A successful notification of one incarnation at one VCR generation is
-- recorded once; a repeat returns it without calling the Upstairs again.
CREATE UNIQUE INDEX notification_dedup ON notification (step_key, attachment_id, incarnation, vcr_generation)
	WHERE outcome = 'notified';

-- Repair notifications. An Upstairs knows downstairs addresses, not
-- region ids, so region_id may be empty; downstairs_key is region_id when
-- given, else the canonical target address, and takes region_id's place in
-- the key so that "the first row's address wins" still holds for reports
-- that name regions.
CREATE TABLE upstairs_repair_notification (
	seq               bigserial NOT NULL UNIQUE,
	time              timestamptz NOT NULL,
	repair_id         uuid NOT NULL,
	repair_type       text NOT NULL CHECK (repair_type IN ('live', 'reconciliation')),
	upstairs_id       uuid NOT NULL,
	session_id        uuid NOT NULL,
	region_id         text NOT NULL,
	target_address    text NOT NULL,
	downstairs_key    text NOT NULL,
	notification_type text NOT NULL CHECK (notification_type IN ('started', 'succeeded', 'failed')),
	PRIMARY KEY (repair_id, upstairs_id, session_id, downstairs_key, notification_type)
);
CREATE INDEX upstairs_repair_notification_region ON upstairs_repair_notification (region_id, notification_type);
CREATE INDEX upstairs_repair_notification_address ON upstairs_repair_notification (target_address, time, seq);
CREATE INDEX upstairs_repair_notification_region_time ON upstairs_repair_notification (region_id, time, seq);

CREATE TABLE upstairs_repair_progress (
	repair_id    uuid NOT NULL,
	time         timestamptz NOT NULL,
	current_item bigint NOT NULL,
	total_items  bigint NOT NULL,
	PRIMARY KEY (repair_id, time, current_item, total_items)
);

-- Downstairs client notifications: append-only.
CREATE TABLE downstairs_client_stop_request_notification (
	time          timestamptz NOT NULL,
	upstairs_id   uuid NOT NULL,
	downstairs_id uuid NOT NULL,
	reason        text NOT NULL,
	PRIMARY KEY (time, upstairs_id, downstairs_id, reason)
);

CREATE TABLE downstairs_client_stopped_notification (
	time          timestamptz NOT NULL,
	upstairs_id   uuid NOT NULL,
	downstairs_id uuid NOT NULL,
	reason        text NOT NULL,
	PRIMARY KEY (time, upstairs_id, downstairs_id, reason)
);

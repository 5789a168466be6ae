-- The leader lease: only its holder runs sagas and background tasks. The
-- epoch rises at every change of holder and fences every write and every
-- mutating RPC (platform/fence).
CREATE TABLE leader_lease (
	id         int PRIMARY KEY CHECK (id = 1),
	holder     text NOT NULL,
	epoch      bigint NOT NULL,
	expires_at timestamptz NOT NULL
);
INSERT INTO leader_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, '-infinity');

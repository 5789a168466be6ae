-- The verified SPIFFE ID of the Upstairs server that accepted the volume's
-- activation (the notifier's mTLS peer), so that reports naming this
-- upstairs_id are taken only from that identity (docs/security.md,
-- "Authorization"). NULL when no activation has succeeded yet, or when the
-- deployment runs plaintext (--insecure) and there is no identity.
ALTER TABLE attachment ADD COLUMN upstairs_identity text;

-- Every Upstairs report looks its upstairs_id up here.
CREATE INDEX attachment_upstairs_id ON attachment (upstairs_id);

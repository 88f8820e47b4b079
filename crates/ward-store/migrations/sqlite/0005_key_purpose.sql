-- Signing keys serve one purpose each: OAuth2 access tokens or JWT-SVIDs,
-- so a token of one kind never verifies as the other.
ALTER TABLE signing_keys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'oauth';

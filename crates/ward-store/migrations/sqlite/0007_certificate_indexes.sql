-- Listing stays fast with a million issued certificates: newest first
-- over all of them or one SPIFFE ID, and the revoked ones still valid
-- (what every watch stream carries) without scanning the valid ones.
CREATE INDEX certificates_created ON certificates (created_at DESC, serial);
CREATE INDEX certificates_spiffe_created ON certificates (spiffe_id, created_at);
DROP INDEX certificates_spiffe_id;
CREATE INDEX certificates_revoked ON certificates (not_after) WHERE revoked_at IS NOT NULL;

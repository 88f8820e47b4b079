-- What a service speaks, so that policies it cannot enforce (HTTP fields
-- on a TCP service) are refused when applied.
ALTER TABLE services ADD COLUMN protocol TEXT NOT NULL DEFAULT 'http';

-- Where each replica's connected sidecars can be reached, so that
-- replicas sharing a database tell their sidecars about each other's.
-- A replica's rows count while it has been seen recently.
CREATE TABLE replicas (
    id      TEXT PRIMARY KEY NOT NULL,
    seen_at BIGINT NOT NULL
);

CREATE TABLE endpoints (
    replica   TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    addr      TEXT NOT NULL,
    PRIMARY KEY (replica, spiffe_id, addr)
);

-- ward control-plane schema, version 1.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE services (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    spiffe_id  TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Only a SHA-256 of each token is kept; tokens are 256-bit random.
CREATE TABLE join_tokens (
    hash       BLOB PRIMARY KEY NOT NULL,
    namespace  TEXT NOT NULL,
    service    TEXT NOT NULL,
    spiffe_id  TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    uses_left  INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE certificates (
    serial        TEXT PRIMARY KEY NOT NULL,
    spiffe_id     TEXT NOT NULL,
    issuer_serial TEXT NOT NULL,
    not_before    INTEGER NOT NULL,
    not_after     INTEGER NOT NULL,
    revoked_at    INTEGER,
    created_at    INTEGER NOT NULL,
    der           BLOB NOT NULL
);
CREATE INDEX certificates_spiffe_id ON certificates (spiffe_id);
CREATE INDEX certificates_issuer ON certificates (issuer_serial, not_after);
CREATE INDEX certificates_not_after ON certificates (not_after);

-- Private keys are sealed with the key-encryption key before they get here.
CREATE TABLE ca_keys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,      -- root | signing
    state      TEXT NOT NULL,      -- root: active; signing: prepared | active | retired
    serial     TEXT NOT NULL UNIQUE,
    cert_der   BLOB NOT NULL,
    key_sealed BLOB NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);

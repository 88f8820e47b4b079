-- OAuth2 clients, token signing keys and revoked tokens.
CREATE TABLE oauth_clients (
    client_id   TEXT PRIMARY KEY NOT NULL,
    service_id  TEXT NOT NULL,          -- the SPIFFE ID of the service it acts for
    auth_method TEXT NOT NULL,          -- tls_client_auth | private_key_jwt | client_secret_basic | client_secret_post
    secret_hash BLOB,                   -- keyed SHA-256 (HMAC) of the secret; never the secret
    jwks        TEXT,                   -- private_key_jwt: the client's public keys
    scopes      TEXT NOT NULL,          -- JSON array
    audiences   TEXT NOT NULL,          -- JSON array
    created_at  INTEGER NOT NULL
);

CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    alg        TEXT NOT NULL,
    state      TEXT NOT NULL,           -- next | active | retired
    public_jwk TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retire_until INTEGER                -- retired: kept in the JWKS until then
);

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);

-- private_key_jwt assertions are single-use.
CREATE TABLE used_assertions (
    jti        TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);

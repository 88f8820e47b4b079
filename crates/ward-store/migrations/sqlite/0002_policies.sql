-- Authorization policies, one row per namespace/name, stored as validated JSON.
CREATE TABLE policies (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    spec_json  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);

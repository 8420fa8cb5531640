SELECT pg_advisory_xact_lock(hashtext('moot_gateway.schema'));

-- One row per API key; the key itself is never stored, only its SHA-256.
CREATE TABLE IF NOT EXISTS api_keys (
    id          text PRIMARY KEY,            -- short public id, shown in listings
    owner       text NOT NULL,               -- runs and saved configurations belong to the owner
    name        text NOT NULL,
    key_hash    text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Saved run configurations, versioned: an update adds a version, old ones stay readable.
CREATE TABLE IF NOT EXISTS saved_configs (
    owner       text NOT NULL,
    name        text NOT NULL,
    version     integer NOT NULL,
    config      jsonb NOT NULL,              -- a run request without its prompt
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,                 -- set on every version when the name is removed
    PRIMARY KEY (owner, name, version)
);

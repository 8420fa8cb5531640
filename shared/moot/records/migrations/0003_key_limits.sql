-- Per-key limits and what enforcing them needs (moot/records/limits.py, the gateway's admission).
--
-- A limit column that is NULL means "the deployment's default" (MOOT_KEY_DEFAULT_*, read by the
-- gateway); 0 means "no limit" for this key.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS rpm integer CHECK (rpm >= 0);
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS max_concurrent_runs integer CHECK (max_concurrent_runs >= 0);
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS usd_per_day double precision CHECK (usd_per_day >= 0);

-- The rate limiter's state, one row per key that started a run: the theoretical arrival time of
-- the generic cell rate algorithm (a bucket of `rpm` requests refilled at `rpm` per minute).
-- Every gateway replica updates the same row, under a per-key advisory lock.
CREATE TABLE IF NOT EXISTS key_rates (
    key_id  text PRIMARY KEY,
    tat     timestamptz NOT NULL
);

-- Every run a key started, written by the gateway when it admits the run: which runs count
-- against the key's concurrent runs (`active`, until the run is seen ended or its deadline has
-- long passed) and whose calls count against its daily spend (runs started that UTC day).
CREATE TABLE IF NOT EXISTS key_runs (
    run_id      text PRIMARY KEY,
    key_id      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    active      boolean NOT NULL DEFAULT true,
    expires_at  timestamptz NOT NULL           -- the run's deadline and a margin: counted no longer
);
CREATE INDEX IF NOT EXISTS key_runs_active_idx ON key_runs (key_id) WHERE active;
CREATE INDEX IF NOT EXISTS key_runs_created_idx ON key_runs (key_id, created_at);

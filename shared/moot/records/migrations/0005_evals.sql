-- Evaluations (`POST /v1/evals`, moot.eval): every question of a dataset run under every
-- strategy, each answer scored. The gateway that drives an evaluation holds its lease
-- (`lease_until`, renewed while it works): when that gateway dies, another one takes the lease
-- over and goes on where the items say it was. An identical request of the same owner is the same
-- evaluation (`digest`): sent again, it resumes instead of starting over.
CREATE TABLE IF NOT EXISTS evals (
    id           text PRIMARY KEY,
    owner        text NOT NULL,
    key_id       text NOT NULL,           -- the key its runs are admitted under (its limits)
    digest       text NOT NULL,           -- of the request, canonical JSON
    request      jsonb NOT NULL,          -- moot.eval.models.EvalRequest
    status       text NOT NULL,           -- running, completed, cancelled, failed
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    lease_owner  text,
    lease_until  timestamptz,
    report       jsonb,                   -- moot.eval.models.Report, once completed
    UNIQUE (owner, digest)
);
CREATE INDEX IF NOT EXISTS evals_owner_created ON evals (owner, created_at DESC);
CREATE INDEX IF NOT EXISTS evals_running ON evals (lease_until) WHERE status = 'running';

-- One row per (strategy, question): inserted with its run's id before the run is submitted, so
-- a resumed evaluation waits for that run (or submits it under the same id) and never pays for a
-- question twice; `result` (moot.eval.models.ItemResult) and `seq` once it is scored. `seq`
-- orders the progress events (their SSE ids).
CREATE SEQUENCE IF NOT EXISTS eval_items_seq;
CREATE TABLE IF NOT EXISTS eval_items (
    eval_id      text NOT NULL REFERENCES evals (id) ON DELETE CASCADE,
    strategy     text NOT NULL,
    question_id  text NOT NULL,
    run_id       text NOT NULL,
    judge_run_id text,
    result       jsonb,
    seq          bigint UNIQUE,
    PRIMARY KEY (eval_id, strategy, question_id)
);

-- The steps of every protocol that has no table of its own (a council's answers, reviews and
-- chairman; a vote's votes; a Mixture-of-Agents layer and its aggregator), one row per step, from
-- the generic step.started / step.completed events (moot/messages.py). A new protocol records
-- its steps here without a migration: what a step came to is its `data`, in the protocol's own
-- terms (docs/protocols.md). Columns of the two events merge in any order; each is written once.
-- The consortium's iterations and the debate's rounds keep their own tables (0001).
CREATE TABLE IF NOT EXISTS steps (
    run_id        text NOT NULL,
    step          integer NOT NULL,
    name          text NOT NULL,        -- the step's name, e.g. answers, reviews, chairman, votes, layer
    started_at    timestamptz,          -- step.started
    call_ids      jsonb,                -- the calls it issued
    completed_at  timestamptz,          -- step.completed; null while it runs
    data          jsonb,                -- what came of it (a ranking, a tally), never model texts
    PRIMARY KEY (run_id, step)
);

-- moot recorder schema: the durable record of every run, written from the run events.
--
-- Applied by every recorder at start, in one transaction; everything is IF NOT EXISTS, so
-- applying it again changes nothing. Table names are also in moot/records.py (keep in step).
--
-- No foreign keys on purpose: events of one run are written by whichever recorder replica
-- pulls them, in any order (a call row may land before its run row), and each row is
-- complete on its own.

-- Concurrent CREATE TABLE IF NOT EXISTS can still fail (a unique violation on pg_type) when
-- several replicas start at once; the lock makes them apply the schema one after another.
SELECT pg_advisory_xact_lock(hashtext('moot_recorder.schema'));

-- One row per run. Filled from run.created (mode, prompt, request, created_at) and from the
-- run's end event, run.completed or run.failed (everything else). Once status is terminal
-- (completed, failed, cancelled) it never changes again.
CREATE TABLE IF NOT EXISTS runs (
    id            text PRIMARY KEY,
    mode          text,
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    prompt        text,
    request       jsonb,                 -- the run request as submitted
    reason        text,                  -- why the run stopped or failed
    result        jsonb,                 -- final verdict: synthesis, confidence, analysis, dissent, ...
    input_tokens  bigint,                -- usage summed over every call of the run
    output_tokens bigint,
    cost_usd      double precision,      -- null when no provider reported a cost
    iterations    integer,               -- number of iterations the run went through
    view          jsonb,                 -- the full run view (as GET /v1/runs/{id} shows it)
    created_at    timestamptz,
    finished_at   timestamptz,
    trace_id      text,                  -- W3C trace id of the run, when a traceparent came along
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS runs_created_at_idx ON runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_running_idx ON runs (created_at) WHERE status = 'running';

-- One row per iteration: iteration.started gives the member calls, iteration.completed the
-- arbiter's verdict and the stop decision. Each column is written once (first value wins).
CREATE TABLE IF NOT EXISTS iterations (
    run_id           text NOT NULL,
    number           integer NOT NULL,
    started_at       timestamptz,
    member_call_ids  text[],
    synthesis        text,
    confidence       double precision,   -- null when the arbiter gave none (or not completed yet)
    analysis         text,
    dissent          text,
    needs_iteration  boolean,            -- null when the arbiter did not say
    refinement_areas jsonb,              -- list of strings
    malformed        boolean,            -- the verdict broke the expected format
    problems         jsonb,              -- list of strings: what the parser could not read
    decision         text CHECK (decision IN ('stop', 'iterate')),
    reason           text,
    completed_at     timestamptz,        -- null while the iteration is running
    PRIMARY KEY (run_id, number)
);

-- One row per model call (members and arbiter), from call.completed / call.failed. Should a
-- call have both outcomes, the one earlier in the stream wins (the one the arbiter folded).
CREATE TABLE IF NOT EXISTS calls (
    call_id       text PRIMARY KEY,      -- run:iteration:role:model:instance
    run_id        text NOT NULL,
    iteration     integer NOT NULL,
    role          text NOT NULL,         -- member | arbiter
    model         text NOT NULL,
    instance      integer NOT NULL,
    status        text NOT NULL CHECK (status IN ('completed', 'failed')),
    text          text,                  -- the answer (completed)
    error         text,                  -- the error (failed)
    error_type    text,
    input_tokens  bigint,
    output_tokens bigint,
    cost_usd      double precision,
    latency_ms    bigint,
    attempts      integer,
    finish_reason text,
    at            timestamptz NOT NULL,
    stream_seq    bigint NOT NULL        -- JetStream sequence of the outcome event
);
CREATE INDEX IF NOT EXISTS calls_run_idx ON calls (run_id, iteration);

-- Every run event once, as published: the audit log. event_id is the event's deterministic
-- id (also its Nats-Msg-Id); a redelivered or republished event finds its id taken.
CREATE TABLE IF NOT EXISTS events (
    event_id    text PRIMARY KEY,
    run_id      text NOT NULL,
    type        text NOT NULL,
    stream_seq  bigint NOT NULL,         -- JetStream sequence of the first copy recorded
    payload     jsonb NOT NULL,
    at          timestamptz NOT NULL,    -- when the event happened (from the event)
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_run_seq_idx ON events (run_id, stream_seq);

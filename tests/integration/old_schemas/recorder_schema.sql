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

-- One row per run, consortium or debate. Filled from the run's start, run.created (consortium)
-- or debate_start (debate): mode, prompt, request, created_at; and from the run's end event,
-- run.completed or run.failed, which carries the run's view for both protocols (everything
-- else). Once status is terminal (completed, failed, cancelled) it never changes again.
CREATE TABLE IF NOT EXISTS runs (
    id            text PRIMARY KEY,
    mode          text,                  -- consortium | debate
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    prompt        text,
    request       jsonb,                 -- the run request as submitted
    reason        text,                  -- why the run stopped or failed
    result        jsonb,                 -- the view's result: consortium {synthesis, confidence,
                                         -- analysis, dissent, ...}; debate {text, model, by}, null
                                         -- when the debate has no final answer (display_only, failed)
    input_tokens  bigint,                -- usage summed over every call of the run
    output_tokens bigint,
    cost_usd      double precision,      -- null when no provider reported a cost
    iterations    integer,               -- iterations (consortium) or rounds (debate) the run went through
    view          jsonb,                 -- the full run view (as GET /v1/runs/{id} shows it)
    created_at    timestamptz,
    finished_at   timestamptz,
    trace_id      text,                  -- W3C trace id of the run, when a traceparent came along
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Added after the first release: the API key owner the run belongs to (from the run's first event).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner text;
CREATE INDEX IF NOT EXISTS runs_owner_created_idx ON runs (owner, created_at DESC);
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

-- One row per model call, from call.completed / call.failed: a consortium's members and arbiter,
-- a debate's debater turns, judge decisions, conviction checks and final verdict or summary.
-- Should a call have both outcomes, the one earlier in the stream wins (the one the arbiter
-- folded). A debate's other events about calls (round_model_complete, final_start,
-- final_complete, the streamed final_chunk pieces) are only in `events`: the outcome is here.
CREATE TABLE IF NOT EXISTS calls (
    call_id       text PRIMARY KEY,      -- run:iteration:role:model:instance
    run_id        text NOT NULL,
    iteration     integer NOT NULL,      -- the consortium's iteration, or the debate's round
    -- consortium: member | arbiter; debate: debater | judge | conviction | final. No CHECK on
    -- purpose: the roles are moot.messages.Role's, which grows with the protocols.
    role          text NOT NULL,
    model         text NOT NULL,
    instance      integer NOT NULL,
    status        text NOT NULL CHECK (status IN ('completed', 'failed')),
    text          text,                  -- the answer (completed; a streamed final call's whole answer)
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

-- One row per debate round: round_start opens it (speakers), round_complete closes it, then
-- (rounds 2..max_rounds-1 only) judge_decision (external_judge) or convergence_status
-- (self_convergence) says what came of it. Columns of different events merge into the row in
-- any order; each column is written once (first value wins). A column stays null while its event
-- has not been recorded, and for good when its mode does not produce that event.
CREATE TABLE IF NOT EXISTS debate_rounds (
    run_id         text NOT NULL,
    round          integer NOT NULL,
    started_at     timestamptz,         -- round_start
    speakers       jsonb,               -- labels (model#instance) in speaking order
    turns          integer,             -- round_complete: turns taken (including failed ones)
    failed_turns   integer,             -- ... of which the call failed
    completed_at   timestamptz,         -- null while the round is running
    judge_model    text,                -- judge_decision
    judge_continue boolean,             -- true: another round; false: the judge stopped the debate
    judge_readable boolean,             -- false: the answer named neither CONTINUE nor STOP (it goes on)
    judge_reason   text,
    eliminated     jsonb,               -- convergence_status: labels eliminated in this round
    kept           text,                -- label kept in although convinced (everyone was), or null
    remaining      jsonb,               -- labels still in after the round
    unanswered     jsonb,               -- labels whose conviction call failed (counted not convinced)
    PRIMARY KEY (run_id, round)
);

-- Every run event once, as published: the audit log. event_id is the event's deterministic
-- id (also its Nats-Msg-Id); a redelivered or republished event finds its id taken. Holds
-- every type of every protocol, including a debate's streamed final_chunk pieces (one row
-- each; their text also ends up whole in the final call's `calls` row).
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

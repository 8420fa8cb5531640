"""The metric instruments of every moot service (OpenTelemetry API; `moot.observability.telemetry.setup` wires them).

Instruments made before `setup()` forward to the real meter provider once it is set. Prometheus
names follow from the OpenTelemetry ones (dots become underscores, the unit is appended, counters
end in `_total`): `moot.run.duration` (s) is scraped as `moot_run_duration_seconds`. Labels are
bounded: mode, status, model, role, outcome, consumer; never a run id.

| instrument | kind | attributes | recorded by |
| --- | --- | --- | --- |
| `moot.runs.started` | counter | mode | recorder, once per run (first time its start event is recorded) |
| `moot.runs.finished` | counter | mode, status (completed, failed, cancelled), stop_reason (budget, deadline, none) | recorder, once per run |
| `moot.run.duration` (s) | histogram | mode, status | recorder: created to finished |
| `moot.run.rounds` | histogram | mode, status | recorder: iterations (consortium) / rounds (debate) |
| `gen_ai.client.operation.duration` (s) | histogram | gen_ai.request.model, gen_ai.provider.name, gen_ai.operation.name, moot.role, moot.outcome, error.type | member-worker, per model call attempt |
| `gen_ai.client.token.usage` | histogram | gen_ai.request.model, gen_ai.token.type (input, output) | member-worker |
| `moot.model.cost.usd` | counter | gen_ai.request.model | member-worker, when litellm knows the price |
| `moot.worker.calls.active` | up-down counter | | member-worker |
| `moot.worker.jobs.skipped` | counter | moot.reason (run_ended, cut) | member-worker: jobs of a run no longer running, acked without a call (or a streamed call cut) |
| `moot.queue.wait` (s) | histogram | moot.consumer, moot.redelivered | member-worker (jobs), arbiter (call outcomes), recorder (events): JetStream timestamp to consume |
| `moot.consumer.pending` / `moot.consumer.ack_pending` | gauges | stream, consumer | member-worker, arbiter, recorder: their durable consumer's info, polled |
| `moot.arbiter.decisions` | counter | moot.event.type, moot.outcome (applied, unknown_run, error, malformed) | arbiter |
| `moot.arbiter.decision.duration` (s) | histogram | moot.outcome | arbiter: load, decide, CAS write, publish |
| `moot.recorder.batch.size` | histogram | | recorder: messages per fetched batch |
| `moot.recorder.insert.duration` (s) | histogram | moot.outcome (ok, retry) | recorder: one batch's transaction |
| `moot.recorder.events` | counter | moot.outcome (new, duplicate, skipped) | recorder |
| `moot.dead_letters` | counter | consumer, reason (max_deliveries, undecodable, rejected, missing_text) | whoever writes a dead letter (`moot.runtime.deadletters`): arbiter (max deliveries of any consumer, its own undecodable outcomes), member-worker, recorder |

Plus, from the FastAPI instrumentation: `http.server.request.duration` (gateway; by route, method
and status code).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

meter = metrics.get_meter("moot")

# Seconds, from tens of milliseconds (a queued job) to an hour (a long debate).
_RUN_SECONDS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_WAIT_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# The GenAI semantic conventions' advised buckets for gen_ai.client.operation.duration.
_GENAI_SECONDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_ROUNDS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)
_BATCH = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

runs_started = meter.create_counter("moot.runs.started", unit="{run}", description="Runs started, by mode.")
runs_finished = meter.create_counter(
    "moot.runs.finished",
    unit="{run}",
    description="Runs that ended, by mode, status and stop_reason (deadline, budget or none).",
)
run_cost = meter.create_histogram(
    "moot.run.cost",
    unit="USD",
    description="What a run spent, when its provider reported costs, by mode and status.",
    explicit_bucket_boundaries_advisory=(0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 50),
)
run_duration = meter.create_histogram(
    "moot.run.duration",
    unit="s",
    description="From a run's creation to its end.",
    explicit_bucket_boundaries_advisory=_RUN_SECONDS,
)
run_rounds = meter.create_histogram(
    "moot.run.rounds",
    unit="{round}",
    description="Steps a run went through: a consortium's iterations, a debate's rounds, a council's stages, a Mixture-of-Agents' layers and aggregator (`steps` of the run's view).",
    explicit_bucket_boundaries_advisory=_ROUNDS,
)

model_call_duration = meter.create_histogram(
    "gen_ai.client.operation.duration",
    unit="s",
    description="Model call latency, by model and outcome.",
    explicit_bucket_boundaries_advisory=_GENAI_SECONDS,
)
model_tokens = meter.create_histogram(
    "gen_ai.client.token.usage",
    unit="{token}",
    description="Tokens per model call, by model and token type.",
    explicit_bucket_boundaries_advisory=_TOKENS,
)
model_cost = meter.create_counter(
    "moot.model.cost.usd", unit="{USD}", description="Cost of model calls in US dollars, by model."
)
calls_active = meter.create_up_down_counter(
    "moot.worker.calls.active", unit="{call}", description="Model calls in flight in this worker."
)

jobs_skipped = meter.create_counter(
    "moot.worker.jobs.skipped",
    unit="{job}",
    description="Call jobs of runs no longer running: acked without a call, or a streamed call cut.",
)

queue_wait = meter.create_histogram(
    "moot.queue.wait",
    unit="s",
    description="Time a message waited in its JetStream stream before a consumer took it.",
    explicit_bucket_boundaries_advisory=_WAIT_SECONDS,
)

arbiter_decisions = meter.create_counter(
    "moot.arbiter.decisions", unit="{event}", description="Call outcomes folded into run state."
)
arbiter_decision_duration = meter.create_histogram(
    "moot.arbiter.decision.duration",
    unit="s",
    description="Folding one call outcome: load, decide, compare-and-set, publish.",
    explicit_bucket_boundaries_advisory=_WAIT_SECONDS,
)

recorder_batch_size = meter.create_histogram(
    "moot.recorder.batch.size",
    unit="{event}",
    description="Messages per batch the recorder fetched.",
    explicit_bucket_boundaries_advisory=_BATCH,
)
recorder_insert_duration = meter.create_histogram(
    "moot.recorder.insert.duration",
    unit="s",
    description="One batch's database transaction.",
    explicit_bucket_boundaries_advisory=_WAIT_SECONDS,
)
recorder_events = meter.create_counter(
    "moot.recorder.events", unit="{event}", description="Events the recorder handled, by outcome."
)
dead_letters = meter.create_counter(
    "moot.dead_letters",
    unit="{message}",
    description="Messages copied to the dead-letter stream, by the consumer that gave up and why.",
)

# (stream, durable consumer) -> (num_pending, num_ack_pending), refreshed by telemetry.watch_consumers.
consumer_lag: dict[tuple[str, str], tuple[int, int]] = {}


def _lag(index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(values[index], {"stream": stream, "consumer": consumer})
            for (stream, consumer), values in list(consumer_lag.items())
        ]

    return callback


meter.create_observable_gauge(
    "moot.consumer.pending",
    callbacks=[_lag(0)],
    unit="{message}",
    description="Messages in the stream the durable consumer has not delivered yet (JetStream num_pending).",
)
meter.create_observable_gauge(
    "moot.consumer.ack_pending",
    callbacks=[_lag(1)],
    unit="{message}",
    description="Messages delivered to the consumer and not acked yet (JetStream num_ack_pending).",
)

"""Every NATS name the system uses: subjects, streams, durable consumers, KV buckets.

Two streams:
- `<NS>_RUNS` holds every run event under `<ns>.runs.<run_id>.<event type>`; it is the
  replayable history of a run (SSE, recorder, arbiter all read it).
- `<NS>_JOBS` is a work queue of model-call jobs under `<ns>.jobs.calls`.

And two for what could not be processed (`moot.runtime.deadletters`):
- `<NS>_DEAD` holds dead letters under `<ns>.dead.<consumer>`: copies of messages a consumer
  could not decode or gave up on, with the reason in their headers.
- `<NS>_ADVISORIES` captures JetStream's max-deliveries advisories for the two streams above, so
  that one arbiter handles each even if none was running when it was sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NS_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


@dataclass(frozen=True)
class Names:
    namespace: str = "moot"

    def __post_init__(self) -> None:
        if not _NS_RE.match(self.namespace):
            raise ValueError(f"namespace must match {_NS_RE.pattern}: {self.namespace!r}")

    # streams
    @property
    def runs_stream(self) -> str:
        return f"{self.namespace.upper()}_RUNS"

    @property
    def jobs_stream(self) -> str:
        return f"{self.namespace.upper()}_JOBS"

    @property
    def dead_stream(self) -> str:
        return f"{self.namespace.upper()}_DEAD"

    @property
    def advisories_stream(self) -> str:
        return f"{self.namespace.upper()}_ADVISORIES"

    # subjects
    @property
    def runs_wildcard(self) -> str:
        return f"{self.namespace}.runs.>"

    def run_events(self, run_id: str) -> str:
        """All events of one run."""
        return f"{self.namespace}.runs.{run_id}.>"

    def run_event(self, run_id: str, event_type: str) -> str:
        return f"{self.namespace}.runs.{run_id}.{event_type}"

    @property
    def call_results(self) -> str:
        """What the arbiter folds into run state: call outcomes and control requests."""
        return f"{self.namespace}.runs.*.call.*"

    @property
    def run_control(self) -> str:
        return f"{self.namespace}.runs.*.control.*"

    @property
    def call_jobs(self) -> str:
        return f"{self.namespace}.jobs.calls"

    @property
    def jobs_wildcard(self) -> str:
        return f"{self.namespace}.jobs.>"

    @property
    def dead_wildcard(self) -> str:
        return f"{self.namespace}.dead.>"

    def dead_letter(self, consumer: str) -> str:
        """Where the dead letters of one consumer go."""
        return f"{self.namespace}.dead.{consumer}"

    @property
    def max_deliveries_advisories(self) -> list[str]:
        """JetStream's advisories for messages of our streams that reached a consumer's max_deliver."""
        prefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
        return [f"{prefix}.{self.runs_stream}.*", f"{prefix}.{self.jobs_stream}.*"]

    # durable consumers
    @property
    def worker_consumer(self) -> str:
        return f"{self.namespace}-member-worker"

    @property
    def arbiter_consumer(self) -> str:
        return f"{self.namespace}-arbiter"

    @property
    def recorder_consumer(self) -> str:
        return f"{self.namespace}-recorder"

    @property
    def advisory_consumer(self) -> str:
        """The arbiter's consumer of max-deliveries advisories: it writes their dead letters."""
        return f"{self.namespace}-dead-letter-writer"

    @property
    def dead_run_consumer(self) -> str:
        """The arbiter's consumer of dead letters: it fails the run each one belongs to."""
        return f"{self.namespace}-dead-letter-runs"

    # key-value
    @property
    def state_bucket(self) -> str:
        return f"{self.namespace}_run_state"

    @property
    def text_bucket(self) -> str:
        """Every long text of every run, by SHA-256 (`moot.runtime.textstore`)."""
        return f"{self.namespace}_texts"

    def stream_for(self, subject: str) -> str:
        return self.jobs_stream if subject.startswith(f"{self.namespace}.jobs.") else self.runs_stream

    def event_type_of(self, subject: str) -> str:
        """`moot.runs.<id>.call.completed` -> `call.completed`."""
        parts = subject.split(".", 3)
        return parts[3] if len(parts) == 4 else ""

    def run_id_of(self, subject: str) -> str:
        parts = subject.split(".", 3)
        return parts[2] if len(parts) >= 3 else ""

"""Member-worker settings (env prefix MOOT_WORKER_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOOT_WORKER_", extra="ignore")

    # Calls in flight per process; the rest wait in JetStream, where other workers can take them.
    concurrency: int = 32
    # Backoff for retryable provider errors when the provider gives no Retry-After.
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    # How often a streamed call checks that its run is still running (a cancelled run's stream is cut).
    run_check_seconds: float = 1.0
    # On SIGTERM: how long the calls in hand may finish (the deployment's termination grace is above
    # it); what is left is nak'ed, for another worker at once.
    drain_seconds: float = 240.0

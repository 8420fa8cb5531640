"""Settings every service reads from the environment (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MootSettings(BaseSettings):
    """Connection and naming settings shared by all services.

    `namespace` prefixes every subject, stream, consumer and KV bucket, so that several
    deployments (or several test runs) can share one NATS server without seeing each other.
    """

    model_config = SettingsConfigDict(env_prefix="MOOT_", extra="ignore", populate_by_name=True)

    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias="NATS_URL")
    database_url: str = Field("postgresql://postgres@127.0.0.1:5432/test", validation_alias="DATABASE_URL")
    namespace: str = "moot"
    # Replicas of every stream and KV bucket the services create (`moot.runtime.nats`): 3 on a
    # 3-node JetStream cluster (what deploy/k8s assumes), 1 on a single server (docker-compose).
    # `NATS_URL` may list several servers, comma-separated (`nats_servers`).
    nats_replicas: int = Field(1, ge=1, le=5)
    # How long events stay replayable in JetStream and run state stays in KV.
    event_retention_seconds: float = 7 * 24 * 3600
    state_ttl_seconds: float = 7 * 24 * 3600
    # Texts (moot.runtime.textstore) outlive the events and the state that refer to them.
    text_ttl_seconds: float = 8 * 24 * 3600
    # How long dead letters (`moot.runtime.deadletters`) wait for someone to look at them.
    dead_letter_retention_seconds: float = 30 * 24 * 3600
    # JetStream redelivery bound for call jobs; after the last attempt the call is reported failed.
    call_max_attempts: int = 4
    # A worker signals in_progress() every third of it while a call runs, so a call may take any
    # time; a killed worker's jobs go to another within it (issue 11: under 30 s).
    call_ack_wait_seconds: float = 20.0
    call_timeout_seconds: float = 240.0
    # How often every arbiter replica sweeps the run states: deadlines, outboxes a crash left.
    sweep_interval_seconds: float = 5.0
    models_file: str | None = None
    # Off: only the model list's names are callable (without a list, only the embedded `local`);
    # the gateway refuses any other at submission (422) and workers fail a job naming one.
    # On: any other name goes to litellm as is (a provider id such as `openai/gpt-4o-mini`, with
    # the provider's key from the workers' environment).
    allow_unlisted_models: bool = False
    log_level: str = "INFO"
    # How long a service waits at start for `moot migrate` (the migration Job may still be
    # running) before it exits and its supervisor restarts it.
    schema_wait_seconds: float = 60.0


@lru_cache
def get_settings() -> MootSettings:
    return MootSettings()

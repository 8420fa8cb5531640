"""Recorder settings (env prefix MOOT_RECORDER_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RecorderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOOT_RECORDER_", extra="ignore")

    # Events per database transaction, and how long to wait for a batch to fill up.
    batch_size: int = Field(256, ge=1, le=10_000)
    batch_timeout_seconds: float = Field(0.3, gt=0)
    # A batch not acked within ack_wait is redelivered (to any replica): above a slow write, and
    # short enough that a killed recorder's batch is written by another within 30 s (issue 11).
    ack_wait_seconds: float = Field(30.0, gt=0)
    # Deliveries of one event before JetStream gives up on it for the recorder (then it becomes a
    # dead letter). -1, the default: never. A database outage is waited out, however long, with the
    # stream as the buffer (it keeps events `MOOT_EVENT_RETENTION_SECONDS`); what can never be
    # written (a row Postgres rejects, an undecodable message, a text gone for good) is isolated
    # and dead-lettered instead of retried.
    max_deliver: int = Field(-1, ge=-1)
    # A batch whose texts are missing this many deliveries in a row is taken apart: the events whose
    # texts are gone become dead letters, the others are recorded.
    missing_text_deliveries: int = Field(10, ge=1)
    # Unacked events across all replicas; fetching stalls beyond it.
    max_ack_pending: int = Field(4096, ge=1)
    retry_delay_base_seconds: float = Field(1.0, gt=0)
    # The nack delay doubles from the base up to the cap: 1, 2, 4, ... 30 s.
    retry_delay_max_seconds: float = Field(30.0, gt=0)
    # Each replica writes one batch at a time, so a small pool is plenty.
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(4, ge=1)
    # How long to wait for Postgres at start before giving up (and letting the orchestrator restart us).
    connect_timeout_seconds: float = Field(60.0, gt=0)
    # Statement timeout on the client side; below ack_wait so a stuck write is nacked, not redelivered.
    command_timeout_seconds: float = Field(20.0, gt=0)

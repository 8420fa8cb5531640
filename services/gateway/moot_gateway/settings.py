"""Gateway settings (env prefix MOOT_GATEWAY_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOOT_GATEWAY_", extra="ignore")

    # Postgres is only read (runs whose state has left NATS KV); a small pool is plenty.
    db_pool_min: int = 1
    db_pool_max: int = 10
    # A new connection (after Postgres was restarted or lost) that takes longer fails the request
    # with 503 rather than holding it (asyncpg waits 60 s by default).
    db_connect_timeout_seconds: float = 5.0
    # Request bodies above this are refused with 413 before they are parsed (moot_gateway.limits).
    # Far above any valid run (a prompt and each history message are at most 200,000 characters).
    max_body_bytes: int = 16 * 1024 * 1024

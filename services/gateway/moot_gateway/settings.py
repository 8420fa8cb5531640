"""Gateway settings: connections (env prefix MOOT_GATEWAY_) and the limits operators set (MOOT_...).

Every limit is listed with its default in docs/architecture.md ("Limits").
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOOT_GATEWAY_", extra="ignore", populate_by_name=True)

    # Postgres is only read (runs whose state has left NATS KV); a small pool is plenty.
    db_pool_min: int = 1
    db_pool_max: int = 10
    # A new connection (after Postgres was restarted or lost) that takes longer fails the request
    # with 503 rather than holding it (asyncpg waits 60 s by default).
    db_connect_timeout_seconds: float = 5.0
    # Request bodies above this are refused with 413 before they are read (moot_gateway.limits).
    # The largest valid prompt (200,000 characters, JSON-escaped) fits several times over; long
    # attachments and conversations are what it bounds.
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        validation_alias=AliasChoices("MOOT_MAX_BODY_BYTES", "MOOT_GATEWAY_MAX_BODY_BYTES", "max_body_bytes"),
    )
    # A key's limits when the key has none of its own (NULL in api_keys); 0 means no limit.
    # `moot keys create --rpm N --max-concurrent-runs N --usd-per-day X` sets a key's own.
    default_rpm: int = Field(120, ge=0, validation_alias=AliasChoices("MOOT_DEFAULT_RPM", "default_rpm"))
    default_max_concurrent_runs: int = Field(
        32,
        ge=0,
        validation_alias=AliasChoices("MOOT_DEFAULT_MAX_CONCURRENT_RUNS", "default_max_concurrent_runs"),
    )
    default_usd_per_day: float = Field(
        0.0, ge=0, validation_alias=AliasChoices("MOOT_DEFAULT_USD_PER_DAY", "default_usd_per_day")
    )
    # Open event streams (SSE) per key, on each gateway replica; one more is a 429.
    max_streams_per_key: int = Field(
        64, ge=1, validation_alias=AliasChoices("MOOT_MAX_STREAMS_PER_KEY", "max_streams_per_key")
    )
    # Origins a browser may call the API from (comma-separated, or "*"); none by default: CORS off.
    cors_origins: str = Field("", validation_alias=AliasChoices("MOOT_CORS_ORIGINS", "cors_origins"))
    # Where the web view links a run's trace (Jaeger, Tempo, ...), `{trace_id}` standing for its id;
    # none by default: no link.
    trace_url_template: str = Field(
        "", validation_alias=AliasChoices("MOOT_TRACE_URL_TEMPLATE", "trace_url_template")
    )

    # Evaluations (/v1/evals): the gateway driving one renews its lease every third of this; when
    # it dies, another gateway takes the evaluation over once the lease has run out. Every gateway
    # looks for such evaluations every `eval_poll_seconds`.
    eval_lease_seconds: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("MOOT_EVAL_LEASE_SECONDS", "eval_lease_seconds")
    )
    eval_poll_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("MOOT_EVAL_POLL_SECONDS", "eval_poll_seconds")
    )

    @field_validator("trace_url_template")
    @classmethod
    def _trace_url(cls, v: str) -> str:
        if v and (not v.startswith(("http://", "https://")) or "{trace_id}" not in v):
            raise ValueError("MOOT_TRACE_URL_TEMPLATE must be an http(s) URL containing {trace_id}")
        return v

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

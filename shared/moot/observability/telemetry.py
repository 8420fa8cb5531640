"""OpenTelemetry for every moot process: one trace per run, metrics for Prometheus (and OTLP).

`setup(service)` runs once per process, before the broker and the apps are built:

- Traces: only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set
  (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`), an SDK tracer provider
  batches spans to that endpoint over OTLP/HTTP (the exporter reads the other `OTEL_EXPORTER_OTLP_*`
  and `OTEL_BSP_*` variables itself), and asyncpg is instrumented. Otherwise the global tracer
  provider stays OpenTelemetry's no-op one: a span is a shared non-recording object, nothing is
  buffered or exported, and an incoming W3C context merely passes through.
- Metrics: always an SDK meter provider whose Prometheus reader is served at `/metrics` on the
  service's HTTP port; plus a periodic OTLP reader when an OTLP endpoint is configured (unless
  `OTEL_METRICS_EXPORTER=none`). The instruments are in `moot.observability.metrics`.

How a run becomes one trace (the "Telemetry" section of docs/architecture.md has the whole
picture): with tracing on, every NATS publish and consume goes through faststream's telemetry
middleware (`broker_middlewares`), which puts `traceparent` in the message headers and continues
the trace on the consuming side; every publish of a run happens inside the span of the message (or HTTP
request) that caused it; the run store keeps the run's `traceparent` and publishes under it when
it is called from another trace (a cancel request); the recorder writes each run's rows under
that run's context (see `moot_recorder.handlers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from moot import __version__

if TYPE_CHECKING:
    from fastapi import FastAPI, Response
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

SERVICE_NAMESPACE = "moot"
# Opt-in (OpenTelemetry's own variable for GenAI instrumentations): put prompts and answers on
# the model-call spans. Off by default: spans leave the process, answers and prompts must not.
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
# Paths no span or HTTP metric is made for: probes and scrapes.
EXCLUDED_URLS = "/healthz,/readyz,/metrics"

RUN_ID = "moot.run_id"
_PROPAGATOR = TraceContextTextMapPropagator()
tracer = trace.get_tracer("moot", __version__)


@dataclass(frozen=True)
class Telemetry:
    service: str
    tracing: bool
    capture_content: bool
    meter_provider: MeterProvider
    tracer_provider: Any | None  # the SDK TracerProvider when tracing


_state: Telemetry | None = None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def otlp_traces_configured(env: Mapping[str, str] = os.environ) -> bool:
    if _env_true("OTEL_SDK_DISABLED") or env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def otlp_metrics_configured(env: Mapping[str, str] = os.environ) -> bool:
    if _env_true("OTEL_SDK_DISABLED") or env.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(service: str) -> Telemetry:
    """Configure OpenTelemetry for this process (once; later calls return the first setup)."""
    global _state
    if _state is not None:
        return _state
    # The HTTP instrumentation's stable conventions: http.server.request.duration in seconds.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    resource = Resource.create(
        {
            "service.name": f"moot-{service}",
            "service.namespace": SERVICE_NAMESPACE,
            "service.version": __version__,
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        }
    )
    tracer_provider = _setup_tracing(resource) if otlp_traces_configured() else None
    meter_provider = _setup_metrics(resource)
    _state = Telemetry(
        service=service,
        tracing=tracer_provider is not None,
        capture_content=_env_true(CAPTURE_CONTENT_ENV),
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
    )
    log.info(
        "telemetry: traces %s, metrics at /metrics%s",
        "to OTLP" if _state.tracing else "off (OTEL_EXPORTER_OTLP_ENDPOINT not set)",
        " and to OTLP" if otlp_metrics_configured() else "",
    )
    return _state


def _setup_tracing(resource: Resource) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, _get_from_env_or_default

    provider = TracerProvider(
        resource=resource,
        # OTEL_TRACES_SAMPLER still chooses which runs are traced.
        sampler=ParentBased(root=_NoBackgroundDatabaseRoots(_get_from_env_or_default())),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    return provider


class _NoBackgroundDatabaseRoots(Sampler):
    """Drop database spans that start a trace: readiness probes, pool set-up, schema at start.

    Only consulted for spans without a parent; a run's queries have one.
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if attributes and ("db.system" in attributes or "db.system.name" in attributes):
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoBackgroundDatabaseRoots{{{self.delegate.get_description()}}}"


def _setup_metrics(resource: Resource) -> MeterProvider:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    readers: list[MetricReader] = [PrometheusMetricReader(scope_info_enabled=False)]
    if otlp_metrics_configured():
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(provider)
    return provider


def state() -> Telemetry | None:
    return _state


def tracing_enabled() -> bool:
    return _state is not None and _state.tracing


def capture_content() -> bool:
    return _state is not None and _state.capture_content


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered (at shutdown; the SDK also flushes at interpreter exit)."""
    if _state is None:
        return
    if _state.tracer_provider is not None:
        _state.tracer_provider.force_flush(timeout_millis)
    with contextlib.suppress(Exception):
        _state.meter_provider.force_flush(timeout_millis)


# ------------------------------------------------------------------------------- trace context


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, if tracing and there is a valid one."""
    if not tracing_enabled():
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The id of the current trace, if tracing (None otherwise, even with an incoming context)."""
    if not tracing_enabled():
        return None
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), if valid."""
    parts = (traceparent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        try:
            int(parts[1], 16)
        except ValueError:
            return None
        return parts[1].lower()
    return None


def context_from(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by message headers (an empty context when there is none)."""
    return _PROPAGATOR.extract(dict(headers or {}))


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (`run_id` becomes `moot.run_id`); None values are skipped."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes(
        {(RUN_ID if k == "run_id" else f"moot.{k}"): v for k, v in attributes.items() if v is not None}
    )


@contextlib.contextmanager
def in_run_trace(traceparent: str | None, name: str) -> Iterator[None]:
    """Work on a run from wherever we are, in the run's own trace.

    Normally the current span already belongs to the run's trace (every message of a run carries
    its context). When it does not (a cancel request is its own HTTP request; a message published
    without context), open a span whose parent is the run's stored context, linked to the current
    span, so what is published next stays in the run's trace.
    """
    if not tracing_enabled() or not traceparent:
        yield
        return
    run_context = _PROPAGATOR.extract({"traceparent": traceparent})
    run_span = trace.get_current_span(run_context).get_span_context()
    current = trace.get_current_span().get_span_context()
    if not run_span.is_valid or (current.is_valid and current.trace_id == run_span.trace_id):
        yield
        return
    links = [Link(current, {"moot.link": "caller"})] if current.is_valid else []
    with tracer.start_as_current_span(name, context=run_context, links=links, kind=SpanKind.INTERNAL):
        yield


@contextlib.contextmanager
def attached(ctx: Context) -> Iterator[None]:
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


# ------------------------------------------------------------------------------- NATS


def _run_subject(subject: str) -> tuple[str, str] | None:
    """(`<ns>.runs.{run_id}.<type>`, run id) for a run subject, else None."""
    parts = subject.split(".", 3)
    if len(parts) == 4 and parts[1] == "runs":
        return f"{parts[0]}.runs.{{run_id}}.{parts[3]}", parts[2]
    return None


def subject_template(subject: str) -> str:
    """A subject with its run id replaced: span names and metric labels must not grow per run."""
    found = _run_subject(subject)
    return found[0] if found else subject


def broker_middlewares() -> tuple[Any, ...]:
    """faststream's OpenTelemetry middleware for a NatsBroker when tracing is on, else none.

    It opens the publish and consume spans and carries the context in the `traceparent` header.
    faststream names spans by the subject, and run subjects hold the run id: the provider here
    puts `{run_id}` in its place and the id itself in `moot.run_id`. Its messaging metrics are
    left out (moot's own cover the queues). With tracing off there is no middleware at all: even
    with a no-op tracer it costs tens of microseconds per message, on every publish and consume.
    """
    if not tracing_enabled():
        return ()
    from faststream.nats.opentelemetry.provider import (
        NatsBatchTelemetrySettingsProvider,
        NatsTelemetrySettingsProvider,
    )
    from faststream.opentelemetry.middleware import TelemetryMiddleware
    from nats.aio.msg import Msg
    from opentelemetry.metrics import NoOpMeterProvider

    def with_run(attrs: dict[str, Any], subject: str) -> dict[str, Any]:
        found = _run_subject(subject)
        if found:
            attrs[RUN_ID] = found[1]
        return attrs

    class Single(NatsTelemetrySettingsProvider):
        def get_publish_destination_name(self, cmd: Any) -> str:
            return subject_template(cmd.destination)

        def get_consume_destination_name(self, msg: Any) -> str:
            return subject_template(msg.raw_message.subject)

        def get_publish_attrs_from_cmd(self, cmd: Any) -> dict[str, Any]:
            return with_run(super().get_publish_attrs_from_cmd(cmd), cmd.destination)

        def get_consume_attrs_from_message(self, msg: Any) -> dict[str, Any]:
            return with_run(super().get_consume_attrs_from_message(msg), msg.raw_message.subject)

    class Batch(NatsBatchTelemetrySettingsProvider):
        def get_publish_destination_name(self, cmd: Any) -> str:
            return subject_template(cmd.destination)

        def get_consume_destination_name(self, msg: Any) -> str:
            return subject_template(msg.raw_message[0].subject)

    def factory(msg: Any) -> Any:
        if isinstance(msg, Sequence):
            return Batch()
        if msg is None or isinstance(msg, Msg):
            return Single()
        return None  # KV and object-store watches

    return (TelemetryMiddleware(settings_provider_factory=factory, meter_provider=NoOpMeterProvider()),)


def observe_queue_wait(raw: Msg, consumer: str, span_name: str | None = None) -> None:
    """Record how long a JetStream message waited in its stream (its stream timestamp to now).

    With `span_name`, also a span covering the wait, beside the consuming span under the
    producer's context, so the trace shows the time a job spent queued.
    """
    from moot.observability import metrics as m

    try:
        metadata = raw.metadata
    except Exception:  # not a JetStream message
        return
    published = metadata.timestamp
    if published is None:
        return
    now_ns = time.time_ns()
    published_ns = int(published.timestamp() * 1e9)
    wait = max(0.0, (now_ns - published_ns) / 1e9)
    redelivered = (metadata.num_delivered or 1) > 1
    m.queue_wait.record(wait, {"moot.consumer": consumer, "moot.redelivered": redelivered})
    if span_name and tracing_enabled():
        parent = context_from(raw.headers)
        if trace.get_current_span(parent).get_span_context().is_valid:
            span = tracer.start_span(
                span_name,
                context=parent,
                kind=SpanKind.INTERNAL,
                start_time=min(published_ns, now_ns),
                attributes={"moot.consumer": consumer, "moot.delivery": metadata.num_delivered or 1},
            )
            span.end(end_time=now_ns)


@contextlib.contextmanager
def consuming(raw: Msg) -> Iterator[None]:
    """A consume span for a message taken without faststream (the member worker's fetch loop).

    Like faststream's middleware: a `<subject> process` consumer span continuing the context in
    the message's headers, current while the message is handled, so what is published under it
    stays in the run's trace. Nothing at all with tracing off.
    """
    if not tracing_enabled():
        yield
        return
    destination = subject_template(raw.subject)
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.operation": "process",
        "messaging.destination.name": destination,
        "messaging.message.body.size": len(raw.data),
    }
    found = _run_subject(raw.subject)
    if found:
        attributes[RUN_ID] = found[1]
    msg_id = (raw.headers or {}).get("Nats-Msg-Id")
    if msg_id:
        attributes["messaging.message.id"] = msg_id
    with tracer.start_as_current_span(
        f"{destination} process",
        context=context_from(raw.headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ):
        yield


# ------------------------------------------------------------------------------- consumer lag


async def watch_consumers(
    js: JetStreamContext, consumers: Sequence[tuple[str, str]], interval: float | None = None
) -> None:
    """Poll JetStream for the pending counts of `consumers` ((stream, durable) pairs) until cancelled."""
    from moot.observability import metrics as m

    every = interval or float(os.environ.get("MOOT_CONSUMER_LAG_INTERVAL_SECONDS", "5"))
    while True:
        for stream, durable in consumers:
            try:
                info = await js.consumer_info(stream, durable, timeout=2.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("consumer info %s/%s: %s", stream, durable, type(exc).__name__)
                m.consumer_lag.pop((stream, durable), None)
                continue
            m.consumer_lag[(stream, durable)] = (info.num_pending or 0, info.num_ack_pending or 0)
        await asyncio.sleep(every)


# ------------------------------------------------------------------------------- HTTP


def metrics_response() -> Response:
    """The Prometheus exposition of this process's metrics."""
    from fastapi import Response
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def instrument_fastapi(app: FastAPI) -> None:
    """Server spans (when tracing) and HTTP server metrics (always) for an app; probes excluded."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=EXCLUDED_URLS,
        meter_provider=_state.meter_provider if _state else None,
        # One span per request, not one per ASGI message (an SSE stream sends thousands).
        exclude_spans=["receive", "send"],
    )


async def run_trace_id(store: Any, pool: Any, run_id: str) -> str | None:
    """The trace id of a run: from its state while NATS KV holds it, else from its `runs` row."""
    in_kv, trace_id = await store.trace_of(run_id)
    if not in_kv and pool is not None:
        from moot.records.queries import RUNS_TABLE

        with contextlib.suppress(Exception):  # the row may not be written yet; the id is optional
            trace_id = await pool.fetchval(f"SELECT trace_id FROM {RUNS_TABLE} WHERE id = $1", run_id)
    return trace_id

"""One trace per run, across all four services, exported over real OTLP/HTTP.

The test runs its own OTLP/HTTP receiver (a plain HTTP server decoding the protobuf bodies with
`opentelemetry-proto`) and a stack whose services export to it (`OTEL_EXPORTER_OTLP_ENDPOINT`).
It runs a consortium, a debate and a cancelled run, then checks each run's trace: exactly one
trace holds every span that names the run; it has spans of the gateway, the member workers, the
arbiter and the recorder; every span's parent is in the trace, up to one root, the gateway's
`POST /v1/runs`; the model calls carry the GenAI attributes; no span holds a prompt, an answer
or a secret.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from moot.cli.client import MootClient
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack, default_services
from moot.records.accounts import create_key
from moot.runtime.subjects import Names

SERVICES = {"moot-gateway", "moot-member-worker", "moot-arbiter", "moot-recorder"}
MODEL_KEY = "sk-telemetry-model-key-do-not-leak"
# Each prompt carries a marker no span may contain.
CONSORTIUM_PROMPT = "Telemetry marker alpha-7f3: which prime follows 13?"
DEBATE_PROMPT = "Telemetry marker beta-91c: is a hot dog a sandwich?"
CANCEL_PROMPT = "Telemetry marker gamma-44d: count the grains of sand."
MARKERS = ("alpha-7f3", "beta-91c", "gamma-44d")

BEHAVIOURS: dict[str, dict[str, Any]] = {
    "m1": {"latency_ms": 20},
    "m2": {"latency_ms": 20},
    "arb": {"arbiter_confidence": [0.5, 0.9], "arbiter_needs_iteration": [True, False]},
    "d1": {"latency_ms": 10},
    "d2": {"latency_ms": 10},
    "judge_stop": {"reply": "STOP - the stronger position is clear.", "chunk_delay_ms": 5},
    "slowpoke": {"latency_ms": 4000},
}


# ----------------------------------------------------------------------------- the OTLP receiver


@dataclass
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    service: str
    scope: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]]
    events: list[tuple[str, dict[str, Any]]]
    status_message: str


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class OtlpReceiver:
    """OTLP/HTTP on 127.0.0.1: POST /v1/traces and /v1/metrics (protobuf, optionally gzip)."""

    spans: list[SpanRecord] = field(default_factory=list)
    metric_names: dict[str, set[str]] = field(default_factory=dict)  # service -> metric names
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver.add_traces(ExportTraceServiceRequest.FromString(body))
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver.add_metrics(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def add_traces(self, request: ExportTraceServiceRequest) -> None:
        records = []
        for rs in request.resource_spans:
            service = str(_attributes(rs.resource.attributes).get("service.name", ""))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    records.append(
                        SpanRecord(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            service=service,
                            scope=ss.scope.name,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes=_attributes(s.attributes),
                            links=[
                                (ln.trace_id.hex(), ln.span_id.hex(), _attributes(ln.attributes))
                                for ln in s.links
                            ],
                            events=[(e.name, _attributes(e.attributes)) for e in s.events],
                            status_message=s.status.message,
                        )
                    )
        with self.lock:
            self.requests += 1
            self.spans.extend(records)

    def add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self.lock:
            self.requests += 1
            for rm in request.resource_metrics:
                service = str(_attributes(rm.resource.attributes).get("service.name", ""))
                names = self.metric_names.setdefault(service, set())
                for sm in rm.scope_metrics:
                    names.update(m.name for m in sm.metrics)

    def snapshot(self) -> list[SpanRecord]:
        with self.lock:
            return list(self.spans)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
async def traced_stack(
    otlp: OtlpReceiver, nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, str]]:
    data_dir = tmp_path_factory.mktemp("traced")
    async with ModelServer({"models": BEHAVIOURS}) as model_server:
        models_file = Path(data_dir) / "models.yaml"
        model_list = [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": model_server.url,
                    "api_key": MODEL_KEY,
                },
            }
            for name in BEHAVIOURS
        ]
        models_file.write_text(yaml.safe_dump({"model_list": model_list}))
        async with Stack(
            data_dir,
            port=0,
            namespace=f"otel_{os.urandom(4).hex()}",
            models_file=models_file,
            nats_url=nats_url,
            database_url=database_url,
            services=default_services(workers=2, port=0),
            extra_env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
                # Export spans within a tenth of a second, metrics every second.
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                "MOOT_WORKER_BACKOFF_BASE_SECONDS": "0.2",
            },
            progress=None,
        ) as stack:
            conn = await asyncpg.connect(database_url)
            try:
                _, api_key = await create_key(conn, "tracer")
            finally:
                await conn.close()
            yield stack, api_key


# ----------------------------------------------------------------------------- helpers


async def _finish(client: MootClient, run_id: str) -> dict[str, Any]:
    for _ in range(300):
        run = await client.get_run(run_id)
        if run["status"] != "running":
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


async def _run_trace(otlp: OtlpReceiver, trace_id: str, terminal: str) -> list[SpanRecord]:
    """The trace's spans once the recorder's write of the run's end event is in, and a moment more
    (so spans still in the exporters' batches arrive)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = [s for s in otlp.snapshot() if s.trace_id == trace_id]
        if any(
            s.name == "record run events" and terminal in s.attributes.get("moot.event.types", [])
            for s in spans
        ):
            await asyncio.sleep(1.5)
            return [s for s in otlp.snapshot() if s.trace_id == trace_id]
        await asyncio.sleep(0.2)
    names = sorted({(s.service, s.name) for s in otlp.snapshot() if s.trace_id == trace_id})
    raise AssertionError(f"no recorder span for {terminal} in trace {trace_id}; spans: {names}")


def _check_one_trace(otlp: OtlpReceiver, run_id: str, trace_id: str, spans: list[SpanRecord]) -> None:
    # Exactly one trace: every span that names the run is in it.
    naming = [s for s in otlp.snapshot() if s.attributes.get("moot.run_id") == run_id]
    assert naming and {s.trace_id for s in naming} == {trace_id}
    assert {s.service for s in spans} == SERVICES, sorted({s.service for s in spans})

    # Unbroken parent links: one root (the gateway's POST), every other parent in the trace.
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert len(roots) == 1, [(r.service, r.name) for r in roots]
    root = roots[0]
    assert root.service == "moot-gateway" and root.name == "POST /v1/runs"
    assert root.attributes.get("moot.run_id") == run_id
    orphans = [(s.service, s.name) for s in spans if s.parent_id and s.parent_id not in by_id]
    assert not orphans, orphans

    def chain(span: SpanRecord) -> list[SpanRecord]:
        path = [span]
        while path[-1].parent_id:
            path.append(by_id[path[-1].parent_id])
        return path

    # From the recorder's insert statements up to the HTTP request, every hop present.
    inserts = [
        s
        for s in spans
        if s.service == "moot-recorder" and s.scope.endswith("asyncpg") and "INSERT" in s.name
    ]
    assert inserts, sorted({(s.service, s.name) for s in spans})
    for insert in inserts:
        path = chain(insert)
        assert path[-1] is root
        services = [s.service for s in path]
        assert services[0] == "moot-recorder" and services[-1] == "moot-gateway"
        assert path[1].name == "record run events"

    # The workers' model calls descend from the arbiter's decisions (after the first jobs).
    calls = [s for s in spans if s.name.startswith("chat ")]
    assert calls and all(s.service == "moot-member-worker" for s in calls)
    assert any("moot-arbiter" in {p.service for p in chain(c)} for c in calls)
    decisions = [s for s in spans if s.service == "moot-arbiter" and s.name.startswith("decide ")]
    assert decisions and all(s.attributes["moot.run_id"] == run_id for s in decisions)
    waits = [s for s in spans if s.name == "queue wait"]
    assert waits and all(s.service == "moot-member-worker" and s.end_ns >= s.start_ns for s in waits)


def _check_model_calls(spans: list[SpanRecord], run_id: str, calls: int) -> None:
    model_spans = [
        s for s in spans if s.name.startswith("chat ") and s.attributes.get("moot.outcome") == "completed"
    ]
    assert len(model_spans) == calls, len(model_spans)
    for s in model_spans:
        a = s.attributes
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "openai"
        assert s.name == f"chat {a['gen_ai.request.model']}"
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["gen_ai.response.finish_reasons"]
        assert a["moot.run_id"] == run_id
        assert {"moot.round", "moot.role", "moot.instance", "moot.call_id"} <= set(a)
        assert a["server.address"] == "127.0.0.1"
        assert s.kind == 3  # SPAN_KIND_CLIENT
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a


def _check_nothing_secret(otlp: OtlpReceiver, api_key: str, answers: list[str]) -> None:
    """No span anywhere (any trace, any service) holds a prompt, an answer or a key."""
    texts = []
    for s in otlp.snapshot():
        texts.append(json.dumps([s.name, s.attributes, s.links, s.events, s.status_message], default=str))
    blob = "\n".join(texts)
    for marker in MARKERS:
        assert marker not in blob
    assert MODEL_KEY not in blob
    assert api_key not in blob and api_key[:16] not in blob
    for answer in answers:
        assert answer[:40] not in blob


def _answers(run: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in ("text", "synthesis") and isinstance(v, str) and len(v) > 20:
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(run)
    return found


async def _completed_calls(database_url: str, run_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM calls WHERE run_id = $1 AND status = 'completed'", run_id
            )
        )
    finally:
        await conn.close()


async def _row_trace_id(database_url: str, run_id: str) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(100):
            row = await conn.fetchrow("SELECT trace_id, status FROM runs WHERE id = $1", run_id)
            if row is not None and row["status"] != "running":
                return str(row["trace_id"]) if row["trace_id"] else None
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    return None


# ----------------------------------------------------------------------------- tests


async def test_consortium_and_debate_are_one_trace_each(
    traced_stack: tuple[Stack, str], otlp: OtlpReceiver, database_url: str, nats_url: str
) -> None:
    stack, api_key = traced_stack
    async with MootClient(stack.gateway_url, api_key=api_key) as client:
        consortium = await client.create_run(
            {
                "mode": "consortium",
                "prompt": CONSORTIUM_PROMPT,
                "members": [{"model": "m1", "count": 2}, {"model": "m2"}],
                "arbiter": "arb",
            }
        )
        debate = await client.create_run(
            {
                "mode": "debate",
                "prompt": DEBATE_PROMPT,
                "members": [{"model": "d1"}, {"model": "d2"}],
                "judge_mode": "external_judge",
                "judge": "judge_stop",
                "max_rounds": 3,
            }
        )
        finished = {run["id"]: await _finish(client, run["id"]) for run in (consortium, debate)}

    for created in (consortium, debate):
        run_id, trace_id = created["id"], created["trace_id"]
        run = finished[run_id]
        assert run["status"] == "completed", run.get("reason")
        # The API returns the run's trace id, and the recorder stored it on the run's row.
        assert isinstance(trace_id, str) and len(trace_id) == 32 and int(trace_id, 16)
        assert run["trace_id"] == trace_id
        assert await _row_trace_id(database_url, run_id) == trace_id

        spans = await _run_trace(otlp, trace_id, "run.completed")
        if os.environ.get("MOOT_TEST_DUMP_TRACE"):  # print the trace trees while debugging
            _dump(spans)
        _check_one_trace(otlp, run_id, trace_id, spans)

    consortium_spans = await _run_trace(otlp, consortium["trace_id"], "run.completed")
    # Two iterations: three members and the arbiter each time; one span per call.
    _check_model_calls(consortium_spans, consortium["id"], calls=8)
    assert await _completed_calls(database_url, consortium["id"]) == 8
    debate_spans = await _run_trace(otlp, debate["trace_id"], "run.completed")
    _check_model_calls(debate_spans, debate["id"], calls=await _completed_calls(database_url, debate["id"]))
    judge = [s for s in debate_spans if s.name == "chat judge_stop"]
    assert judge and any(s.attributes.get("gen_ai.request.stream") for s in judge)
    # The streamed verdict's chunks are published from inside the model call span.
    chunk_publishes = [
        s
        for s in debate_spans
        if s.service == "moot-member-worker"
        and s.attributes.get("messaging.destination.name", "").endswith(".final.chunk")
    ]
    streamed = [s for s in judge if s.attributes.get("gen_ai.request.stream")]
    assert chunk_publishes
    by_id = {s.span_id: s for s in debate_spans}
    for publish in chunk_publishes:
        parent = by_id[publish.parent_id]
        while parent.name != streamed[0].name and parent.parent_id:
            parent = by_id[parent.parent_id]
        assert parent.name == "chat judge_stop"

    # Once the run's state has left NATS KV, GET reads the trace id from the run's row.
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(Names(stack.namespace).state_bucket)
        await kv.purge(consortium["id"])
    finally:
        await nc.close()
    async with MootClient(stack.gateway_url, api_key=api_key) as client:
        recorded = await client.get_run(consortium["id"])
    assert recorded["status"] == "completed" and recorded["trace_id"] == consortium["trace_id"]

    answers = _answers(finished[consortium["id"]]) + _answers(finished[debate["id"]])
    assert answers
    _check_nothing_secret(otlp, api_key, answers)

    # Metrics went over OTLP too, from every service.
    for _ in range(50):
        if "gen_ai.client.operation.duration" in otlp.metric_names.get(
            "moot-member-worker", set()
        ) and "moot.runs.finished" in otlp.metric_names.get("moot-recorder", set()):
            break
        await asyncio.sleep(0.2)
    assert "gen_ai.client.operation.duration" in otlp.metric_names["moot-member-worker"]
    assert "moot.runs.finished" in otlp.metric_names["moot-recorder"]
    assert SERVICES <= set(otlp.metric_names)


async def test_a_cancelled_run_stays_in_its_trace(
    traced_stack: tuple[Stack, str], otlp: OtlpReceiver, database_url: str
) -> None:
    """The cancel request is its own HTTP trace; what it publishes for the run goes in the run's."""
    stack, api_key = traced_stack
    async with MootClient(stack.gateway_url, api_key=api_key) as client:
        created = await client.create_run(
            {
                "mode": "consortium",
                "prompt": CANCEL_PROMPT,
                "members": [{"model": "slowpoke"}],
                "arbiter": "arb",
            }
        )
        await asyncio.sleep(0.5)
        await client.cancel_run(created["id"])
        run = await _finish(client, created["id"])
    assert run["status"] == "cancelled"
    spans = await _run_trace(otlp, created["trace_id"], "run.cancelled")
    _check_one_trace_no_calls(otlp, created["id"], created["trace_id"], spans)
    # The cancel request's trace is linked from the span that published for the run.
    publish = [s for s in spans if s.name == "moot.run publish"]
    assert publish and publish[0].service == "moot-gateway" and publish[0].links
    cancel_trace = publish[0].links[0][0]
    assert cancel_trace != created["trace_id"]
    assert any(
        s.name == "POST /v1/runs/{run_id}/cancel" for s in otlp.snapshot() if s.trace_id == cancel_trace
    )


def _check_one_trace_no_calls(
    otlp: OtlpReceiver, run_id: str, trace_id: str, spans: list[SpanRecord]
) -> None:
    naming = [s for s in otlp.snapshot() if s.attributes.get("moot.run_id") == run_id]
    assert {s.trace_id for s in naming} == {trace_id}
    by_id = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.name) for r in roots] == [("moot-gateway", "POST /v1/runs")]
    assert all(s.parent_id in by_id for s in spans if s.parent_id)
    assert any(
        s.service == "moot-recorder" and "run.cancelled" in s.attributes.get("moot.event.types", [])
        for s in spans
    )


def test_without_an_endpoint_nothing_is_traced() -> None:
    """No OTEL_EXPORTER_OTLP_ENDPOINT: the no-op tracer provider, non-recording spans, no exporter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = """
from opentelemetry import trace
from moot.observability import telemetry
t = telemetry.setup("probe")
span = telemetry.tracer.start_span("x")
print(t.tracing, span.is_recording(), type(trace.get_tracer_provider()).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "ProxyTracerProvider"]


def _dump(spans: list[SpanRecord]) -> None:
    children: dict[str, list[SpanRecord]] = {}
    for s in spans:
        children.setdefault(s.parent_id, []).append(s)

    def show(s: SpanRecord, depth: int) -> None:
        ms = (s.end_ns - s.start_ns) / 1e6
        print("  " * depth + f"{s.service}: {s.name} [{ms:.1f} ms] {dict(list(s.attributes.items())[:6])}")
        for c in sorted(children.get(s.span_id, []), key=lambda x: x.start_ns):
            show(c, depth + 1)

    for root in children.get("", []):
        show(root, 0)

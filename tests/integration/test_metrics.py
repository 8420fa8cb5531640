"""Every service exposes Prometheus metrics on its HTTP port: scrape each after a consortium and a debate.

The stack runs as deployed by default: no OTLP endpoint, so no traces, and metrics only by
scraping. The exposition is parsed with prometheus_client's parser (as Prometheus would read it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from moot.cli.client import MootClient
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack, default_services
from moot.records.accounts import create_key

BEHAVIOURS: dict[str, dict[str, Any]] = {
    "m1": {"latency_ms": 20},
    # A model litellm knows the price of (the test server answers for it): calls have a cost.
    "gpt-4o-mini": {"latency_ms": 20},
    "arb": {"arbiter_confidence": 0.9},
    "judge_stop": {"reply": "STOP - enough.", "chunk_delay_ms": 2},
    "broken": {"error_rate": 1.0, "error_status": 400},
}


@pytest.fixture(scope="module")
async def metered_stack(
    nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, str]]:
    data_dir = tmp_path_factory.mktemp("metered")
    async with ModelServer({"models": BEHAVIOURS}) as model_server:
        models_file = Path(data_dir) / "models.yaml"
        model_list = [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": model_server.url,
                    "api_key": "sk-x",
                },
            }
            for name in BEHAVIOURS
        ]
        models_file.write_text(yaml.safe_dump({"model_list": model_list}))
        env = {k: "" for k in os.environ if k.startswith("OTEL_EXPORTER_OTLP")}
        async with Stack(
            data_dir,
            port=0,
            namespace=f"metrics_{os.urandom(4).hex()}",
            models_file=models_file,
            nats_url=nats_url,
            database_url=database_url,
            services=default_services(workers=1, port=0),
            extra_env={**env, "MOOT_CONSUMER_LAG_INTERVAL_SECONDS": "0.5"},
            progress=None,
        ) as stack:
            conn = await asyncpg.connect(database_url)
            try:
                _, api_key = await create_key(conn, "metered")
            finally:
                await conn.close()
            yield stack, api_key


async def _scrape(url: str) -> dict[str, list[Sample]]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    found = [s for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, f"{name}{labels} not exposed; have {sorted(k for k in samples if k.startswith(name[:12]))}"
    return sum(s.value for s in found)


async def _finish(client: MootClient, run_id: str) -> dict[str, Any]:
    for _ in range(300):
        run = await client.get_run(run_id)
        if run["status"] != "running":
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


async def test_every_service_exposes_its_metrics(metered_stack: tuple[Stack, str]) -> None:
    stack, api_key = metered_stack
    async with MootClient(stack.gateway_url, api_key=api_key) as client:
        runs = [
            await client.create_run(
                {
                    "mode": "consortium",
                    "prompt": "One prime, please.",
                    "members": [{"model": "m1", "count": 2}, {"model": "gpt-4o-mini"}],
                    "arbiter": "arb",
                }
            ),
            await client.create_run(
                {
                    "mode": "debate",
                    "prompt": "Tabs or spaces?",
                    "members": [{"model": "m1"}, {"model": "gpt-4o-mini"}],
                    "judge_mode": "external_judge",
                    "judge": "judge_stop",
                    "max_rounds": 3,
                }
            ),
            # Fails: every member call is refused.
            await client.create_run(
                {"mode": "consortium", "prompt": "Fail.", "members": [{"model": "broken"}], "arbiter": "arb"}
            ),
        ]
        finished = [await _finish(client, r["id"]) for r in runs]
    assert [r["status"] for r in finished] == ["completed", "completed", "failed"]

    urls = {p.name: f"http://127.0.0.1:{p.port}" for p in stack.services}
    assert set(urls) == {"gateway", "member-worker", "arbiter", "recorder"}

    # Recorder: the run lifecycle (counted once per run, from the events it records first).
    for _ in range(50):
        recorder = await _scrape(urls["recorder"])
        if sum(s.value for s in recorder.get("moot_runs_finished_total", [])) >= 3:
            break
        await asyncio.sleep(0.2)
    assert _value(recorder, "moot_runs_started_total", mode="consortium") == 2
    assert _value(recorder, "moot_runs_started_total", mode="debate") == 1
    assert _value(recorder, "moot_runs_finished_total", mode="consortium", status="completed") == 1
    assert _value(recorder, "moot_runs_finished_total", mode="consortium", status="failed") == 1
    assert _value(recorder, "moot_runs_finished_total", mode="debate", status="completed") == 1
    assert _value(recorder, "moot_runs_finished_total", status="completed", stop_reason="none") == 2
    assert _value(recorder, "moot_run_duration_seconds_count", mode="debate", status="completed") == 1
    assert _value(recorder, "moot_run_duration_seconds_sum", mode="debate", status="completed") > 0
    # The judge stops the debate after round 2.
    assert _value(recorder, "moot_run_rounds_sum", mode="debate", status="completed") == 2
    assert _value(recorder, "moot_run_rounds_sum", mode="consortium", status="completed") == 1
    assert _value(recorder, "moot_recorder_batch_size_count") >= 1
    assert _value(recorder, "moot_recorder_insert_duration_seconds_count", moot_outcome="ok") >= 1
    assert _value(recorder, "moot_recorder_events_total", moot_outcome="new") > 10
    assert _value(recorder, "moot_queue_wait_seconds_count", moot_consumer="recorder") > 10

    # Member worker: model calls by model and outcome, tokens, cost, queue wait.
    worker = await _scrape(urls["member-worker"])
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert _value(worker, duration, gen_ai_request_model="m1", moot_outcome="completed") >= 4
    assert _value(worker, duration, gen_ai_request_model="broken", moot_outcome="failed") == 1
    assert _value(worker, duration, gen_ai_request_model="arb", moot_role="arbiter") == 1
    tokens = "gen_ai_client_token_usage_sum"
    assert _value(worker, tokens, gen_ai_request_model="m1", gen_ai_token_type="input") > 0
    assert _value(worker, tokens, gen_ai_request_model="m1", gen_ai_token_type="output") > 0
    assert _value(worker, "moot_model_cost_usd_total", gen_ai_request_model="gpt-4o-mini") > 0
    assert _value(worker, "moot_queue_wait_seconds_count", moot_consumer="member-worker") >= 10
    assert _value(worker, "moot_worker_calls_active") == 0

    # Arbiter: decisions and the time they take.
    arbiter = await _scrape(urls["arbiter"])
    assert _value(arbiter, "moot_arbiter_decisions_total", moot_outcome="applied") >= 10
    assert _value(arbiter, "moot_arbiter_decision_duration_seconds_count") >= 10
    assert _value(arbiter, "moot_queue_wait_seconds_count", moot_consumer="arbiter") >= 10

    # Consumer lag of each service's durable consumer (all caught up by now).
    for name, consumer in [
        ("member-worker", "member-worker"),
        ("arbiter", "arbiter"),
        ("recorder", "recorder"),
    ]:
        samples = await _scrape(urls[name])
        lag = [s for s in samples.get("moot_consumer_pending", []) if s.labels["consumer"].endswith(consumer)]
        assert lag and all(s.value == 0 for s in lag), (name, samples.get("moot_consumer_pending"))
        assert "moot_consumer_ack_pending" in samples

    # Gateway: HTTP request metrics; no run id in any label anywhere.
    gateway = await _scrape(urls["gateway"])
    assert _value(gateway, "http_server_request_duration_seconds_count", http_route="/v1/runs") == 3
    for service, samples in [("gateway", gateway), ("member-worker", worker), ("arbiter", arbiter)]:
        assert samples["target_info"][0].labels["service_name"] == f"moot-{service}"
        labels = {v for family in samples.values() for s in family for v in s.labels.values()}
        assert not any(r["id"] in v for r in runs for v in labels), service

    # Every metric the deploy validator lets a dashboard query is really exported by some service.
    exposed = {name for samples in [recorder, worker, arbiter, gateway] for name in samples}
    missing = [
        name
        for name in _validator().EXPORTED_METRICS - {"up"}
        if name not in exposed and f"{name}_count" not in exposed
    ]
    assert not missing, missing


def _validator() -> Any:
    """scripts/validate_deploy.py as a module (for its list of exported metric names)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "validate_deploy.py"
    spec = importlib.util.spec_from_file_location("validate_deploy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""One stack for every end-to-end test: starting the services as processes costs seconds.

The test model server plays every provider; each model name below has the behaviour a test needs.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from moot.cli.client import MootClient
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import ServiceSpec, Stack, default_services
from moot.records.accounts import NO_LIMITS, create_key


def _filler(chars: int) -> str:
    """Prose of about `chars` characters (no braces: it goes into str.format templates)."""
    words = "the panel weighs each argument on its merits and keeps what holds up "
    return (words * (chars // len(words) + 1))[:chars]


BEHAVIOURS: dict[str, dict[str, Any]] = {
    **{name: {"latency_ms": 20} for name in ("m1", "m2", "m3", "d1", "d2", "d3")},
    # First synthesis unsure and asking for more, second sure: exactly two iterations.
    "arb": {"arbiter_confidence": [0.5, 0.9], "arbiter_needs_iteration": [True, False]},
    "flaky": {"fail_first": 1, "error_status": 503, "retry_after": 0.2},
    "broken": {"error_rate": 1.0, "error_status": 400},
    "garbled": {"arbiter": "garbage"},
    # Debates: judges that stop or go on, a debater that concedes to d2#1.
    "judge_stop": {
        "reply": "STOP - the positions are clear and the stronger one has emerged.",
        "chunk_delay_ms": 5,
    },
    "judge_go": {"reply": "CONTINUE - there is more to argue.", "chunk_delay_ms": 5},
    "concedes": {"reply": "CONVINCED: d2#1 made the stronger case."},
    # Slow enough to cancel a run while its calls are in flight.
    "slowpoke": {"latency_ms": 3000},
    # Steady members: a run that always iterates cannot reach 20 iterations in a few seconds.
    "steady": {"latency_ms": 300},
    # Large runs (test_large_runs.py): long answers, an arbiter that never stops before the maximum.
    "long": {"reply_template": "{model} answer {n}. " + _filler(3950) + "\nConfidence: 0.5"},
    "longarb": {
        "arbiter_confidence": 0.5,
        "arbiter_needs_iteration": True,
        "arbiter_synthesis": "Synthesis {n}. " + _filler(3000),
    },
    "turns": {"reply_template": "{model} turn {n}. " + _filler(1980)},
    # Councils, votes and Mixture-of-Agents (test_protocols_e2e.py): a member whose answer is also
    # a readable review of two answers, a chairman, and voters that agree or disagree on a number.
    "ranker": {
        "latency_ms": 20,
        "reply": "Canberra is the capital; B states it most precisely.\nFINAL RANKING:\n1. B\n2. A",
    },
    "chair": {"reply": "The capital of Australia is Canberra."},
    "eight": {"latency_ms": 20, "reply": "Two times four is 8."},
    "nine": {"latency_ms": 20, "reply": "I make it 9."},
    # A model with a price (PRICES): its calls cost something (per-key daily spend).
    "priced": {"latency_ms": 20},
    # The web view (test_web.py): members slow enough to watch, an arbiter that always asks for
    # another iteration (a run of exactly max_iterations), a judge that stops after round 2 and
    # whose verdict streams for seconds, and a member whose answer is markup that would run if it
    # were ever parsed as HTML.
    "ponder": {"latency_ms": 1000},
    "web_arb": {"latency_ms": 100, "arbiter_confidence": 0.6, "arbiter_needs_iteration": True},
    "web_judge": {
        "reply": "STOP - " + " ".join(f"point{i} weighs the debate;" for i in range(1, 16)),
        "chunk_delay_ms": 120,
    },
    "xss": {
        "latency_ms": 20,
        "reply": '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> Confidence: 0.8',
    },
    # Evaluations (test_eval_e2e.py): a solver of the generated datasets right on 60 % of its
    # calls, each call's error independent and seeded (moot.eval.datasets.solve), priced; a solver
    # of the multiple-choice set; a judge that accepts everything, one that accepts nothing.
    "solver": {"latency_ms": 5, "solver_accuracy": 0.6, "seed": 7},
    "chooser": {"latency_ms": 5, "solver_accuracy": 0.8, "seed": 3},
    "lenient": {"reply": "They say the same thing.\nAnswer: yes"},
    "strict": {"reply": "They differ.\nAnswer: no"},
}
# USD per token of the models that have a price, passed to litellm in the model list.
PRICES = {"priced": 0.001, "solver": 0.000001, "lenient": 0.000002}


@pytest.fixture(scope="session")
async def model_server() -> AsyncIterator[ModelServer]:
    async with ModelServer({"models": BEHAVIOURS}) as server:
        yield server


@pytest.fixture(scope="session")
async def stack(
    model_server: ModelServer, nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    models_file = Path(data_dir) / "models.yaml"
    model_list = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": model_server.url,
                "api_key": "sk-test-secret",
                **(
                    {"input_cost_per_token": PRICES[name], "output_cost_per_token": PRICES[name]}
                    if name in PRICES
                    else {}
                ),
            },
        }
        for name in BEHAVIOURS
    ]
    models_file.write_text(yaml.safe_dump({"model_list": model_list}))
    # Two workers and two arbiters: jobs are shared, and runs are advanced without double decisions.
    services = [
        ServiceSpec(s.name, s.argv, instances=2) if s.name == "arbiter" else s
        for s in default_services(workers=2, port=0)
    ]
    async with Stack(
        data_dir,
        port=0,
        namespace=f"e2e_{secrets.token_hex(4)}",
        models_file=models_file,
        nats_url=nats_url,
        database_url=database_url,
        services=services,
        # Two calls at a time per worker: six member calls need both workers.
        # A sweep every half second: a deadline test waits for its run's end, not for the sweeper.
        extra_env={
            "MOOT_WORKER_CONCURRENCY": "2",
            "MOOT_WORKER_BACKOFF_BASE_SECONDS": "0.2",
            "MOOT_SWEEP_INTERVAL_SECONDS": "0.5",
            # An evaluation whose gateway died is taken over within seconds, not half a minute.
            "MOOT_EVAL_LEASE_SECONDS": "3",
            "MOOT_EVAL_POLL_SECONDS": "1",
        },
        progress=None,
    ) as running:
        yield running


async def _new_key(database_url: str, owner: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        _, key = await create_key(conn, owner, limits=NO_LIMITS)
        return key
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def api_key(stack: Stack, database_url: str) -> str:
    """A key of owner `alice` (the key tables exist: `database_url` and the stack migrate it)."""
    return await _new_key(database_url, "alice")


@pytest.fixture(scope="session")
async def other_api_key(stack: Stack, database_url: str) -> str:
    """A key of another owner, `bob`: he must never see alice's runs or configurations."""
    return await _new_key(database_url, "bob")


@pytest.fixture
async def client(stack: Stack, api_key: str) -> AsyncIterator[MootClient]:
    async with MootClient(stack.gateway_url, api_key=api_key) as c:
        yield c

"""The gateway fuzzed from its own /openapi.json by schemathesis, over HTTP, on the e2e stack.

Every operation of the document gets generated requests, valid ones (positive mode) and ones
that break the schema in one place (negative mode), sent with a valid API key of an owner of
its own. Each answer goes through schemathesis's standard checks: no 5xx, the status code, content
type, headers and body as documented, valid data accepted and invalid data refused, the key
actually required. Then `test_refused_requests_changed_nothing` holds the owner's records
against what the accepted requests did: every run, saved configuration version, deletion and
cancellation must come from a request that was answered 2xx (a refused request changed nothing).

Bounded for CI: at most `MAX_EXAMPLES` generated requests per operation and mode, a single pass
(no shrinking: a failure is reported as found). Run submissions are fuzzed in both modes, since
accepting or refusing a run is the gateway's main job, but every model name a generated body
would call is replaced by one of the stack's test models (`CHEAP_MODELS`) before it is sent, and
every arbiter and judge by `broken`, which fails at once: an accepted run costs a handful of calls
answered in milliseconds and ends within a second, and no generated name can make a worker
reach for a real provider. A name that is not a valid model name is left as generated, so
negative cases stay negative.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from schemathesis import Case, CheckFunction, GenerationMode, checks
from schemathesis.core.transport import Response

from moot.devstack.stack import Stack
from moot.records.accounts import Limits, create_key
from moot.requests import MODEL_NAME_RE
from moot_gateway.main import create_app

# Generated requests per operation and generation mode: enough to reach every field's edge cases
# once per CI run (a few hundred requests in all), few enough to keep the whole e2e suite fast.
MAX_EXAMPLES = 40

# The fuzzer's records are its own: nothing else in the e2e suite runs as this owner.
FUZZ_OWNER = "fuzzer"

# Models of the stack's test model server (tests/e2e/conftest.py) that answer within tens of
# milliseconds or fail at once: sixteen distinct names, as many as a consortium may list.
CHEAP_MODELS = (
    "broken",
    "m1",
    "m2",
    "m3",
    "d1",
    "d2",
    "d3",
    "flaky",
    "garbled",
    "judge_stop",
    "judge_go",
    "concedes",
    "arb",
    "turns",
    "long",
    "longarb",
)
# Fails every call with a 400 that is not retried: the arbiter's or judge's first call ends the run.
FAILING_MODEL = "broken"

# The operations whose bodies are run requests (or carry their fields as overrides): their model
# names are replaced before they are sent (in the test, since schemathesis's `map_body` hook does
# not reach the examples and coverage phases).
_RUN_BODIES = {("POST", "/v1/runs"), ("PUT", "/v1/consortiums/{name}")}
_CHAT = {("POST", "/v1/chat/completions")}
# An evaluation's strategies are run submissions without a prompt, held as JSON objects.
_EVALS = {("POST", "/v1/evals")}


def _is_model_name(value: object) -> bool:
    return isinstance(value, str) and MODEL_NAME_RE.match(value) is not None


def cheap_models(body: Any) -> Any:
    """The body with every valid model name it would call replaced by a cheap test model.

    Consortium members stay distinct (a consortium refuses a model listed twice); debaters all
    become `FAILING_MODEL`, so a debate's first round ends it. Anything that is not a valid name
    is kept, so a body generated to be refused is still refused for the same reason.
    """
    if not isinstance(body, dict):
        return body
    body = dict(body)
    debate = body.get("mode") == "debate"
    members = body.get("members")
    if isinstance(members, list):
        body["members"] = [
            {**m, "model": FAILING_MODEL if debate else CHEAP_MODELS[i % len(CHEAP_MODELS)]}
            if isinstance(m, dict) and _is_model_name(m.get("model"))
            else m
            for i, m in enumerate(members)
        ]
    for role in ("arbiter", "judge"):
        if _is_model_name(body.get(role)):
            body[role] = FAILING_MODEL
    return body


@dataclass
class Ledger:
    """What the accepted (2xx) requests of the fuzzing did, to hold the owner's records against."""

    runs: set[str] = field(default_factory=set)
    saved: set[tuple[str, int]] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    answered: dict[int, int] = field(default_factory=dict)  # status -> how many

    def record(self, case: Case, response: Response) -> None:
        status = response.status_code
        self.answered[status] = self.answered.get(status, 0) + 1
        method, path = case.method.upper(), case.operation.path
        if status == 424 and path == "/v1/chat/completions":
            # The run was accepted and failed: the request did start it, and the message names it.
            found = re.search(r"run ([0-9a-f]{32})", response.text)
            if found:
                self.runs.add(found.group(1))
            return
        if not 200 <= status < 300:
            return
        if (method, path) == ("POST", "/v1/runs"):
            self.runs.add(response.json()["id"])
        elif (method, path) == ("POST", "/v1/chat/completions"):
            # A stream's chunks and a whole answer both name the run in `moot.run_id`.
            found = re.search(r'"run_id": ?"([0-9a-f]{32})"', response.text)
            if found:
                self.runs.add(found.group(1))
        elif (method, path) == ("PUT", "/v1/consortiums/{name}"):
            saved = response.json()
            self.saved.add((saved["name"], saved["version"]))
        elif (method, path) == ("DELETE", "/v1/consortiums/{name}"):
            assert case.path_parameters is not None
            self.deleted.add(case.path_parameters["name"])
        elif (method, path) == ("POST", "/v1/runs/{run_id}/cancel"):
            self.cancelled.add(response.json()["id"])


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(scope="module")
async def fuzz_key(stack: Stack, database_url: str) -> str:
    """A key of `FUZZ_OWNER` without per-key limits: the fuzzing must not be throttled into 429s."""
    conn = await asyncpg.connect(database_url)
    try:
        _, key = await create_key(
            conn, FUZZ_OWNER, limits=Limits(rpm=0, max_concurrent_runs=0, usd_per_day=0)
        )
        return key
    finally:
        await conn.close()


# The document the gateway serves, built from the same code without starting it (its lifespan does
# not run for `openapi()`); `test_the_gateway_serves_the_document_fuzzed` checks the two are equal.
# schemathesis's lazy loader (`schemathesis.pytest.from_fixture`), which would read it from the
# running gateway, fails on pytest 9.2 (it sets `Function._nodeid`, which pytest 9.2 no longer has).
schema = schemathesis.openapi.from_dict(create_app().openapi())
# Deterministic: CI sends the same requests every time, so a failure is reproducible and a run
# never fails for what it happened to draw. No shrinking (a failure is reported as found) and no
# example database (a failure seen once on a machine would be replayed there before the seed's).
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,
    no_shrink=True,
    database="none",
    # The key is the test's (sent with every request); a generated or removed Authorization header
    # would be replaced by it, and a negative case would then no longer be one.
    with_security_parameters=False,
)


async def test_the_gateway_serves_the_document_fuzzed(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        served = await http.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == schema.raw_schema


@schema.parametrize()
def test_every_operation_answers_as_documented(
    case: Case, stack: Stack, fuzz_key: str, ledger: Ledger
) -> None:
    """No 5xx, answers as documented, valid data accepted and invalid data refused."""
    if (case.method.upper(), case.operation.path) in _RUN_BODIES:
        case.body = cheap_models(case.body)
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    response = case.call(base_url=stack.gateway_url, headers=headers, timeout=30)
    ledger.record(case, response)
    case.validate_response(
        response,
        headers=headers,
        # What the checks that send requests of their own (the key left out, ...) send them with.
        transport_kwargs={"base_url": stack.gateway_url, "headers": headers},
        excluded_checks=_not_applicable(case, response),
    )


def _not_applicable(case: Case, response: Response) -> list[CheckFunction]:
    """Checks that cannot hold for this operation or answer, whatever the gateway does.

    A run request (and a saved configuration, which is one) has rules across fields that JSON
    Schema does not state: distinct consortium members, at most 32 instances in all, a judge
    exactly when `judge_mode` is `external_judge`, `min_iterations` up to `max_iterations`, a
    `custom_prompt` exactly with `format: custom`, a saved configuration or earlier run that
    exists, a prompt that is not blank. A chat completion is a run of a saved configuration with
    the messages' last user message as its prompt, so the same holds for it. A body valid by the
    document is refused (422 or 400, documented) when it breaks one, so "valid data is accepted"
    does not apply; every other check still does. An evaluation's strategies are such requests
    too (each is resolved as a run before the evaluation is accepted).

    A body over the size cap is refused with 413 before it is read (documented): a refusal,
    which schemathesis's negative check does not count as one.
    """
    excluded: list[CheckFunction] = []
    if (case.method.upper(), case.operation.path) in _RUN_BODIES | _CHAT | _EVALS:
        excluded.append(checks.positive_data_acceptance)
    if response.status_code == 413:
        excluded.append(checks.negative_data_rejection)
    return excluded


async def _owner_rows(database_url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, FUZZ_OWNER)
    finally:
        await conn.close()


async def test_refused_requests_changed_nothing(
    stack: Stack, fuzz_key: str, database_url: str, ledger: Ledger
) -> None:
    """Every record of the fuzzer's owner comes from a request answered 2xx (after the fuzzing).

    A last run is submitted and waited for: the recorder writes runs in the order they start, so
    once it and every accepted run are recorded, a run started by a refused request would be too.
    """
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {fuzz_key}"}, timeout=30
    ) as http:
        last = await http.post(
            "/v1/runs", json={"prompt": "last", "members": [{"model": "m1"}], "arbiter": FAILING_MODEL}
        )
        assert last.status_code == 202, last.text
    runs = {*ledger.runs, last.json()["id"]}
    recorded: dict[str, str] = {}
    for _ in range(100):
        rows = await _owner_rows(database_url, "SELECT id, status FROM runs WHERE owner = $1")
        recorded = {r["id"]: r["status"] for r in rows}
        if runs <= recorded.keys() and "running" not in recorded.values():
            break
        await asyncio.sleep(0.2)
    assert recorded.keys() == runs, f"runs not from an accepted request: {recorded.keys() - runs}"
    cancelled = {run for run, status in recorded.items() if status == "cancelled"}
    assert cancelled <= ledger.cancelled

    configs = await _owner_rows(
        database_url, "SELECT name, version, deleted_at FROM saved_configs WHERE owner = $1"
    )
    assert {(r["name"], r["version"]) for r in configs} == ledger.saved
    assert {r["name"] for r in configs if r["deleted_at"] is not None} <= ledger.deleted

"""Sizes of a debate's state, jobs and events, at the largest debates the request limits allow.

NATS refuses a message or KV value over `max_payload` (1 MiB); every job and event must stay under
64 KB whatever the transcript (issue 10). Texts travel by reference (`moot.texts`), and what many
jobs quote alike is stored once: the conversation the debate continues (one reference), each
closed round's block of the transcript (one reference per round), the run's view in its end event
(one reference). Run with `pytest -s` to see the sizes measured.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from moot.messages import CallJob, RunCompleted, RunFailed
from moot.protocols import debate
from moot.protocols.base import Command
from moot.requests import DebateRequest
from moot.runtime.runstore import RunStore, StoredRun
from moot.runtime.subjects import Names
from moot.texts import MESSAGE_BUDGET_BYTES, STATE_BUDGET_BYTES, TextRef
from moot.views import Usage

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KB = 1000
JOB_MAX = 64 * KB  # the figure for a job (a little under MESSAGE_BUDGET_BYTES, 64 KiB)
EVENT_MAX = 64 * KB
assert JOB_MAX <= MESSAGE_BUDGET_BYTES

# Only its `encode` is used: what the run store writes to the run's KV value for a command.
STORE = RunStore(kv=cast(Any, None), names=Names(), publish=cast(Any, None), texts=cast(Any, None))


def kv_value(state: debate.DebateState, commands: list[Command]) -> int:
    """The run's KV value as the run store writes it: the state and the transition's outbox
    (a payload over `runstore.OUTBOX_INLINE_BYTES` kept in the text store, by its SHA-256)."""
    outbox = [STORE.encode(c, {}) for c in commands]
    return len(StoredRun(mode="debate", outbox=outbox, state=state.model_dump_json()).encode())


@dataclass
class Sizes:
    """The largest JSON seen of each kind, in bytes, and what it was."""

    job: tuple[int, str] = (0, "")
    event: tuple[int, str] = (0, "")
    state: tuple[int, str] = (0, "")
    stored: int = 0  # the run's KV value: the state and the transition's outbox (`kv_value`)
    view: int = 0  # the view the end event refers to (a stored text, not a message)
    events_by_type: dict[str, int] = field(default_factory=dict)
    texts: int = 0
    decisions: int = 0
    seconds: float = 0.0
    status: str = ""
    rounds: int = 0

    def see(self, commands: list[Command], texts: dict[str, str]) -> None:
        for c in commands:
            size = len(c.model_dump_json())
            if isinstance(c, RunCompleted | RunFailed):
                assert isinstance(c.run, TextRef)
                self.view = max(self.view, len(texts[c.run.sha].encode()))
            if isinstance(c, CallJob):
                self.job = max(self.job, (size, f"{c.role} round {c.iteration}"))
            else:
                self.event = max(self.event, (size, c.type))
                self.events_by_type[c.type] = max(self.events_by_type.get(c.type, 0), size)

    def report(self, name: str) -> None:
        print(f"\n{name}: {self.decisions} decisions in {self.seconds:.1f} s, {self.texts} texts stored")
        print(f"  largest job   {self.job[0]:>8,} B  ({self.job[1]})")
        print(f"  largest event {self.event[0]:>8,} B  ({self.event[1]})")
        print(f"  largest state {self.state[0]:>8,} B  ({self.state[1]})")
        print(f"  largest KV value {self.stored:>8,} B  (state + outbox, as the run store writes it)")
        print(f"  the run's view {self.view:>8,} B  (stored; run.completed refers to it)")
        print("  events: " + ", ".join(f"{t} {s:,}" for t, s in sorted(self.events_by_type.items())))


def drive(req: DebateRequest, answer: Callable[[CallJob], str]) -> Sizes:
    """Play a whole debate, every call answered by `answer`; the sizes of everything on the way."""
    sizes = Sizes()
    run_id = uuid.uuid4().hex
    t = debate.start(run_id, req, T0)
    state, texts = t.state, dict(t.texts)
    sizes.see(t.commands, texts)
    pending = [c for c in t.commands if isinstance(c, CallJob)]
    started = time.monotonic()
    while pending:
        job = pending.pop(0)
        event = job.completed(
            answer(job),
            usage=Usage(input_tokens=12_345, output_tokens=678, cost_usd=0.0123),
            attempts=1,
            latency_ms=12_345,
            worker="moot-member-worker-7d9f8c6b5-x2x4q:12345",
            at=T0,
        )
        t = debate.decide(state, event)
        state = t.state
        texts.update(t.texts)
        sizes.decisions += 1
        sizes.see(t.commands, texts)
        size = len(state.model_dump_json())
        sizes.state = max(sizes.state, (size, f"after round {state.current.number}"))
        sizes.stored = max(sizes.stored, kv_value(state, t.commands))
        pending += [c for c in t.commands if isinstance(c, CallJob)]
    sizes.seconds = time.monotonic() - started
    sizes.texts, sizes.status, sizes.rounds = len(texts), state.status, len(state.rounds)
    return sizes


def turn(n: int) -> Callable[[CallJob], str]:
    """Answers of `n` characters, each different."""

    def answer(job: CallJob) -> str:
        head = f"{job.call_id}: "
        return head + "x" * (n - len(head))

    return answer


MODELS = [f"openrouter/provider-{i}/some-model-v{i}" for i in range(16)]


def test_sixteen_debaters_fifteen_rounds_of_long_turns() -> None:
    """The issue's figure: display only, 16 debaters, 15 rounds, every turn 2,000 characters."""
    req = DebateRequest(
        prompt="Which is the better first programming language, and why?",
        members=[{"model": m} for m in MODELS],
        max_rounds=15,
    )
    sizes = drive(req, turn(2_000))
    sizes.report("16 debaters x 15 rounds x 2,000 chars")
    assert (sizes.status, sizes.rounds) == ("completed", 15)
    assert sizes.job[0] < JOB_MAX and sizes.event[0] < EVENT_MAX, (sizes.job, sizes.event)
    assert sizes.state[0] < 128 * KB


def worst_request(judge_mode: str, history: list[dict[str, Any]], **kw: Any) -> DebateRequest:
    """Every limit of a debate request at its maximum (moot.requests)."""
    attachments = [
        {"name": f"document-{i:02d}.txt", "content": f"{i:02d}" + "a" * 199_998} for i in range(32)
    ]
    images = [f"data:image/png;base64,{i:02d}" + "A" * 100_000 for i in range(16)]
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": "Looks something up. " * 5,
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
        for i in range(64)
    ]
    members = [
        {
            "model": m,
            "system": (f"{m}: " + "Argue carefully. " * 3_000)[:50_000],
            "temperature": 0.7,
            "max_tokens": 200_000,
            "tools": tools,
            "attachments": attachments,
            "images": images,
        }
        for m in MODELS
    ]
    return DebateRequest.model_validate(
        {
            "mode": "debate",
            "prompt": "Q" * 200_000,
            "members": members,
            "judge_mode": judge_mode,
            "judge": "openrouter/provider-judge/some-judge-model" if judge_mode == "external_judge" else None,
            "max_rounds": 20,
            "history": history,
            **kw,
        }
    )


def history_of(n: int, chars: int) -> list[dict[str, Any]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:03d} " + "h" * (chars - 4)}
        for i in range(n)
    ]


# Every placeholder, in 50,000 characters of instructions.
TEMPLATE = (
    "I" * 20_000
    + " {question} {round} {model_name} {debater_number} {own_position} {history} {current_round} "
    + "I" * (30_000 - 80)
)


@pytest.mark.parametrize(
    ("judge_mode", "history"),
    [
        # Every limit at its maximum but the conversation,
        ("external_judge", 0),
        ("self_convergence", 0),
        # then with 200 conversation messages too: one reference in every job (a stored list of
        # messages), not one per message.
        ("external_judge", 200),
        ("self_convergence", 200),
    ],
)
def test_the_largest_debates_the_request_limits_allow(judge_mode: str, history: int) -> None:
    """16 debaters with every limit at its maximum, 20 rounds of 20,000-character turns."""
    extra: dict[str, Any] = (
        {"format": "custom", "custom_prompt": TEMPLATE[:50_000]} if judge_mode == "external_judge" else {}
    )
    req = worst_request(judge_mode, history_of(history, 2_000), **extra)
    answers = {"judge": "CONTINUE\nThey still disagree.", "conviction": "NOT CONVINCED\nMine stands."}
    longest = turn(20_000)
    sizes = drive(req, lambda job: answers.get(job.role) or longest(job))
    sizes.report(f"every limit, {judge_mode}, {history} history messages")
    assert (sizes.status, sizes.rounds) == ("completed", 20)
    # Every job and every event, the end events too (the run's view is a reference).
    assert sizes.job[0] < JOB_MAX, sizes.job
    for event_type, size in sizes.events_by_type.items():
        assert size < EVENT_MAX, (event_type, size)
    # A few hundred bytes per call: 20 rounds x 16 turns (+ 18 x 16 conviction calls), and the
    # request's members (references to their texts).
    assert sizes.state[0] < STATE_BUDGET_BYTES, sizes.state
    assert sizes.stored < STATE_BUDGET_BYTES  # the run store logs a larger KV value as an error


def test_a_transition_that_asks_sixteen_convictions_fits_in_one_kv_value() -> None:
    """What the protocol controls when 16 debaters are asked, after round 19, whether they are
    convinced: the state, and each job and event. The run store keeps each payload over 1 KB of
    the transition's outbox by reference, so the 16 jobs do not add up in the run's KV value."""
    req = worst_request("self_convergence", history_of(200, 2_000))
    longest = turn(20_000)
    sizes = drive(req, lambda job: "NOT CONVINCED" if job.role == "conviction" else longest(job))
    sizes.report("every limit, self_convergence, 200 history messages, one-line conviction answers")
    assert (sizes.status, sizes.rounds) == ("completed", 20)
    assert sizes.state[0] < STATE_BUDGET_BYTES, sizes.state
    assert sizes.job[0] < JOB_MAX and sizes.event[0] < EVENT_MAX, (sizes.job, sizes.event)
    assert sizes.stored < STATE_BUDGET_BYTES

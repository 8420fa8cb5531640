"""Sizes of a consortium's state, jobs and events at the largest the request limits allow.

Every text travels by reference (`moot.texts`), so what NATS carries grows with the number of
calls, never with the length of a text; what many jobs quote alike is stored once (the
conversation a run continues), and the end events carry the run's view as one reference. Run
with `pytest -s` to see the measured sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from moot.messages import CallJob, RunCompleted
from moot.protocols import consortium
from moot.protocols.consortium import ConsortiumState
from moot.requests import ChatMessage, ConsortiumRequest, MemberSpec
from moot.runtime.runstore import RunStore, StoredRun
from moot.runtime.subjects import Names
from moot.texts import MESSAGE_BUDGET_BYTES, STATE_BUDGET_BYTES, TextRef, render
from moot.views import Usage

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
RUN_ID = "3f2b8c1d9e7a4b6c8d0e1f2a3b4c5d6e"  # as long as the gateway's ids
WORKER = "member-worker-7d9f8b6c5-x2k4q:1"  # a pod's name and pid, as a worker reports itself
USAGE = Usage(input_tokens=12_345, output_tokens=1_000, cost_usd=0.012345)


def model_name(i: int) -> str:
    return f"provider-{i:02d}/model-{i:02d}"  # 20 characters, as "openai/gpt-4o-mini"


def member_answer(job: CallJob) -> str:
    head = f"{job.model}#{job.instance}, iteration {job.iteration}: "
    return (head + "a long and careful answer. " * 200)[:3_984] + "\nConfidence: 0.6"  # 4,000 characters


def arbiter_answer(iteration: int) -> str:
    areas = "".join(
        f"<area>{i}: cite a source for the second claim, and give an example</area>" for i in range(3)
    )
    return (
        f"<synthesis>{f'The synthesis of iteration {iteration}. ' * 400}</synthesis>"  # ~15,000 chars
        "<confidence>0.5</confidence>"
        f"<analysis>{'They agree on most points. ' * 100}</analysis>"
        f"<dissent>{'One model disagrees. ' * 50}</dissent>"
        "<needs_iteration>true</needs_iteration>"
        f"<refinement_areas>{areas}</refinement_areas>"
    )


# Only its `encode` is used: what the run store writes to the run's KV value for a command.
STORE = RunStore(kv=cast(Any, None), names=Names(), publish=cast(Any, None), texts=cast(Any, None))


@dataclass
class Measured:
    """The largest JSON of each kind seen while a run was played to its end, in bytes."""

    state: int = 0
    job: int = 0
    event: int = 0  # events other than the run's end
    end_event: int = 0  # run.completed: the run's view by reference
    view: int = 0  # the view the end event refers to (a stored text, not a message)
    outbox: int = 0  # all the commands of one transition, as they are published
    stored: int = 0  # the run's KV value as the run store writes it: the state and the outbox
    texts: dict[str, str] = field(default_factory=dict)

    def see(self, state: ConsortiumState, commands: list[Any], texts: Any) -> None:
        self.texts.update(texts)
        size = len(state.model_dump_json())
        self.state = max(self.state, size)
        outbox = 0
        for c in commands:
            n = len(c.model_dump_json())
            outbox += n
            if isinstance(c, CallJob):
                self.job = max(self.job, n)
            elif isinstance(c, RunCompleted):
                self.end_event = max(self.end_event, n)
                assert isinstance(c.run, TextRef)
                self.view = max(self.view, len(self.texts[c.run.sha].encode()))
            else:
                self.event = max(self.event, n)
        self.outbox = max(self.outbox, outbox)
        # A payload over `runstore.OUTBOX_INLINE_BYTES` is kept in the text store, by its SHA-256.
        items = [STORE.encode(c, {}) for c in commands]
        value = StoredRun(mode="consortium", outbox=items, state=state.model_dump_json()).encode()
        self.stored = max(self.stored, len(value))

    def report(self, name: str) -> None:
        sizes = ", ".join(f"{k} {v:,}" for k, v in vars(self).items() if isinstance(v, int))
        print(f"\n{name}: largest in bytes: {sizes}; texts stored: {len(self.texts)}")


def play(request: ConsortiumRequest) -> tuple[ConsortiumState, Measured]:
    """The run to its end: every member answers 4,000 characters, the arbiter always wants more."""
    measured = Measured()
    t = consortium.start(RUN_ID, request, T0)
    state, commands = t.state, t.commands
    measured.see(state, commands, t.texts)
    pending = [c for c in commands if isinstance(c, CallJob)]
    while pending:
        job = pending.pop(0)
        text = arbiter_answer(job.iteration) if job.role == "arbiter" else member_answer(job)
        event = job.completed(text, usage=USAGE, attempts=1, latency_ms=23_456, worker=WORKER, at=T0)
        measured.event = max(
            measured.event, len(event.model_copy(update={"text": "x" * 256}).model_dump_json())
        )
        t = consortium.decide(state, event)
        state, commands = t.state, t.commands
        measured.see(state, commands, t.texts)
        pending += [c for c in commands if isinstance(c, CallJob)]
    return state, measured


def members(instances: int) -> list[MemberSpec]:
    """`instances` member instances over as many models as the request allows (16), as evenly as it goes."""
    n_models = min(16, instances)
    return [
        MemberSpec(model=model_name(i), count=instances // n_models + (i < instances % n_models))
        for i in range(n_models)
    ]


@pytest.mark.parametrize("instances", [16, 32])
def test_ten_iterations_of_long_answers_keep_state_and_messages_small(instances: int) -> None:
    request = ConsortiumRequest(
        prompt="What should a small team do first?",
        members=members(instances),
        arbiter=model_name(99),
        max_iterations=10,
    )
    state, m = play(request)
    m.report(f"{instances} instances x 10 iterations, 4,000-character answers")
    assert state.status == "completed" and state.current.number == 10
    assert max(m.job, m.event, m.end_event) < MESSAGE_BUDGET_BYTES
    if instances == 16:  # the number: the whole state under 64 KB
        assert m.state < MESSAGE_BUDGET_BYTES
    assert m.state < STATE_BUDGET_BYTES and m.stored < STATE_BUDGET_BYTES


def test_the_largest_request_runs_with_every_message_far_below_max_payload() -> None:
    history = [
        ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"turn {i} " + "h" * 9_992)
        for i in range(200)
    ]
    request = ConsortiumRequest(
        prompt="Q" * 200_000,
        system="S" * 50_000,
        history=history,
        members=members(32),
        arbiter=model_name(99),
        min_iterations=20,
        max_iterations=20,
        max_tokens=200_000,
    )
    state, m = play(request)
    m.report(
        "32 instances x 20 iterations, 200,000-char prompt, 50,000-char system, 200 x 10,000-char history"
    )
    assert state.status == "completed" and state.current.number == 20
    # Every job and every event, the run's end too: under 64 KiB whatever the texts. The 200
    # history messages are one reference in each job, the view one in the end event.
    assert max(m.job, m.event, m.end_event) < MESSAGE_BUDGET_BYTES
    # The state grows with the 640 calls (about 360 bytes each), the view it shows too.
    assert m.state < STATE_BUDGET_BYTES and m.stored < STATE_BUDGET_BYTES

    # What a job refers to is what its model is sent: the texts in full, rendered.
    last = consortium.start(RUN_ID, request, T0)
    job = next(c for c in last.commands if isinstance(c, CallJob))
    assert len(job.messages) == 3  # the system prompt, the conversation (one reference), the prompt
    sent = [render(msg.content, last.texts) for msg in job.conversation(last.texts)]
    assert sent[0] == "S" * 50_000 and sent[-1] == "Q" * 200_000 + consortium.prompts.MEMBER_CONFIDENCE_HINT
    assert sent[1:-1] == [m.content for m in history]


def test_the_run_view_is_as_small_as_the_state() -> None:
    request = ConsortiumRequest(
        prompt="p" * 10_000, members=members(16), arbiter=model_name(99), max_iterations=3
    )
    state, _ = play(request)
    view_json = consortium.view(state).model_dump_json()
    assert len(view_json) < MESSAGE_BUDGET_BYTES

"""The member worker's side of texts by reference: a job's references resolved into the messages
the model gets, a long answer stored before the outcome that refers to it. No servers: the text
store is a dict."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from moot.messages import CallCompleted, CallFailed, CallJob, JobMessage
from moot.protocols import debate
from moot.requests import DebateRequest
from moot.runtime.models import ModelList
from moot.runtime.textstore import MissingText
from moot.texts import INLINE_MAX, ImagePart, TextRef, TextSink, render
from moot_member_worker.calls import ModelCaller
from moot_member_worker.handlers import _by_reference


class FakeStore:
    """What the worker uses of a TextStore, over a dict."""

    def __init__(self, texts: Mapping[str, str] | None = None) -> None:
        self.texts = dict(texts or {})
        self.reads: list[set[str]] = []

    async def get_many(self, shas: Iterable[str]) -> dict[str, str]:
        wanted = set(shas)
        self.reads.append(wanted)
        missing = sorted(wanted - self.texts.keys())
        if missing:
            raise MissingText(missing[0])
        return {sha: self.texts[sha] for sha in wanted}

    async def put_many(self, texts: Mapping[str, str]) -> None:
        self.texts.update(texts)


def _caller(store: FakeStore | None) -> ModelCaller:
    caller = ModelCaller(ModelList(), timeout=1.0, backoff_base=0.1, backoff_max=1.0, allow_unlisted=True)
    caller.texts = store  # type: ignore[assignment]
    return caller


def _job(messages: list[JobMessage], tools: TextRef | None = None) -> CallJob:
    return CallJob(
        call_id="r:1:member:m:1", run_id="r", iteration=1, role="member", model="m", instance=1,
        messages=messages, tools=tools,
    )  # fmt: skip


async def test_references_are_resolved_into_the_messages_the_model_gets() -> None:
    sink = TextSink()
    prompt = "Review this text. " * 1_000
    system = "You are careful. " * 30
    image = "data:image/png;base64," + "iVBORw0KGgo" * 100
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    job = _job(
        [
            JobMessage(role="system", content=[sink.text(system)]),
            JobMessage(role="user", content=["Question:\n", sink.text(prompt), "\nAnswer briefly."]),
            JobMessage(role="user", content=["Look:", ImagePart(url=sink.text(image)), "short"]),
            JobMessage(role="assistant", content=["inline only"]),
        ],
        tools=sink.document(tools),
    )
    store = FakeStore(sink.texts)

    messages, got_tools = await _caller(store).resolve(job)

    assert messages == [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Question:\n{prompt}\nAnswer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": "short"},
            ],
        },
        {"role": "assistant", "content": "inline only"},
    ]
    assert got_tools == tools
    assert len(store.reads) == 1  # one read for the whole job


async def test_a_job_without_references_reads_nothing() -> None:
    store = FakeStore()
    job = _job([JobMessage(role="user", content=["What is 2 + 2?"])])
    messages, tools = await _caller(store).resolve(job)
    assert (messages, tools, store.reads) == ([{"role": "user", "content": "What is 2 + 2?"}], None, [])


async def test_a_missing_text_fails_the_call_for_good() -> None:
    sink = TextSink()
    job = _job([JobMessage(role="user", content=[sink.text("x" * 1_000)])])
    caller = _caller(FakeStore())
    with pytest.raises(MissingText):
        await caller.resolve(job)
    # No later attempt would find it: the call fails (the model is never called), not retried.
    outcome = await caller.call(job, attempt=1)
    assert isinstance(outcome, CallFailed) and outcome.error_type == "missing_text"
    assert next(iter(sink.texts)) in outcome.error


async def test_a_long_answer_is_stored_before_it_is_published_by_reference() -> None:
    job = _job([JobMessage(role="user", content=["q"])])
    store = FakeStore()
    long = "A long answer. " * 100
    outcome = await _by_reference(store, job.completed(long))  # type: ignore[arg-type]
    assert isinstance(outcome, CallCompleted) and isinstance(outcome.text, TextRef)
    assert store.texts[outcome.text.sha] == long and outcome.text.chars == len(long)
    payload: dict[str, Any] = json.loads(outcome.model_dump_json())
    assert payload["text"]["$text"] == outcome.text.sha

    short = "x" * INLINE_MAX
    assert (await _by_reference(store, job.completed(short))).text == short  # type: ignore[arg-type, union-attr]
    failed = job.failed("boom")
    assert await _by_reference(None, failed) is failed


async def test_a_debate_job_quoting_stored_documents_is_resolved_level_by_level() -> None:
    """The conversation (a stored list of messages), a closed round's transcript and a debater's
    images (stored parts) are documents whose texts refer to more texts: the worker reads them
    level by level and sends what the prompts always were."""
    history = [
        {"role": "user", "content": "Earlier question " * 30},
        {"role": "assistant", "content": "Yes."},
    ]
    images = ["data:image/png;base64," + "A" * 1_000, "https://example.com/2.png"]
    req = DebateRequest.model_validate(
        {
            "mode": "debate",
            "prompt": "Is a hot dog a sandwich? " * 20,
            "members": [{"model": "a", "count": 2, "system": "Be brief. " * 40, "images": images}],
            "history": history,
        }
    )
    t = debate.start("r", req, datetime(2026, 11, 22, tzinfo=UTC))
    state, texts = t.state, dict(t.texts)
    first = [c for c in t.commands if isinstance(c, CallJob)]
    for job in first:
        step = debate.decide(state, job.completed(f"{job.model}#{job.instance}: " + "because " * 100))
        state, commands = step.state, step.commands
        texts.update(step.texts)
    [turn] = [c for c in commands if isinstance(c, CallJob)]
    assert state.rounds[0].transcript is not None

    for job in (first[0], turn):
        store = FakeStore(texts)
        messages, _ = await _caller(store).resolve(job)
        expected = [{"role": m.role, "content": render(m.content, texts)} for m in job.conversation(texts)]
        assert messages == expected and len(messages) == 4  # system, the two earlier messages, the turn
        assert messages[1]["content"] == "Earlier question " * 30
        assert len(store.reads) == 2  # the job's references, then those of the documents it names
    assert isinstance(messages[-1]["content"], str)  # the later turn: images in round 1 only
    round_one, _ = await _caller(FakeStore(texts)).resolve(first[0])
    assert [p["image_url"]["url"] for p in round_one[-1]["content"] if p["type"] == "image_url"] == images

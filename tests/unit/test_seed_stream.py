"""`?format=seed`: a debate's events as the reference debate program streamed them.

Debates are played on the real state machine (`moot.protocols.debate`), the jobs answered as
the workers would, and every published event, call outcomes and run events included, is read
back from its JSON and mapped. The expected events are the reference's (its
`debate_event_stream`) for the same debate: its event names, its field names in its order, its
values.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from fastapi.sse import ServerSentEvent, format_sse_event

from moot.messages import (
    SEED_NAMES,
    AnyRunEvent,
    CallJob,
    CancelRequested,
    DebateError,
    FinalChunk,
    run_event_adapter,
)
from moot.protocols import debate, protocol_for
from moot.protocols.base import Transition
from moot.requests import ConsortiumRequest, DebateRequest
from moot.runtime.textstore import TextStore
from moot.texts import hydrate
from moot.views import AnyRunView, run_view_adapter
from moot_gateway.errors import ApiError
from moot_gateway.seed_stream import SeedStream, require_debate, seed_events

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
TEXTS: dict[str, str] = {}  # every text the transitions stored, as the text store holds them

# The reference's fields, in its order, per event (`debate_event_stream`); `debate_complete` has no `data`.
REFERENCE_FIELDS = {
    "debate_start": ["max_rounds", "format", "judge_mode", "models"],
    "round_start": ["round", "active_models"],
    "round_model_complete": ["round", "model", "response"],
    "round_complete": ["round", "responses"],
    "judge_decision": ["round", "continue", "reasoning"],
    "model_eliminated": ["round", "model", "convinced_by", "reasoning"],
    "convergence_status": ["round", "eliminated", "remaining"],
    "final_start": ["model"],
    "final_chunk": ["chunk"],
    "final_complete": ["model", "response"],
    "error": ["message"],
}

Answer = Callable[[CallJob], str | None]  # None: the call fails
VERDICT = "Mustard decides it: a hot dog is a sandwich."
FAILURE = "RateLimitError: slow down"


def turn_text(job: CallJob) -> str:
    return f"{job.model}#{job.instance} in round {job.iteration}"


def answers(judge: str = "STOP - clear.", convictions: dict[tuple[str, int], str] | None = None) -> Answer:
    """Debaters say who they are; the judge and the convictions (by model and round) as given."""

    def answer(job: CallJob) -> str | None:
        if job.role == "debater":
            return turn_text(job)
        if job.role == "judge":
            return judge
        if job.role == "conviction":
            return (convictions or {}).get((job.model, job.iteration), "NOT CONVINCED - mine holds.")
        return VERDICT

    return answer


def keep(t: Transition[Any]) -> Transition[Any]:
    TEXTS.update(t.texts)
    return t


def play(body: dict[str, Any], answer: Answer, *, cancel_after: int | None = None) -> list[AnyRunEvent]:
    """Every event the debate publishes, in order: the arbiter's and the workers' (call outcomes,
    a streamed answer's chunks before its outcome). The job issued last is answered first, so
    round 1's answers come in the reverse of the debaters' order. `cancel_after`: the client
    cancels after that many answers."""
    request = DebateRequest.model_validate({"mode": "debate", "prompt": "Is a hot dog a sandwich?", **body})
    t = keep(debate.start("r1", request, T0))
    state, commands = t.state, t.commands
    published: list[AnyRunEvent] = []
    pending: list[CallJob] = []
    while True:
        for command in commands:
            if isinstance(command, CallJob):
                pending.append(command)
            else:
                published.append(command)
        if not pending or state.status != "running":
            return published
        if (
            cancel_after is not None
            and len([e for e in published if e.type.startswith("call.")]) == cancel_after
        ):
            t = keep(debate.decide(state, CancelRequested(run_id="r1", at=T0)))
            state, commands = t.state, t.commands
            continue
        job = pending.pop()
        text = answer(job)
        if text is None:
            outcome: AnyRunEvent = job.failed(FAILURE, at=T0)
        else:
            if job.stream:
                pieces = [text[: len(text) // 2], text[len(text) // 2 :]]
                published += [
                    FinalChunk(run_id="r1", call_id=job.call_id, index=i, delta=piece, at=T0)
                    for i, piece in enumerate(pieces)
                ]
            outcome = job.completed(text, at=T0)
        published.append(outcome)
        t = keep(debate.decide(state, outcome))
        state, commands = t.state, t.commands


def seed(published: list[AnyRunEvent]) -> list[dict[str, Any]]:
    """The seed stream of these events, each read back from its JSON, its texts put back."""
    stream = SeedStream()
    out = []
    for event in published:
        said = stream.said(run_event_adapter.validate_json(event.model_dump_json()))
        if said is not None:
            out.append(hydrate(said, TEXTS))
    assert stream.ended
    return out


def round_of(number: int, speakers: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The reference's events for a round; `speakers` (name, label) in speaking order. Round 1's
    answers come in at once, here the last debater's first: its events follow that order."""
    came = speakers[::-1] if number == 1 else speakers
    responses = [{"model": name, "response": f"{label} in round {number}"} for name, label in came]
    return [
        {"type": "round_start", "data": {"round": number, "active_models": [name for name, _ in speakers]}},
        *({"type": "round_model_complete", "data": {"round": number, **r}} for r in responses),
        {"type": "round_complete", "data": {"round": number, "responses": responses}},
    ]


def final_of(model: str, text: str = VERDICT) -> list[dict[str, Any]]:
    half = len(text) // 2
    return [
        {"type": "final_start", "data": {"model": model}},
        {"type": "final_chunk", "data": {"chunk": text[:half]}},
        {"type": "final_chunk", "data": {"chunk": text[half:]}},
        {"type": "final_complete", "data": {"model": model, "response": text}},
    ]


def start_of(judge_mode: str, max_rounds: int, models: list[str]) -> dict[str, Any]:
    return {
        "type": "debate_start",
        "data": {
            "max_rounds": max_rounds,
            "format": "free_discussion",
            "judge_mode": judge_mode,
            "models": models,
        },
    }


DONE = {"type": "debate_complete"}
A, B, C = ("a", "a#1"), ("b", "b#1"), ("c", "c#1")


def test_external_judge_stopping_after_round_two() -> None:
    body = {"members": [{"model": "a"}, {"model": "b"}], "judge": "j", "max_rounds": 4}
    assert seed(play(body, answers(judge="STOP - clear."))) == [
        start_of("external_judge", 4, ["a", "b"]),
        *round_of(1, [A, B]),
        *round_of(2, [A, B]),
        {"type": "judge_decision", "data": {"round": 2, "continue": False, "reasoning": "STOP - clear."}},
        *final_of("j"),
        DONE,
    ]


def test_external_judge_going_on_to_the_last_round() -> None:
    """The judge is asked after rounds 2..max-1 only; the verdict follows the last round."""
    body = {"members": [{"model": "a"}, {"model": "b"}], "judge": "j", "max_rounds": 3}
    go_on = "CONTINUE - more to say.\nThe mustard question is open."
    assert seed(play(body, answers(judge=go_on))) == [
        start_of("external_judge", 3, ["a", "b"]),
        *round_of(1, [A, B]),
        *round_of(2, [A, B]),
        {"type": "judge_decision", "data": {"round": 2, "continue": True, "reasoning": go_on}},
        *round_of(3, [A, B]),
        *final_of("j"),
        DONE,
    ]


def test_a_judge_answer_naming_neither_word_goes_on_as_moot_did() -> None:
    """`continue` says what the debate did: moot goes on after an unreadable answer (the
    reference would have stopped), and the next round follows."""
    body = {"members": [{"model": "a"}, {"model": "b"}], "judge": "j", "max_rounds": 3}
    said = seed(play(body, answers(judge="Hard to say.")))
    [decision] = [s for s in said if s["type"] == "judge_decision"]
    assert decision["data"] == {"round": 2, "continue": True, "reasoning": "Hard to say."}
    assert [s["data"]["round"] for s in said if s["type"] == "round_start"] == [1, 2, 3]


def test_self_convergence_eliminates_and_the_first_remaining_sums_up() -> None:
    body = {
        "members": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
        "judge_mode": "self_convergence",
        "max_rounds": 4,
    }
    conceding = "CONVINCED: a#1 argued better.\nIts mustard point stands."
    assert seed(play(body, answers(convictions={("c", 3): conceding}))) == [
        start_of("self_convergence", 4, ["a", "b", "c"]),
        *round_of(1, [A, B, C]),
        *round_of(2, [A, B, C]),
        {"type": "convergence_status", "data": {"round": 2, "eliminated": [], "remaining": ["a", "b", "c"]}},
        *round_of(3, [A, B, C]),
        {
            "type": "model_eliminated",
            "data": {"round": 3, "model": "c", "convinced_by": "a", "reasoning": conceding},
        },
        {"type": "convergence_status", "data": {"round": 3, "eliminated": ["c"], "remaining": ["a", "b"]}},
        *round_of(4, [A, B]),  # the last round: no conviction check after it
        *final_of("a"),
        DONE,
    ]


def test_self_convergence_down_to_one_ends_at_once() -> None:
    body = {"members": [{"model": "a"}, {"model": "b"}], "judge_mode": "self_convergence", "max_rounds": 5}
    conceding = "CONVINCED"  # naming nobody: the reference's `convinced_by: null`
    assert seed(play(body, answers(convictions={("a", 2): conceding}))) == [
        start_of("self_convergence", 5, ["a", "b"]),
        *round_of(1, [A, B]),
        *round_of(2, [A, B]),
        {
            "type": "model_eliminated",
            "data": {"round": 2, "model": "a", "convinced_by": None, "reasoning": conceding},
        },
        {"type": "convergence_status", "data": {"round": 2, "eliminated": ["a"], "remaining": ["b"]}},
        *final_of("b"),
        DONE,
    ]


def test_display_only_plays_every_round_and_names_instances_of_one_model_apart() -> None:
    """The reference named a debater by its model; two debaters of one model are told apart by
    their labels (the reference could not), a model with one debater keeps its plain name."""
    body = {"members": [{"model": "a", "count": 2}, {"model": "b"}], "max_rounds": 2}
    a1, a2 = ("a#1", "a#1"), ("a#2", "a#2")
    assert seed(play(body, answers())) == [
        start_of("display_only", 2, ["a#1", "a#2", "b"]),
        *round_of(1, [a1, a2, B]),
        *round_of(2, [a1, a2, B]),
        DONE,
    ]


def test_every_turn_failing_ends_with_error_after_the_round() -> None:
    """A failed turn says `[Error: ...]` where its answer would be, as in the reference."""
    body = {"members": [{"model": "a"}, {"model": "b"}], "judge": "j"}
    published = play(body, lambda job: None)
    [failure] = [e for e in published if isinstance(e, DebateError)]
    failed = [
        {"model": "b", "response": f"[Error: {FAILURE}]"},
        {"model": "a", "response": f"[Error: {FAILURE}]"},
    ]
    assert seed(published) == [
        start_of("external_judge", 3, ["a", "b"]),
        {"type": "round_start", "data": {"round": 1, "active_models": ["a", "b"]}},
        *({"type": "round_model_complete", "data": {"round": 1, **f}} for f in failed),
        {"type": "round_complete", "data": {"round": 1, "responses": failed}},
        {"type": "error", "data": {"message": failure.message}},
    ]
    assert failure.message.startswith("every debater failed in round 1")


def test_a_failed_judge_call_ends_with_error() -> None:
    body = {"members": [{"model": "a"}, {"model": "b"}], "judge": "j", "max_rounds": 4}
    said = seed(play(body, lambda job: None if job.role == "judge" else turn_text(job)))
    assert [s["type"] for s in said[-2:]] == ["round_complete", "error"]
    assert "judge" in said[-1]["data"]["message"]


def test_a_cancelled_debate_ends_with_error() -> None:
    body = {"members": [{"model": "a"}, {"model": "b"}], "judge": "j"}
    said = seed(play(body, answers(), cancel_after=1))
    assert said[-1] == {"type": "error", "data": {"message": "cancelled by the client"}}
    assert [s["type"] for s in said] == ["debate_start", "round_start", "round_model_complete", "error"]


def test_fields_are_the_references_for_every_event() -> None:
    two = [{"model": "a"}, {"model": "b"}]
    said = [
        *seed(play({"members": two, "judge": "j", "max_rounds": 3}, answers(judge="CONTINUE"))),
        *seed(
            play(
                {"members": two, "judge_mode": "self_convergence", "max_rounds": 3},
                answers(convictions={("a", 2): "CONVINCED: b#1"}),
            )
        ),
        *seed(play({"members": two}, lambda job: None)),
    ]
    assert {s["type"] for s in said} == set(SEED_NAMES.values())
    for s in said:
        if s["type"] == "debate_complete":
            assert list(s) == ["type"]
            continue
        assert list(s) == ["type", "data"]
        assert list(s["data"]) == REFERENCE_FIELDS[s["type"]], s["type"]
        if s["type"] == "round_complete":
            assert all(list(r) == ["model", "response"] for r in s["data"]["responses"])


def test_calls_runs_and_anything_after_the_end_are_not_sent() -> None:
    published = play({"members": [{"model": "a"}, {"model": "b"}], "judge": "j"}, answers())
    stream = SeedStream()
    sent = [e.type for e in published if stream.said(run_event_adapter.validate_json(e.model_dump_json()))]
    assert sent[-1] == "debate.completed" and published[-1].type == "run.completed"
    assert not any(t.startswith(("call.", "run.")) for t in sent)
    assert len(sent) == len([e for e in published if e.type in SEED_NAMES])


def test_a_run_ending_without_its_debate_event_still_ends_the_stream() -> None:
    """Events gone from JetStream: the gateway builds the run's end event from its record."""
    published = play({"members": [{"model": "a"}, {"model": "b"}]}, answers())
    completed, failed = SeedStream(), SeedStream()
    assert completed.said(published[-1]) == {"type": "debate_complete"} and completed.ended
    failure = play({"members": [{"model": "a"}, {"model": "b"}]}, lambda job: None)[-1]
    assert failure.type == "run.failed"
    assert failed.said(failure) == {"type": "error", "data": {"message": failure.reason}}


class Texts:
    """The text store, as far as `hydrated` reads it."""

    async def get_many(self, shas: set[str]) -> dict[str, str]:
        return {sha: TEXTS[sha] for sha in shas}


async def test_the_wire_is_the_references_data_lines_only() -> None:
    """Long texts put back, each event one `data:` line of `json.dumps` (ASCII, its separators),
    no `event:` or `id:`; the stream stops after `debate_complete`, unread what follows."""
    long_answer = "Caf\u00e9 logic:\n" + "a hot dog is a sandwich because of the bun. " * 10

    def answer(job: CallJob) -> str | None:
        return long_answer if (job.model, job.iteration) == ("a", 1) else answers()(job)

    published = play({"members": [{"model": "a"}, {"model": "b"}], "judge": "j", "max_rounds": 2}, answer)
    read: list[str] = []
    closed = False

    async def replayed() -> AsyncGenerator[ServerSentEvent, None]:
        nonlocal closed
        try:
            for seq, event in enumerate(published, 1):
                read.append(event.type)
                # An event stored under the reference's name (an older run's) is read all the same.
                name = SEED_NAMES[event.type] if event.type == "debate.started" else event.type
                yield ServerSentEvent(
                    data={**json.loads(event.model_dump_json()), "type": name, "seq": seq}, event=name
                )
        finally:
            closed = True

    sent = [e async for e in seed_events(replayed(), cast(TextStore, Texts()))]
    expected = seed(published)
    assert any(
        s["data"].get("response") == long_answer for s in expected if s["type"] == "round_model_complete"
    )
    wire = b"".join(
        format_sse_event(data_str=e.raw_data, event=e.event, id=e.id, comment=e.comment) for e in sent
    )
    assert wire == b"".join(f"data: {json.dumps(s)}\n\n".encode() for s in expected)
    assert wire.isascii() and b"\\u00e9" in wire
    assert all(line.startswith(b"data: {") for line in wire.split(b"\n\n")[:-1])
    assert read[-1] == "debate.completed" and closed  # run.completed was never read


def view_of(transition: Transition[Any], mode: str) -> AnyRunView:
    """A run's view as the gateway has it: its texts (the request) put back."""
    keep(transition)
    view = protocol_for(mode).view(transition.state)
    return run_view_adapter.validate_python(hydrate(view.model_dump(mode="json"), TEXTS))


def test_only_a_debate_has_a_seed_stream() -> None:
    debate_request = DebateRequest.model_validate(
        {"prompt": "p", "members": [{"model": "a"}, {"model": "b"}]}
    )
    require_debate(view_of(debate.start("r1", debate_request, T0), "debate"))

    consortium_request = ConsortiumRequest.model_validate(
        {"prompt": "p", "members": [{"model": "a"}], "arbiter": "z"}
    )
    consortium = protocol_for("consortium").start("r2", consortium_request, T0)
    with pytest.raises(ApiError) as refused:
        require_debate(view_of(consortium, "consortium"))
    assert (refused.value.status, refused.value.param, refused.value.code) == (409, "format", "not_a_debate")
    assert "consortium" in refused.value.message

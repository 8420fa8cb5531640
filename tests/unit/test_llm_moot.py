"""The `llm` plugin's pure parts: `-m MODEL:COUNT`, what a prompt and its conversation become as a
run submission, answers from run views, and a run's event stream resumed after a break.

The plugin with the real `llm` CLI against a running stack: tests/e2e/test_llm_plugin.py.
"""

from __future__ import annotations

import json
from typing import Any

import click
import httpx
import llm
import pytest
from llm.parts import TextPart

from llm_moot import gateway as gateway_module
from llm_moot.commands import members_of
from llm_moot.gateway import Gateway, RunFailed, answer_of
from llm_moot.models import (
    RUN_ID_KEY,
    ConsortiumModel,
    DebateModel,
    MootModel,
    model_for,
    previous_run_id,
    submission,
)

PANEL = {"mode": "consortium", "members": [{"model": "m1", "count": 2}], "arbiter": "arb"}
COURT = {"mode": "debate", "members": [{"model": "d1"}, {"model": "d2"}], "judge": "judge_stop"}


def test_members_take_a_count_after_the_last_colon_and_add_up() -> None:
    assert members_of(("m1:2", "ollama:llama3", "m1", "m2")) == [
        {"model": "m1", "count": 3},
        {"model": "ollama:llama3", "count": 1},
        {"model": "m2", "count": 1},
    ]
    with pytest.raises(click.BadParameter, match="at least 1"):
        members_of(("m1:0",))


def test_each_mode_gets_the_options_its_request_takes() -> None:
    assert isinstance(model_for("panel", PANEL), ConsortiumModel)
    assert isinstance(model_for("court", COURT), DebateModel)
    council = model_for("c", {"mode": "council", "members": [{"model": "m1"}], "chairman": "m2"})
    assert type(council) is MootModel and str(council) == "moot council: c"
    assert set(ConsortiumModel.Options.model_fields) == {
        "temperature",
        "max_tokens",
        "confidence_threshold",
        "max_iterations",
        "min_iterations",
    }
    assert set(DebateModel.Options.model_fields) == {"max_rounds"}


def _prompt(
    model: MootModel, text: str, earlier: list[llm.Message] | None = None, **options: Any
) -> llm.Prompt:
    """The prompt `llm` hands the model: the earlier messages, then this turn's (not executed)."""
    return model.prompt(text, messages=earlier, **options).prompt


def test_a_new_prompt_runs_the_configuration_with_its_options() -> None:
    model = model_for("panel", PANEL)
    prompt = _prompt(model, "Is P = NP?", max_iterations=2)
    assert submission("panel", "consortium", prompt, None) == {
        "config": "panel",
        "prompt": "Is P = NP?",
        "max_iterations": 2,
    }


def test_a_system_prompt_is_the_request_s_or_a_debate_s_first_message() -> None:
    panel, court = model_for("panel", PANEL), model_for("court", COURT)
    chain = [llm.system("Be brief.")]
    assert (
        submission("panel", "consortium", _prompt(panel, "Is P = NP?", chain), None)["system"] == "Be brief."
    )
    debate = submission("court", "debate", _prompt(court, "Is P = NP?", chain), None)
    assert "system" not in debate
    assert debate["history"] == [{"role": "system", "content": "Be brief."}]


def test_a_conversation_after_a_moot_answer_continues_its_run() -> None:
    model = model_for("panel", PANEL)
    chain = [
        llm.user("Is P = NP?"),
        llm.assistant(TextPart(text="Nobody knows.", provider_metadata={RUN_ID_KEY: "run-1"})),
    ]
    prompt = _prompt(model, "And why?", chain)
    assert previous_run_id(prompt, None) == "run-1"
    assert submission("panel", "consortium", prompt, "run-1") == {
        "config": "panel",
        "prompt": "And why?",
        "continue_from": "run-1",
    }


def test_a_conversation_after_another_model_s_answer_is_sent_as_history() -> None:

    model = model_for("panel", PANEL)
    chain = [
        llm.user("Is P = NP?"),
        llm.assistant(TextPart(text="Probably not.", provider_metadata={"other": "x"})),
    ]
    prompt = _prompt(model, "Ask the panel.", chain)
    assert previous_run_id(prompt, None) is None
    assert submission("panel", "consortium", prompt, None)["history"] == [
        {"role": "user", "content": "Is P = NP?"},
        {"role": "assistant", "content": "Probably not."},
    ]


def test_the_answer_of_each_mode_and_of_runs_without_one() -> None:
    assert answer_of({"status": "completed", "mode": "consortium", "result": {"synthesis": "S"}}) == "S"
    assert answer_of({"status": "completed", "mode": "debate", "result": {"text": "V", "by": "judge"}}) == "V"
    with pytest.raises(RunFailed, match="run r failed: every member call failed"):
        answer_of({"id": "r", "status": "failed", "reason": "every member call failed", "result": None})
    with pytest.raises(RunFailed, match="no final answer"):
        answer_of({"id": "r", "status": "completed", "mode": "debate", "result": None})


def test_a_broken_event_stream_is_resumed_after_the_last_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_module, "RECONNECT_PAUSE_SECONDS", 0.0)
    asked_after: list[str | None] = []

    def sse(seq: int, event: str) -> str:
        return f"id: {seq}\nevent: {event}\ndata: {json.dumps({'type': event, 'seq': seq})}\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        asked_after.append(request.headers.get("Last-Event-ID"))
        # The first connection breaks after one event; the second carries the run to its end.
        body = (
            sse(1, "run.created")
            if len(asked_after) == 1
            else sse(2, "final.chunk") + sse(3, "run.completed")
        )
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)

    with Gateway("key", "http://gateway.test", transport=httpx.MockTransport(handler)) as gateway:
        events = [e.type for e in gateway.events("r")]
    assert events == ["run.created", "final.chunk", "run.completed"]
    assert asked_after == [None, "1"]


def test_a_refusal_names_each_field(monkeypatch: pytest.MonkeyPatch) -> None:
    error = {
        "error": {"message": "invalid", "errors": [{"param": "arbiter", "message": "unknown model 'x'"}]}
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json=error)

    with Gateway("key", "http://gateway.test", transport=httpx.MockTransport(handler)) as gateway:
        with pytest.raises(gateway_module.GatewayError) as refused:
            gateway.submit({"prompt": "p"})
    assert refused.value.status == 422 and str(refused.value) == "arbiter: unknown model 'x'"

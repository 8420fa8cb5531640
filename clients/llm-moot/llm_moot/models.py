"""Saved configurations as `llm` models: `llm -m panel "..."` runs the configuration `panel`.

Each answer is the run's (a consortium's synthesis, a debate's verdict, ...), logged by `llm`
like any model's. The run's id travels with the answer twice: in `response_json` (shown by
`llm logs --json`, read back by an in-process conversation) and in the answer's
`provider_metadata`, which `llm` (0.32+) stores with the message and hands back in
`prompt.messages` when `llm -c` reloads the conversation from its log. Continuing a moot run
sends `continue_from`, so the gateway gives the models the run's whole conversation; a
conversation whose last answer came from another model is sent as `history` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llm
from llm.parts import Message, StreamEvent, TextPart
from pydantic import Field

from llm_moot.gateway import Gateway, GatewayError, RunFailed, answer_of

# Where the run's id is kept on the answer's text part.
RUN_ID_KEY = "moot_run_id"
# The modes whose request has no `system` field: a debate's system prompts are per debater, so
# a system prompt given to `llm` goes first in the debate's conversation, as the gateway's
# OpenAI endpoint does.
NO_SYSTEM_FIELD = frozenset({"debate"})


class MootModel(llm.KeyModel):
    """A saved configuration of the key's owner, run on the gateway."""

    needs_key = "moot"
    key_env_var = "MOOT_API_KEY"
    can_stream = True

    class Options(llm.Options):
        temperature: float | None = Field(None, ge=0.0, le=2.0, description="Every model call's temperature")
        max_tokens: int | None = Field(None, ge=1, description="Every model call's token limit")

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.model_id = name
        self.config = config
        self.mode: str = config.get("mode", "consortium")

    def __str__(self) -> str:
        return f"moot {self.mode}: {self.model_id}"

    def execute(
        self,
        prompt: llm.Prompt,
        stream: bool,
        response: llm.Response,
        conversation: llm.Conversation | None,
        key: str | None,
    ) -> Iterator[str | StreamEvent]:
        body = submission(self.model_id, self.mode, prompt, previous_run_id(prompt, conversation))
        with Gateway(key) as gateway:
            try:
                run_id = gateway.submit(body)
            except GatewayError as exc:
                raise llm.ModelError(f"{self.model_id}: {exc}") from exc
            streamed = False
            try:
                for event in gateway.events(run_id):
                    # A debate's verdict is written as it streams; any other answer comes whole.
                    if stream and event.type == "final.chunk" and event.data.get("delta"):
                        streamed = True
                        yield _text(event.data["delta"], run_id)
                view = gateway.run(run_id)
            except KeyboardInterrupt:
                gateway.cancel(run_id)
                raise
            except GatewayError as exc:
                raise llm.ModelError(f"run {run_id}: {exc}") from exc
        response.response_json = {
            "run_id": run_id,
            "mode": view.get("mode"),
            "status": view.get("status"),
            "config": view.get("config"),
            "continued_from": view.get("continued_from"),
            "usage": view.get("usage"),
        }
        usage = view.get("usage") or {}
        response.set_usage(input=usage.get("input_tokens"), output=usage.get("output_tokens"))
        try:
            answer = answer_of(view)
        except RunFailed as exc:
            raise llm.ModelError(str(exc)) from exc
        if not streamed:
            yield _text(answer, run_id)


class ConsortiumModel(MootModel):
    class Options(MootModel.Options):
        confidence_threshold: float | None = Field(
            None, ge=0.0, le=1.0, description="Stop once the arbiter is this confident"
        )
        max_iterations: int | None = Field(None, ge=1, description="Iterations at most")
        min_iterations: int | None = Field(None, ge=1, description="Iterations at least")


class DebateModel(MootModel):
    class Options(llm.Options):
        max_rounds: int | None = Field(None, ge=1, description="Rounds at most")


def model_for(name: str, config: dict[str, Any]) -> MootModel:
    """The `llm` model of a saved configuration, with the options its mode takes."""
    classes: dict[str, type[MootModel]] = {"consortium": ConsortiumModel, "debate": DebateModel}
    return classes.get(config.get("mode", "consortium"), MootModel)(name, config)


def _text(chunk: str, run_id: str) -> StreamEvent:
    return StreamEvent(type="text", chunk=chunk, provider_metadata={RUN_ID_KEY: run_id})


def _plain(message: Message) -> str:
    return "".join(part.text for part in message.parts if isinstance(part, TextPart))


def previous_run_id(prompt: llm.Prompt, conversation: llm.Conversation | None) -> str | None:
    """The run the conversation's last answer came from; None when it is new or that answer is
    another model's."""
    if conversation is not None and conversation.responses:
        last = conversation.responses[-1]
        kept = last.response_json if isinstance(last.model, MootModel) else None
        if isinstance(kept, dict) and isinstance(kept.get("run_id"), str):
            return str(kept["run_id"])
    for message in reversed(prompt.messages[:-1]):
        if message.role == "assistant":
            for part in message.parts:
                run_id = (
                    (part.provider_metadata or {}).get(RUN_ID_KEY) if isinstance(part, TextPart) else None
                )
                if isinstance(run_id, str):
                    return run_id
            return None
    return None


def submission(name: str, mode: str, prompt: llm.Prompt, continue_from: str | None) -> dict[str, Any]:
    """The run of saved configuration `name` that answers `prompt`: its options as overrides, and
    the conversation so far (`continue_from` a moot run, else the earlier messages as history)."""
    body: dict[str, Any] = {"config": name, "prompt": prompt.prompt}
    body.update(prompt.options.model_dump(exclude_none=True))
    chain = prompt.messages
    system = prompt.system or next((_plain(m) for m in reversed(chain) if m.role == "system"), "")
    history: list[dict[str, str]] = []
    if continue_from is not None:
        body["continue_from"] = continue_from
    else:
        history = [
            {"role": m.role, "content": _plain(m)}
            for m in chain[:-1]
            if m.role in ("user", "assistant") and _plain(m)
        ]
    if system:
        if mode not in NO_SYSTEM_FIELD:
            body["system"] = system
        elif continue_from is None:  # a continued debate's conversation already opens with it
            history.insert(0, {"role": "system", "content": system})
    if history:
        body["history"] = history
    return body

"""docs/asyncapi.json, the NATS contract: checked in, current, and a valid AsyncAPI 3 document."""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

import pytest
from faststream.specification.asyncapi.v3_0_0.schema import ApplicationSchema

from moot.messages import CallJob
from moot.runtime.contract import event_type, run_event_models

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "asyncapi.py"


@cache
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("asyncapi_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def generated() -> str:
    text: str = script().generate()
    return text


@pytest.fixture
def doc() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(generated())
    return document


def test_checked_in_document_is_current() -> None:
    path: Path = script().DOCUMENT
    assert path.exists(), f"{path} is missing; create it with: {script().REGENERATE}"
    assert path.read_text(encoding="utf-8") == generated(), (
        f"docs/asyncapi.json is stale: the NATS contract (a subscriber, a subject or a model in "
        f"moot.messages) changed. Regenerate it with: {script().REGENERATE}"
    )


def test_generation_is_deterministic() -> None:
    assert script().generate() == generated()


def test_document_is_asyncapi_3(doc: dict[str, Any]) -> None:
    # faststream's own model of the specification, strict about the parts it knows.
    ApplicationSchema.model_validate(doc)
    assert doc["asyncapi"] == "3.0.0"
    for operation in doc["operations"].values():
        assert operation["action"] in {"send", "receive"}
        channel = resolve(doc, operation["channel"]["$ref"])
        for message in operation["messages"]:
            # An operation's messages must be messages of its own channel.
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
            assert resolve(doc, message["$ref"]) in channel["messages"].values()


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    for reference in references(doc):
        resolve(doc, reference)


def test_one_channel_per_message_type(doc: dict[str, Any]) -> None:
    channels = doc["channels"]
    assert channels["jobs.calls"]["address"] == "moot.jobs.calls"
    assert payload_of(doc, channels["jobs.calls"]) == CallJob.__name__
    for model in run_event_models():
        channel = channels[event_type(model)]
        assert channel["address"] == f"moot.runs.{{run_id}}.{event_type(model)}"
        assert "run_id" in channel["parameters"]
        assert payload_of(doc, channel) == model.__name__


def test_consumers_receive_what_their_subjects_match(doc: dict[str, Any]) -> None:
    every_event = sorted(model.__name__ for model in run_event_models())
    received = {
        key: sorted(doc["channels"][key]["messages"])
        for key, operation in doc["operations"].items()
        if operation["action"] == "receive"
    }
    assert received == {
        "moot-member-worker": ["CallJob"],
        "moot-arbiter": ["CallCompleted", "CallFailed"],
        "moot-recorder": every_event,
        "gateway-sse": every_event,
        # JetStream's advisories and dead letters (copies of any message): no model of ours.
        "moot-dead-letter-writer": [],
        "moot-dead-letter-runs": [],
    }
    assert "Published by member-worker" in doc["channels"]["call.completed"]["description"]
    assert (
        "Received by gateway-sse, moot-arbiter, moot-recorder."
        in (doc["channels"]["call.completed"]["description"])
    )


def payload_of(doc: dict[str, Any], channel: dict[str, Any]) -> str:
    (message,) = channel["messages"].values()
    return resolve(doc, message["$ref"])["payload"]["$ref"].rsplit("/", 1)[1]


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in references(value)]
    if isinstance(node, list):
        return [r for value in node for r in references(value)]
    return []


def resolve(doc: dict[str, Any], reference: str) -> Any:
    assert reference.startswith("#/"), reference
    node: Any = doc
    for part in reference[2:].split("/"):
        key = unquote(part).replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and key in node, f"{reference} does not resolve"
        node = node[key]
    return node

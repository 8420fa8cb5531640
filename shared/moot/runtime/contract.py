"""The NATS contract as an AsyncAPI document: every subject, its message model, who publishes it
and who consumes it.

The document is faststream's, built from a broker on which the caller (`scripts/asyncapi.py`)
has registered each service's real subscribers through its `handlers.register`: a changed
subject, consumer or handler changes the document, and this package imports no service.
Publishers are declared here instead: the services publish with `moot.runtime.nats.publish`
(message ids, retries), which faststream cannot see. Payload schemas are the pydantic models of
`moot.messages`.
"""

from __future__ import annotations

import json
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from faststream.nats import NatsBroker, NatsMessage
from faststream.specification import AsyncAPI
from faststream.specification.asyncapi.utils import ref
from pydantic import BaseModel

import moot
from moot.messages import AnyRunEvent, CallCompleted, CallFailed, CallJob, FinalChunk
from moot.runtime.nats import MSG_ID
from moot.runtime.subjects import Names

RUN_ID = "{run_id}"
# Where a developer's NATS listens; the document names a server, the deployment chooses it.
SERVER_URL = "nats://localhost:4222"

# Who publishes what. A run's state machine (`moot.protocols`) returns events and jobs as an
# outbox stored with its state (`moot.runtime.runstore`); whichever service wrote the state
# publishes it: the gateway a run's first commands and its cancellation, the arbiter the rest.
OUTBOX_PUBLISHERS = ("gateway", "arbiter")
WORKER_EVENTS: tuple[type[BaseModel], ...] = (CallCompleted, CallFailed, FinalChunk)


@dataclass(frozen=True)
class Published:
    """One message type on its subject, and the services that publish it."""

    key: str  # the channel's name in the document
    subject: str  # with `{run_id}` where the run's id goes
    model: type[BaseModel]
    by: tuple[str, ...]
    stream: str


def run_event_models() -> list[type[BaseModel]]:
    """Every run event model, in the order of `moot.messages.AnyRunEvent`."""
    return list(typing.get_args(AnyRunEvent))


def event_type(model: type[BaseModel]) -> str:
    return str(model.model_fields["type"].default)


def published(names: Names) -> list[Published]:
    """The call job queue, then one entry per run event type."""
    items = [
        Published("jobs.calls", names.call_jobs, CallJob, OUTBOX_PUBLISHERS, names.jobs_stream),
    ]
    for model in run_event_models():
        kind = event_type(model)
        by = ("member-worker",) if model in WORKER_EVENTS else OUTBOX_PUBLISHERS
        items.append(Published(kind, names.run_event(RUN_ID, kind), model, by, names.runs_stream))
    return items


def documentation_broker() -> NatsBroker:
    """A broker that is never connected: only its registrations are read."""
    return NatsBroker(SERVER_URL, description="NATS with JetStream")


def declare(broker: NatsBroker, names: Names) -> None:
    """Declare, on `broker`, what faststream cannot find in the services' subscribers."""
    for item in published(names):
        broker.publisher(
            item.subject,
            title=item.key,
            schema=item.model,
            description=f"Published by {', '.join(item.by)} to the stream `{item.stream}`.",
        )

    # The gateway's SSE opens an ephemeral ordered consumer per client request with nats-py
    # (`moot_gateway.routes.runs.replay`), not a faststream subscriber; this stands in for it.
    @broker.subscriber(names.run_events(RUN_ID), title="gateway-sse")
    async def stream_run_events(msg: NatsMessage) -> None:
        """gateway: a run's events as SSE (`GET /v1/runs/{run_id}/events`), until its terminal event."""


def asyncapi(broker: NatsBroker, names: Names) -> dict[str, Any]:
    """The AsyncAPI document of `broker`, on which the services' subscribers are registered."""
    declare(broker, names)
    with warnings.catch_warnings():
        # faststream warns, then keeps one of the two, when names collide: that loses a channel.
        warnings.simplefilter("error", RuntimeWarning)
        spec = AsyncAPI(
            broker,
            title="moot NATS contract",
            version=moot.__version__,
            description=_description(names),
        ).to_specification()
    doc: dict[str, Any] = json.loads(spec.to_json())
    _link_subscribers(doc)
    _describe_parameters(doc)
    _describe_headers(doc)
    return doc


def render(doc: dict[str, Any]) -> str:
    """The document as checked in: sorted keys, so that regenerating it changes nothing."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _description(names: Names) -> str:
    return (
        f"Every subject below is shown in the default namespace `{names.namespace}` "
        "(`MOOT_NAMESPACE` prefixes every subject, stream, consumer and bucket).\n\n"
        f"- Stream `{names.runs_stream}` (limits retention) holds every run event on "
        f"`{names.run_event(RUN_ID, '{type}')}`: the replayable history of a run.\n"
        f"- Stream `{names.jobs_stream}` (work queue) holds the model calls to make, on "
        f"`{names.call_jobs}`.\n"
        f"- KV bucket `{names.state_bucket}` (not a channel): one key per run, its protocol state "
        "and the outbox of events and jobs still to publish.\n\n"
        f"Every message carries a deterministic `{MSG_ID}` header, so JetStream drops a "
        "republished duplicate and consumers are idempotent. The durable consumers "
        f"(`{names.worker_consumer}`, `{names.arbiter_consumer}`, `{names.recorder_consumer}`) "
        "pull with explicit acks.\n\n"
        "Generated by `scripts/asyncapi.py` from the services' subscribers and `moot.messages`; "
        "do not edit by hand."
    )


def _last_key(reference: str) -> str:
    """The last name in a `$ref` (a JSON pointer in a URI fragment), decoded."""
    return unquote(reference.rsplit("/", 1)[1]).replace("~1", "/").replace("~0", "~")


def _channel_key_of(doc: dict[str, Any], channel_ref: str) -> str:
    return _last_key(channel_ref)


def _matches(pattern: str, subject: str) -> bool:
    """Whether a subscription on `pattern` receives `subject` (a `{param}` is one token in either)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have):
            return False
        if token == "*" or token.startswith("{"):
            continue
        if token != have[i]:
            return False
    return len(want) == len(have)


def _operations(doc: dict[str, Any], action: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(operation key, channel key, channel) of every operation with `action`."""
    for key, operation in doc["operations"].items():
        if operation["action"] == action:
            channel_key = _channel_key_of(doc, operation["channel"]["$ref"])
            yield key, channel_key, doc["channels"][channel_key]


def _link_subscribers(doc: dict[str, Any]) -> None:
    """Give each subscription the messages it receives.

    A handler that takes the raw message has no payload type for faststream to read, so its
    channel would say "empty". The messages it receives are the published ones whose subject its
    subscription matches: a changed subscription subject changes them.
    """
    # Sorted: faststream lists publishers in no fixed order, and the document must not flap.
    sent = sorted(_operations(doc, "send"))
    received_by: dict[str, list[str]] = {}
    for operation_key, channel_key, channel in _operations(doc, "receive"):
        for old in channel["messages"].values():
            doc["components"]["messages"].pop(_last_key(old["$ref"]), None)
        channel["messages"] = {}
        for _, sent_key, sent_channel in sent:
            if _matches(channel["address"], sent_channel["address"]):
                for message in sent_channel["messages"].values():
                    name = _payload_name(doc, message["$ref"])
                    channel["messages"][name] = message
                received_by.setdefault(sent_key, []).append(channel_key)
        doc["operations"][operation_key]["messages"] = [
            ref("channels", channel_key, "messages", name) for name in channel["messages"]
        ]
    for _, sent_key, sent_channel in sent:
        readers = ", ".join(sorted(received_by.get(sent_key, []))) or "nobody"
        sent_channel["description"] = f"{sent_channel.get('description', '')} Received by {readers}.".strip()
    schemas = doc["components"]["schemas"]
    if "EmptyPayload" in schemas and "EmptyPayload" not in json.dumps(doc["components"]["messages"]):
        del schemas["EmptyPayload"]


def _payload_name(doc: dict[str, Any], message_ref: str) -> str:
    """`#/components/messages/call.completed:Message` -> `CallCompleted` (its payload's schema)."""
    message = doc["components"]["messages"][_last_key(message_ref)]
    return _last_key(message["payload"]["$ref"])


def _describe_parameters(doc: dict[str, Any]) -> None:
    for channel in doc["channels"].values():
        if RUN_ID in channel.get("address", ""):
            channel["parameters"] = {
                "run_id": {"description": "The run's id, as the gateway answered `POST /v1/runs`."}
            }


def _describe_headers(doc: dict[str, Any]) -> None:
    header = {
        "type": "string",
        "description": (
            "Deterministic message id (a job's `call_id`, an event's `event_id()`): JetStream drops "
            "a duplicate published within the stream's duplicate window."
        ),
    }
    for message in doc["components"]["messages"].values():
        message["headers"] = {"type": "object", "properties": {MSG_ID: header}, "required": [MSG_ID]}

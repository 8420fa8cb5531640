"""Dead letters: what a consumer could not process is kept, with the reason, never silently lost.

A dead letter is a copy of the original message (its payload and headers, `traceparent`
included) in the `<NS>_DEAD` stream under `<ns>.dead.<consumer>`, plus `Moot-Dead-*` headers
naming the reason, the original subject, stream and sequence, the consumer and how often it was
delivered. The original `Nats-Msg-Id` travels as `Moot-Dead-Msg-Id`: the dead-letter stream
deduplicates by its own id (`dead:<stream>:<seq>:<consumer>`), so writing one twice (a retried
batch, two arbiters on one advisory) keeps one copy, while the same message given up by two
consumers (the arbiter and the recorder both read run events) is two dead letters.

Who writes them: a consumer that cannot decode a message (`undecodable: <error type>`), the
recorder for an event Postgres rejects or whose texts are gone, and the arbiter for every
message that reached a consumer's `max_deliver` (JetStream's advisory; `moot_arbiter.dead_letters`).
The arbiter also reads every dead letter and fails its run (`DeadLettered`).
`moot dead-letters list|replay` shows them and sends them back where they came from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from moot.observability import metrics
from moot.runtime.subjects import Names

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
REASON = "Moot-Dead-Reason"
SUBJECT = "Moot-Dead-Subject"
STREAM = "Moot-Dead-Stream"
SEQUENCE = "Moot-Dead-Sequence"
CONSUMER = "Moot-Dead-Consumer"
DELIVERIES = "Moot-Dead-Deliveries"
RUN_ID = "Moot-Dead-Run-Id"
ORIGINAL_MSG_ID = "Moot-Dead-Msg-Id"
# Set when the original was no longer in its stream (acked or deleted meanwhile): nothing to replay.
LOST = "Moot-Dead-Lost"
AT = "Moot-Dead-At"

# Bounded values of the metric's `reason` label; the header says more.
Kind = Literal["max_deliveries", "undecodable", "rejected", "missing_text"]

PUBLISH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Origin:
    """Where a message came from and who gave up on it."""

    subject: str
    stream: str
    sequence: int
    consumer: str
    deliveries: int

    @classmethod
    def of(cls, msg: Msg) -> Origin:
        """The origin of a message a durable consumer delivered."""
        meta = msg.metadata
        return cls(msg.subject, meta.stream, meta.sequence.stream, meta.consumer, meta.num_delivered or 1)


def run_id_of(names: Names, subject: str, payload: bytes) -> str | None:
    """The run a message belongs to: from a run event's subject, from a call job's body, or None."""
    if subject.startswith(f"{names.namespace}.runs."):
        return names.run_id_of(subject) or None
    try:
        run_id = json.loads(payload).get("run_id")
    except Exception:  # not JSON, or not an object: whose it is cannot be read
        return None
    return run_id if isinstance(run_id, str) and run_id else None


async def write(
    js: JetStreamContext,
    names: Names,
    origin: Origin,
    kind: Kind,
    reason: str,
    payload: bytes,
    headers: dict[str, str] | None,
    *,
    lost: bool = False,
) -> bool:
    """Copy a message to the dead-letter stream; False when it was there already (deduplicated).

    Raises when the stream cannot be written: the caller must not ack the original then.
    """
    original = dict(headers or {})
    dead = {k: v for k, v in original.items() if not _ours(k)}
    if MSG_ID in original:
        dead[ORIGINAL_MSG_ID] = original[MSG_ID]
    run_id = run_id_of(names, origin.subject, payload)
    dead.update(
        {
            MSG_ID: f"dead:{origin.stream}:{origin.sequence}:{origin.consumer}",
            REASON: reason,
            SUBJECT: origin.subject,
            STREAM: origin.stream,
            SEQUENCE: str(origin.sequence),
            CONSUMER: origin.consumer,
            DELIVERIES: str(origin.deliveries),
            AT: datetime.now(UTC).isoformat(),
        }
    )
    if run_id:
        dead[RUN_ID] = run_id
    if lost:
        dead[LOST] = "true"
    ack = await js.publish(
        names.dead_letter(origin.consumer),
        payload,
        timeout=PUBLISH_TIMEOUT_SECONDS,
        stream=names.dead_stream,
        headers=dead,
    )
    if ack.duplicate:
        return False
    metrics.dead_letters.add(1, {"consumer": origin.consumer, "reason": kind})
    log.error(
        "dead letter: %s seq %d (%s) from %s after %d deliveries%s: %s",
        origin.stream, origin.sequence, origin.subject, origin.consumer, origin.deliveries,
        f", run {run_id}" if run_id else "", reason,
    )  # fmt: skip
    return True


async def write_delivered(js: JetStreamContext, names: Names, msg: Msg, kind: Kind, reason: str) -> bool:
    """`write` for a message a consumer holds (its origin from the delivery's metadata)."""
    return await write(js, names, Origin.of(msg), kind, reason, msg.data, dict(msg.headers or {}))


def _ours(header: str) -> bool:
    """Headers of the dead letter itself, not of the original: its id, what it says, and the stream
    check nats-py adds when publishing to a named stream."""
    return header == MSG_ID or header.startswith(("Moot-Dead-", "Nats-Expected-"))


def undecodable(exc: BaseException) -> str:
    """The reason for a message that could not be decoded: its error's type, never its content."""
    return f"undecodable: {type(exc).__name__}"


# --------------------------------------------------------------------------- reading them back


@dataclass
class DeadLetter:
    """One dead letter as the dead-letter stream holds it."""

    seq: int  # its sequence in the dead-letter stream: its id for `moot dead-letters replay`
    time: datetime | None
    reason: str
    subject: str
    stream: str
    sequence: int
    consumer: str
    deliveries: int
    run_id: str | None
    msg_id: str | None
    lost: bool
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, raw: RawStreamMsg) -> DeadLetter:
        h: dict[str, str] = dict(raw.headers or {})
        return cls(
            seq=raw.seq or 0,
            time=raw.time,
            reason=h.get(REASON, ""),
            subject=h.get(SUBJECT, ""),
            stream=h.get(STREAM, ""),
            sequence=int(h.get(SEQUENCE) or 0),
            consumer=h.get(CONSUMER, ""),
            deliveries=int(h.get(DELIVERIES) or 0),
            run_id=h.get(RUN_ID),
            msg_id=h.get(ORIGINAL_MSG_ID),
            lost=h.get(LOST) == "true",
            data=raw.data or b"",
            headers=h,
        )

    def original_headers(self) -> dict[str, str]:
        """The headers the original message had, its Nats-Msg-Id included."""
        h = {k: v for k, v in self.headers.items() if not _ours(k)}
        if self.msg_id:
            h[MSG_ID] = self.msg_id
        return h

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.seq,
            "time": self.time.isoformat() if self.time else None,
            "reason": self.reason,
            "subject": self.subject,
            "run_id": self.run_id,
            "stream": self.stream,
            "sequence": self.sequence,
            "consumer": self.consumer,
            "deliveries": self.deliveries,
            "msg_id": self.msg_id,
            "bytes": len(self.data),
        }


async def read_all(js: JetStreamContext, names: Names) -> list[DeadLetter]:
    """Every dead letter the stream holds, oldest first."""
    letters: list[DeadLetter] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(names.dead_stream, seq, next=True)
        except NotFoundError:
            return letters
        letters.append(DeadLetter.of(raw))
        seq = (raw.seq or seq) + 1


async def read_one(js: JetStreamContext, names: Names, seq: int) -> DeadLetter | None:
    try:
        return DeadLetter.of(await js.get_msg(names.dead_stream, seq))
    except NotFoundError:
        return None


class NotReplayed(Exception):
    """A dead letter that cannot be sent back now (the reason is the message)."""


async def replay(js: JetStreamContext, names: Names, letter: DeadLetter) -> int:
    """Republish a dead letter to its original subject with its original Nats-Msg-Id, then delete
    it from the dead-letter stream; the new stream sequence. NotReplayed when nothing was sent.

    Within the stream's duplicate window (2 minutes) of the original publish, JetStream drops a
    message with the same id: then the dead letter stays, to be replayed later.
    """
    if letter.lost:
        raise NotReplayed("the original was no longer in its stream when it was dead-lettered")
    if not letter.subject:
        raise NotReplayed("no original subject")
    ack = await js.publish(
        letter.subject, letter.data, timeout=PUBLISH_TIMEOUT_SECONDS, headers=letter.original_headers()
    )
    if ack.duplicate:
        raise NotReplayed(
            f"{ack.stream} still holds message id {letter.msg_id} in its 2-minute duplicate window:"
            " try again in a few minutes"
        )
    try:
        await js.delete_msg(names.dead_stream, letter.seq)
    except NotFoundError:
        pass  # replayed by someone else meanwhile: the id deduplicates that
    return ack.seq

"""Run state in NATS KV, advanced by compare-and-set, with an outbox so no command is lost.

A transition is written together with the commands it produced (the outbox) in one CAS write;
only then are the commands published (each with a deterministic Nats-Msg-Id, so republishing
is harmless) and removed from the outbox. A process that dies between the write and the
publish leaves the commands in the outbox, and whoever next touches the run (the redelivered
event, or any later one) publishes them. Several arbiters may work on one run at once: a
write that lost the race reloads and decides again.

The envelope line of a value also holds the run's status and deadline, so the sweeper
(`moot_arbiter.sweeper`) and the workers (`is_running`) read them without parsing the state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from moot.messages import CallCompleted, CallJob, DeadlinePassed
from moot.observability import telemetry
from moot.protocols import protocol_for
from moot.protocols.base import Command, Transition
from moot.runtime.nats import check_payload
from moot.runtime.subjects import Names
from moot.runtime.textstore import TextStore
from moot.texts import NATS_MAX_PAYLOAD_BYTES, STATE_BUDGET_BYTES, TextRef, sha_of

log = logging.getLogger(__name__)

Publisher = Callable[[list[tuple[str, str, bytes]]], Awaitable[None]]


# An outbox payload longer than this is kept in the text store, the outbox holding its SHA-256: a
# transition may emit dozens of jobs (a consortium's members, a debate's convictions), and written
# inline beside the state they would take the run's KV value past max_payload.
OUTBOX_INLINE_BYTES = 1024


class OutboxItem(BaseModel):
    subject: str
    msg_id: str
    payload: str | None = None
    payload_sha: str | None = None  # the payload is this text of the text store


class StoredRun(BaseModel):
    """A run's KV value: its outbox and trace (a small JSON line), then its state's JSON.

    The state is kept as its JSON text, parsed once into the protocol's model and written once
    from it per event, with no intermediate dicts: every outcome reads and writes the whole state.
    """

    mode: str
    outbox: list[OutboxItem] = Field(default_factory=list)
    # W3C traceparent of the request that created the run: its trace is the run's trace.
    traceparent: str | None = None
    # The state's status and deadline, copied on every write (None in values written before).
    status: str | None = None
    deadline: datetime | None = None
    state: str = Field("{}", exclude=True)

    @classmethod
    def of(cls, mode: str, state: Any, outbox: list[OutboxItem], traceparent: str | None) -> StoredRun:
        """The value of a run in `state` (a protocol's state model)."""
        return cls(
            mode=mode,
            outbox=outbox,
            traceparent=traceparent,
            status=state.status,
            deadline=getattr(state, "deadline", None),
            state=state.model_dump_json(),
        )

    def with_outbox(self, outbox: list[OutboxItem]) -> StoredRun:
        return self.model_copy(update={"outbox": outbox})

    @property
    def running(self) -> bool:
        """Whether the run is under way (from the state, when decoded, for a value written before
        `status`; an envelope alone of such a value says no: it has no deadline either)."""
        status = self.status
        if status is None:
            status = json.loads(self.state).get("status") if self.state else None
        return status == "running"

    def encode(self) -> bytes:
        return self.model_dump_json().encode() + b"\n" + self.state.encode()

    @classmethod
    def decode(cls, value: bytes) -> StoredRun:
        head, newline, state = value.partition(b"\n")
        if not newline:  # one JSON document, as written before the state was kept apart
            data = json.loads(value)
            return cls(
                mode=data["mode"],
                outbox=data.get("outbox") or [],
                traceparent=data.get("traceparent"),
                state=json.dumps(data["state"]),
            )
        return cls.model_validate_json(head).model_copy(update={"state": state.decode()})

    @classmethod
    def decode_head(cls, value: bytes) -> StoredRun:
        """The envelope only (`state` left out, unless the value predates the envelope line)."""
        head, newline, _ = value.partition(b"\n")
        return cls.model_validate_json(head) if newline else cls.decode(value)


@dataclass
class RunHead:
    """A run as a pass over the bucket sees it: its envelope, revision and when it was written."""

    run_id: str
    stored: StoredRun
    revision: int
    written_at: datetime | None


# How many times `heads` watches a bucket that says it holds values but whose watch saw none.
WATCH_ATTEMPTS = 3


class RunExists(Exception):
    pass


class OutboxPending(Exception):
    """A run was stored but some of its commands are not published yet."""


@dataclass
class RunStore:
    kv: KeyValue
    names: Names
    publish: Publisher
    texts: TextStore
    max_cas_attempts: int = 50

    def encode(self, command: Command, texts: dict[str, str]) -> OutboxItem:
        """A command as the outbox holds it; a long payload goes into `texts`, to be stored.

        PayloadTooLarge for one NATS would refuse: it must not reach the outbox, where every later
        publish of the run would fail on it.
        """
        if isinstance(command, CallJob):
            subject, msg_id, what = self.names.call_jobs, command.call_id, f"call job {command.call_id}"
        else:
            subject = self.names.run_event(command.run_id, command.type)
            msg_id, what = command.event_id(), f"{command.type} of run {command.run_id}"
        payload = command.model_dump_json()
        # Only the hard limit here; `publish` logs what is over the message budget, once.
        check_payload(what, payload.encode(), budget=NATS_MAX_PAYLOAD_BYTES)
        if len(payload) <= OUTBOX_INLINE_BYTES:
            return OutboxItem(subject=subject, msg_id=msg_id, payload=payload)
        sha = sha_of(payload)
        texts[sha] = payload
        return OutboxItem(subject=subject, msg_id=msg_id, payload_sha=sha)

    def _encode_all(self, transition: Transition[Any]) -> tuple[list[OutboxItem], dict[str, str]]:
        """The transition's commands as outbox items, and every text to store before the write."""
        texts = dict(transition.texts)
        return [self.encode(c, texts) for c in transition.commands], texts

    @staticmethod
    def _value(run_id: str, stored: StoredRun) -> bytes:
        """The KV value of a run: its state and outbox, within max_payload (PayloadTooLarge)."""
        value = stored.encode()
        check_payload(f"state of run {run_id}", value, budget=STATE_BUDGET_BYTES)
        return value

    async def create(self, run_id: str, mode: str, transition: Transition[Any]) -> None:
        """Store a new run and publish its first commands. RunExists if the id is taken."""
        telemetry.annotate(run_id=run_id, mode=mode)
        outbox, texts = self._encode_all(transition)
        # Texts first: nothing that refers to one is written or published before it is stored.
        await self.texts.put_many(texts)
        stored = StoredRun.of(mode, transition.state, outbox, telemetry.current_traceparent())
        try:
            revision = await self.kv.create(run_id, self._value(run_id, stored))
        except KeyWrongLastSequenceError as exc:
            raise RunExists(run_id) from exc
        try:
            await self._flush(run_id, stored, revision)
        except Exception as exc:
            # The run is stored; only its first messages are not all out. No event will come to
            # flush them, so the caller must (`flush_pending`), not report a failure.
            raise OutboxPending(run_id) from exc

    async def flush_pending(self, run_id: str) -> None:
        """Publish whatever a run still has in its outbox (after a publish failed)."""
        got = await self._get(run_id)
        if got is not None:
            await self._flush(run_id, *got)

    async def load(self, run_id: str) -> tuple[str, Any] | None:
        """(mode, state) of a run, or None when the bucket does not hold it."""
        got = await self._get(run_id)
        if got is None:
            return None
        stored, _ = got
        return stored.mode, protocol_for(stored.mode).State.model_validate_json(stored.state)

    async def is_running(self, run_id: str) -> bool:
        """Whether the run exists and is under way: False once it ended (or was never stored).

        Reads the envelope only; a worker asks it before calling a model for one of its jobs.
        """
        return await self.stored_running(run_id) is True

    async def stored_running(self, run_id: str) -> bool | None:
        """True while the run is under way, False once it ended, None when no state is stored
        (not yet, or no longer: states expire). Reads the envelope only."""
        try:
            entry = await self.kv.get(run_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        head = StoredRun.decode_head(entry.value)
        return (head if head.status is not None else StoredRun.decode(entry.value)).running

    async def heads(self) -> AsyncIterator[RunHead]:
        """Every run in the bucket, its envelope only: one pass, streamed by one ordered consumer.

        Not `kv.keys()` then a `get` per key (a request and reply each): the bucket's latest
        values come in one flow-controlled stream (docs/architecture.md, "Deadlines").

        nats-py ends a watch at once when the consumer it creates reports nothing pending, which
        a loaded server can report for a bucket that holds values (seen in CI on nats-server 2.9):
        a watch that ends before any value, over a bucket whose status counts values, is tried
        again, a few times, rather than taken for an empty bucket.
        """
        for attempt in range(WATCH_ATTEMPTS):
            seen = 0
            watcher = await self.kv.watchall(ignore_deletes=True)
            try:
                async for entry in watcher:
                    if entry is None:  # caught up: every key's latest value has been seen
                        break
                    seen += 1
                    if entry.value is None or entry.revision is None:
                        continue
                    # nats-py annotates `created` as an int; it holds the message's datetime.
                    created: Any = entry.created
                    written = created if isinstance(created, datetime) else None
                    yield RunHead(entry.key, StoredRun.decode_head(entry.value), entry.revision, written)
            finally:
                await watcher.stop()
            if seen or not (await self.kv.status()).values:
                return
            await asyncio.sleep(0.05 * (attempt + 1))

    async def sweep_one(self, run_id: str, now: datetime, seen: int | None = None) -> list[str]:
        """Finish what a crash left of the run, and end it if its deadline has passed.

        Publishes an outbox still pending at revision `seen` (the one the sweeper saw; a run
        written since has a live writer, which publishes its own outbox), then applies
        `DeadlinePassed` through the same CAS as every event: of two sweepers racing, one ends
        the run and the other finds it ended. Returns what this call did: "flushed", "ended".
        """
        got = await self._get(run_id)
        if got is None:
            return []
        stored, revision = got
        done: list[str] = []
        if stored.outbox and (seen is None or seen == revision):
            await self._flush(run_id, stored, revision)
            done.append("flushed")
        if stored.deadline is not None and now >= stored.deadline and stored.running:
            if await self._fold(run_id, DeadlinePassed(run_id=run_id, at=now)) == "changed":
                done.append("ended")
        return done

    async def trace_of(self, run_id: str) -> tuple[bool, str | None]:
        """(whether the bucket holds the run, the id of its trace: None when it was not traced)."""
        got = await self._get(run_id)
        return (True, telemetry.trace_id_of(got[0].traceparent)) if got else (False, None)

    async def apply(self, run_id: str, event: Any) -> bool:
        """Fold `event` into the run and publish what follows. False if the run is unknown.

        A call's answer comes by reference when long; `decide()` reads it, so it is fetched first.
        """
        return await self._fold(run_id, event) != "unknown"

    async def _fold(self, run_id: str, event: Any) -> Literal["unknown", "unchanged", "changed"]:
        """`apply`, saying whether this call's write changed the run (not another's)."""
        if isinstance(event, CallCompleted) and isinstance(event.text, TextRef):
            event = event.model_copy(update={"text": await self.texts.get(event.text.sha)})
        for attempt in range(self.max_cas_attempts):
            got = await self._get(run_id)
            if got is None:
                return "unknown"
            stored, revision = got
            protocol = protocol_for(stored.mode)
            state = protocol.State.model_validate_json(stored.state)
            transition = protocol.decide(state, event)
            if transition.state is state and not transition.commands:
                # Nothing new (duplicate or late event); still finish any publish a crash cut short.
                if stored.outbox:
                    await self._flush(run_id, stored, revision)
                return "unchanged"
            outbox, texts = self._encode_all(transition)
            await self.texts.put_many(texts)
            stored = StoredRun.of(
                stored.mode, transition.state, [*stored.outbox, *outbox], stored.traceparent
            )
            try:
                revision = await self.kv.update(run_id, self._value(run_id, stored), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another arbiter advanced the run first: decide again on its state
            # What was decided, on the deciding span (the arbiter's): no content, only types.
            telemetry.annotate(
                mode=stored.mode,
                cas_conflicts=attempt,
                commands=[
                    f"call_job:{c.role}" if isinstance(c, CallJob) else c.type for c in transition.commands
                ],
            )
            await self._flush(run_id, stored, revision)
            return "changed"
        raise RuntimeError(f"run {run_id}: gave up after {self.max_cas_attempts} conflicting writes")

    async def _get(self, run_id: str) -> tuple[StoredRun, int] | None:
        try:
            entry = await self.kv.get(run_id)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return StoredRun.decode(entry.value), entry.revision

    async def _flush(self, run_id: str, stored: StoredRun, revision: int) -> None:
        """Publish the outbox, then drop what was published from it (by CAS, retrying on conflict)."""
        if not stored.outbox:
            return
        # In the run's trace even when called from another one (a cancel request).
        stored_payloads = await self.texts.get_many(o.payload_sha for o in stored.outbox if o.payload_sha)
        with telemetry.in_run_trace(stored.traceparent, "moot.run publish"):
            await self.publish(
                [
                    (o.subject, o.msg_id, (o.payload or stored_payloads[o.payload_sha or ""]).encode())
                    for o in stored.outbox
                ]
            )
        published = {o.msg_id for o in stored.outbox}
        for _ in range(self.max_cas_attempts):
            remaining = [o for o in stored.outbox if o.msg_id not in published]
            if len(remaining) == len(stored.outbox):
                return  # someone else already cleared them
            stored = stored.with_outbox(remaining)
            try:
                await self.kv.update(run_id, stored.encode(), last=revision)
                return
            except KeyWrongLastSequenceError:
                got = await self._get(run_id)
                if got is None:
                    return
                stored, revision = got
        log.warning(
            "run %s: outbox not cleared after conflicts; it will be republished (deduplicated)", run_id
        )

"""The recorder's fast path: a message with nothing to put back or clean is stored as it came."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moot.messages import CallCompleted, RoundStart
from moot.texts import TextSink
from moot_recorder.writer import envelope_from, plain_envelope


def _bytes(event: object) -> bytes:
    return event.model_dump_json().encode()  # type: ignore[attr-defined]


def test_a_plain_event_is_stored_byte_for_byte_and_reads_like_the_slow_path() -> None:
    raw = _bytes(RoundStart(run_id="r1", round=2, debaters=[]))
    plain = plain_envelope(raw, 7, {})
    assert plain is not None and plain.payload == raw.decode() and plain.stream_seq == 7
    assert plain.event == envelope_from(raw, 7, {}).event


@pytest.mark.parametrize(
    ("escape", "why"),
    [("\\u0000", "Postgres text cannot hold a NUL"), ("\\ud800", "UTF-8 has no lone surrogate")],
)
def test_what_must_be_cleaned_takes_the_slow_path(escape: str, why: str) -> None:
    event = CallCompleted(
        run_id="r1", call_id="r1:1:member:m:1", iteration=1, role="member", model="m", instance=1, text="x"
    )
    raw = _bytes(event).replace(b'"text":"x"', b'"text":"a' + escape.encode() + b'b"')
    assert escape.encode() in raw
    assert plain_envelope(raw, 1, {}) is None, why


def test_a_text_by_reference_takes_the_slow_path() -> None:
    sink = TextSink()
    ref = sink.text("x" * 5000)
    event = CallCompleted(
        run_id="r1", call_id="r1:1:member:m:1", iteration=1, role="member", model="m", instance=1, text=ref
    )
    assert plain_envelope(_bytes(event), 1, {}) is None


def test_no_run_event_is_refused() -> None:
    with pytest.raises(ValidationError):
        plain_envelope(b'{"type": "no.such.event", "run_id": "r"}', 1, {})

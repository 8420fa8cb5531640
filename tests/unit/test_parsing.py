"""The arbiter parser on well-formed, partial, reordered and garbage answers; member confidence."""

from __future__ import annotations

import pytest

from moot.protocols.consortium.parsing import extract_member_confidence, parse_arbiter, parse_confidence_value

WELL_FORMED = """<synthesis>Paris is the capital of France.</synthesis>
<confidence>0.92</confidence>
<analysis>All models agree.</analysis>
<dissent>none</dissent>
<needs_iteration>false</needs_iteration>
<refinement_areas><area>cite a source</area><area>mention history</area></refinement_areas>"""


def test_well_formed() -> None:
    v = parse_arbiter(WELL_FORMED)
    assert v.synthesis == "Paris is the capital of France."
    assert v.confidence == pytest.approx(0.92)
    assert v.analysis == "All models agree."
    assert v.dissent == "none"
    assert v.needs_iteration is False
    assert v.refinement_areas == ["cite a source", "mention history"]
    assert not v.malformed
    assert v.problems == []


def test_reordered_tags_and_code_fence() -> None:
    text = (
        "```xml\n<needs_iteration>TRUE</needs_iteration><refinement_areas>\n- be brief\n- add numbers\n"
        "</refinement_areas><confidence> 0.4 </confidence><dissent>B disagrees</dissent>"
        "<analysis>mixed</analysis><synthesis>\nAnswer.\n</synthesis>\n```"
    )
    v = parse_arbiter(text)
    assert v.synthesis == "Answer."
    assert v.confidence == pytest.approx(0.4)
    assert v.needs_iteration is True
    assert v.refinement_areas == ["be brief", "add numbers"]
    assert v.dissent == "B disagrees"
    assert not v.malformed


def test_partial_optional_tags_missing_is_recorded_not_malformed() -> None:
    v = parse_arbiter(
        "<synthesis>S</synthesis><confidence>0.9</confidence><needs_iteration>no</needs_iteration>"
    )
    assert v.synthesis == "S" and v.confidence == pytest.approx(0.9) and v.needs_iteration is False
    assert not v.malformed
    assert set(v.problems) == {"missing <analysis>", "missing <dissent>", "missing <refinement_areas>"}


def test_missing_confidence_is_none_and_malformed() -> None:
    v = parse_arbiter("<synthesis>S</synthesis><needs_iteration>false</needs_iteration>")
    assert v.confidence is None
    assert v.malformed
    assert "missing <confidence>" in v.problems


def test_confidence_as_percentage_and_out_of_ten() -> None:
    assert parse_arbiter("<synthesis>S</synthesis><confidence>85%</confidence>").confidence == pytest.approx(
        0.85
    )
    assert parse_confidence_value("85") == pytest.approx(0.85)
    assert parse_confidence_value("8.5/10") == pytest.approx(0.85)
    assert parse_confidence_value(".7") == pytest.approx(0.7)
    assert parse_confidence_value("high") is None
    assert parse_confidence_value("250") is None


def test_unreadable_confidence_and_needs_iteration() -> None:
    v = parse_arbiter(
        "<synthesis>S</synthesis><confidence>very high</confidence><needs_iteration>maybe</needs_iteration>"
    )
    assert v.confidence is None and v.needs_iteration is None
    assert v.malformed
    assert any(p.startswith("unreadable confidence") for p in v.problems)
    assert any(p.startswith("unreadable needs_iteration") for p in v.problems)


def test_unclosed_synthesis_runs_to_next_tag() -> None:
    v = parse_arbiter(
        "<synthesis>The answer is 4.\n<confidence>0.8</confidence><needs_iteration>false</needs_iteration>"
    )
    assert v.synthesis == "The answer is 4."
    assert v.confidence == pytest.approx(0.8)
    assert v.malformed
    assert "unclosed <synthesis>" in v.problems


def test_garbage_uses_whole_text_and_says_so() -> None:
    v = parse_arbiter("I think <b>all</b> of them are right, really.")
    assert v.synthesis == "I think all of them are right, really."
    assert v.confidence is None and v.needs_iteration is None
    assert v.malformed
    assert "no <synthesis>: the whole answer is used as the synthesis" in v.problems


def test_prose_confidence_is_recovered_and_noted() -> None:
    v = parse_arbiter("<synthesis>S</synthesis>\nConfidence: 0.75\n<needs_iteration>false</needs_iteration>")
    assert v.confidence == pytest.approx(0.75)
    assert "confidence read from prose, not from <confidence>" in v.problems


def test_empty_answer() -> None:
    v = parse_arbiter("   ")
    assert v.malformed and v.problems == ["empty answer"] and v.synthesis == ""


def test_nested_junk_tags_inside_synthesis_are_stripped() -> None:
    v = parse_arbiter("<synthesis><p>Hello <i>world</i></p></synthesis><confidence>1</confidence>")
    assert v.synthesis == "Hello world"
    assert v.confidence == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer.\nConfidence: 0.8", 0.8),
        ("Answer. <confidence>0.6</confidence>", 0.6),
        ("My confidence level is 90%", 0.9),
        ("**Confidence:** 7/10", 0.7),
        ("No number here", None),
        ("", None),
    ],
)
def test_member_confidence(text: str, expected: float | None) -> None:
    got = extract_member_confidence(text)
    assert got == (pytest.approx(expected) if expected is not None else None)

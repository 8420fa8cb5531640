"""Which answer several models agree on (`moot.protocols.agreement`): normalising and counting.

The answers are those SmolLM2-135M (the local model) really wrote as a consortium member, as in
`fixtures/smollm2/`: what it says besides the answer is the hard part.
"""

from __future__ import annotations

import pytest

from moot.protocols.agreement import answer_text, most_agreed, normalise
from moot.texts import TextRef, sha_of


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The capital of Japan is Tokyo.\nConfidence: 0.6", "The capital of Japan is Tokyo."),
        ('A spider has 8 legs.\n"Confidence: 0.6"', "A spider has 8 legs."),
        ("A spider has 8 legs.\n0.6 (confidence)", "A spider has 8 legs."),
        ("Tokyo\n\nMy confidence is 80%\n", "Tokyo"),
        ("Tokyo. Confidence: 0.9", "Tokyo."),
        ("Tokyo (Confidence: 0.7)", "Tokyo"),
        ("Tokyo <confidence>0.9</confidence>", "Tokyo"),
        # Only a stated confidence goes: the answer's own words about confidence stay.
        ("I'm confident in the answer: Tokyo.", "I'm confident in the answer: Tokyo."),
        ("Confidence: 0.6", ""),
    ],
)
def test_the_stated_confidence_is_not_part_of_the_answer(text: str, answer: str) -> None:
    assert answer_text(text) == answer


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("The capital of Japan is Tokyo.", "the capital of japan is TOKYO"),
        ('"The capital of Japan is Tokyo."', "The capital of Japan is Tokyo.\nConfidence: 0.6"),
        ("The capital  of\nJapan is **Tokyo**!", "The capital of Japan is Tokyo"),
        ("It's Tokyo.", "Its Tokyo"),
        ("8", "8.0"),
        ("**1,000**.", "1000"),
        ("0.5", ".5"),
    ],
)
def test_answers_that_differ_only_in_form_agree(a: str, b: str) -> None:
    assert normalise(a) == normalise(b) is not None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("The capital of Japan is Tokyo.", "Tokyo"),  # free text is compared as a whole
        ("The capital of Japan is Tokyo.", "The capital of Japan is Kyoto."),
        ("8", "80"),
        ("8", "A spider has 8 legs."),  # a number alone is a number; a sentence is a sentence
    ],
)
def test_different_answers_do_not_agree(a: str, b: str) -> None:
    assert normalise(a) != normalise(b)


def test_a_free_answer_that_is_essentially_a_number_is_compared_as_one() -> None:
    assert normalise('1.2\n"Confidence: 0.6"') == 1.2
    assert normalise("**42**.") == 42.0
    assert normalise("Forty-two") == "forty two"


def test_in_the_number_format_an_answer_is_the_number_it_holds() -> None:
    assert normalise("A spider has 8 legs.\nConfidence: 0.6", "number") == 8.0
    assert normalise("It has 8.", "number") == normalise("8 legs", "number") == 8.0
    assert normalise("It has many legs.", "number") is None  # no number: no vote


@pytest.mark.parametrize("empty", [None, "", "  \n", "Confidence: 0.6", "**!**"])
def test_an_empty_answer_has_no_vote(empty: str | None) -> None:
    assert normalise(empty) is None


def test_the_answer_most_give_wins_and_says_how_many() -> None:
    # Iteration 1 of a real run: two members of three said the same, in different forms.
    answers = [
        "The capital of Japan is Tokyo.\nConfidence: 0.6",
        "Japan's capital is Tokyo. You can find it on your map with Google Maps.",
        '"The capital of Japan is Tokyo."',
    ]
    agreed = most_agreed(answers)
    assert agreed is not None
    assert (agreed.index, agreed.count, agreed.counted) == (0, 2, 3)
    assert agreed.text == "The capital of Japan is Tokyo."  # as written, without its confidence
    assert not agreed.unanimous


def test_a_tie_goes_to_the_highest_stated_confidence_then_the_first() -> None:
    answers = ["Tokyo", "Kyoto", "kyoto.", "TOKYO!"]
    assert most_agreed(answers).index == 0  # type: ignore[union-attr]
    by_confidence = most_agreed(answers, [0.5, None, 0.9, None])
    assert by_confidence is not None and (by_confidence.index, by_confidence.count) == (1, 2)
    # A stated confidence beats none.
    assert most_agreed(["Tokyo", "Kyoto"], [None, 0.1]).index == 1  # type: ignore[union-attr]


def test_without_agreement_each_answer_counts_once() -> None:
    agreed = most_agreed(["Tokyo", "Osaka", "Kyoto"], [0.2, None, 0.4])
    assert agreed is not None
    assert (agreed.text, agreed.count, agreed.counted) == ("Kyoto", 1, 3)


def test_answers_without_a_vote_are_not_counted() -> None:
    agreed = most_agreed(["", None, "Tokyo", "Confidence: 0.9"])
    assert agreed is not None and (agreed.index, agreed.count, agreed.counted) == (2, 1, 1)
    assert agreed.unanimous
    assert most_agreed([None, "", "\n"]) is None
    assert most_agreed([]) is None


def test_numbers_agree_as_numbers() -> None:
    agreed = most_agreed(["10", "8", "8.0\nConfidence: 0.7", "eight"])
    assert agreed is not None and (agreed.text, agreed.count) == ("8", 2)
    spider = most_agreed(["A spider has 8 legs.", "8", "It has six legs.", "Eight: 8"], fmt="number")
    assert spider is not None and (spider.index, spider.count, spider.counted) == (0, 3, 3)


def test_answers_held_by_reference_agree_when_their_texts_are_the_same() -> None:
    long = "Tokyo. " * 100
    ref = TextRef(sha=sha_of(long), chars=len(long))
    other = TextRef(sha=sha_of(long + "!"), chars=len(long) + 1)
    agreed = most_agreed([other, ref, "Tokyo", ref])
    assert agreed is not None and (agreed.index, agreed.count, agreed.counted) == (1, 2, 4)
    assert agreed.text == ref  # its text is not known here: the reference itself

"""Which answer several models agree on (`moot.protocols.agreement`): normalising and counting.

The answers are those SmolLM2-135M (the local model) really wrote as a consortium member, as in
`fixtures/smollm2/`: what it says besides the answer is the hard part.
"""

from __future__ import annotations

import pytest

from moot.protocols.agreement import answer_text, most_agreed, normalise, numbers_in, without_lead
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


# The formats a vote counts in (`moot.protocols.vote`): numbers, option letters, yes or no.


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("8", 8.0),
        ("The answer is 8.", 8.0),
        ("3 + 5 = 8", 8.0),  # the result, not the first number
        ("x = 3, y = 5, so x + y = 8", 8.0),
        ("Answer: $1,000", 1000.0),
        ("eight", 8.0),
        ("Forty-two.", 42.0),
        ("one hundred and five", 105.0),
        ("The answer is eight.", 8.0),
        ("It has six legs.", None),  # words count only when they are the whole answer
        ("no idea", None),
    ],
)
def test_a_number_is_the_result_given_or_the_first_held(text: str, key: float | None) -> None:
    assert normalise(text, "number") == key


CITIES = ["London", "Paris", "Berlin", "Madrid"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("B", "B"),
        ("(b)", "B"),
        ("b.", "B"),
        ("[C]", "C"),
        ("Answer: B", "B"),
        ("Answer is: D", "D"),
        ("B. Paris", "B"),
        ("b) Paris", "B"),
        ("B is correct", "B"),
        ("Option B", "B"),
        ("Choice C is correct.", "C"),
        ("The answer is (B).", "B"),
        ("The correct option is C.", "C"),
        ("The answer: I think B", "B"),
        ("I think the answer is C", "C"),
        ("\\boxed{B}", "B"),
        ("- B", "B"),
        ("Paris", "B"),
        ("E", None),
        ("A city in France", None),
        ("Berlin, Germany", None),
        ("none", None),
    ],
)
def test_a_choice_is_its_option_letter(text: str, key: str | None) -> None:
    assert normalise(text, "choice", CITIES) == key


def test_without_options_any_letter_counts_and_no_text_maps_to_one() -> None:
    assert normalise("Answer: Z", "choice") == "Z"
    assert normalise("Paris", "choice") is None


def test_an_option_held_by_reference_is_matched_by_its_letter_only() -> None:
    long = "Paris, " * 50
    ref = TextRef(sha=sha_of(long), chars=len(long))
    assert normalise(long, "choice", ["London", ref]) is None
    assert normalise("B", "choice", ["London", ref]) == "B"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Yes.", "yes"),
        ("Yes, because it boils at 100 °C.", "yes"),
        ("**Yes**", "yes"),
        ("Correct", "yes"),
        ("True", "yes"),
        ("Of course", "yes"),
        ("No doubt about it.", "yes"),
        ("I'd say yes", "yes"),
        ("no", "no"),
        ("No, it is not.", "no"),
        ("Nope", "no"),
        ("False.", "no"),
        ("Not really", "no"),
        ("Not at all", "no"),
        ("Probably not", "no"),
        ("Of course not", "no"),
        ("I don't think so", "no"),
        ("The answer is no.", "no"),
        ("Maybe", None),
        ("It depends", None),
        ("Not sure", None),
        ("Yes and no", None),
        ("yes/no", None),
        ("Nothing", None),
    ],
)
def test_yes_or_no_is_how_the_answer_starts(text: str, key: str | None) -> None:
    assert normalise(text, "yes_no") == key


def test_a_lead_in_is_not_part_of_the_answer_and_free_answers_keep_theirs() -> None:
    assert without_lead("**Final answer:** I'd say Tokyo") == "Tokyo"
    assert without_lead("Optional: Tokyo") == "Optional: Tokyo"
    assert normalise("Answer: Tokyo") != normalise("Tokyo")  # as the consortium has always compared


def test_numbers_in_an_answer_leave_out_its_stated_confidence() -> None:
    assert numbers_in("3 apples and 5 pears: 8\nConfidence: 0.9") == [3.0, 5.0, 8.0]

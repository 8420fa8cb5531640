"""The test model server's solver: generated questions answered right with a set probability,
reproducibly per seed, with consistent or scattered mistakes, through the real server over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from moot.devstack.model_server import ModelBehaviour, ModelServer, ServerConfig, count_tokens
from moot.eval.datasets import arithmetic, multiple_choice, solve
from moot.eval.models import Question, Scoring
from moot.eval.scoring import extract, is_correct, prompt_for

CONFIG = ServerConfig(
    models={
        "sixty": ModelBehaviour(solver_accuracy=0.6, seed=7),
        "half": ModelBehaviour(solver_accuracy=0.5, seed=7),
        "other-half": ModelBehaviour(solver_accuracy=0.5, seed=7),
        "always": ModelBehaviour(solver_accuracy=1.0),
        "never": ModelBehaviour(solver_accuracy=0.0),
        "scattered": ModelBehaviour(solver_accuracy=0.0, solver_errors="scattered"),
        "canned": ModelBehaviour(solver_accuracy=1.0, reply="canned answer"),
        "off": ModelBehaviour(reply="canned answer"),
        "unseeded": ModelBehaviour(solver_accuracy=0.5, seed=None),
    }
)

ARITHMETIC = arithmetic(400, seed=1)
CHOICE = multiple_choice(400, seed=1)


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer(CONFIG) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(server: ModelServer) -> None:
    server.reset(config=True)


@pytest.fixture(scope="module")
def http(server: ModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def ask(http: httpx.Client, model: str, text: str, **params: object) -> str:
    response = http.post(
        "/chat/completions", json={"model": model, "messages": [{"role": "user", "content": text}], **params}
    )
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


def answer(reply: str) -> str:
    *working, last = reply.splitlines()
    assert working and last.startswith("Answer: "), reply
    return last.removeprefix("Answer: ")


def right(http: httpx.Client, model: str, question: Question) -> bool:
    scoring: Scoring = "choice" if question.choices else "numeric"
    reply = ask(http, model, prompt_for(question, scoring))
    return is_correct(extract(reply, scoring, question.choices), question.answer, scoring)


@pytest.mark.parametrize("questions", [ARITHMETIC, CHOICE], ids=["arithmetic", "choice"])
def test_the_share_of_right_answers_is_the_accuracy(http: httpx.Client, questions: list[Question]) -> None:
    share = sum(right(http, "sixty", q) for q in questions) / len(questions)
    assert 0.5 <= share <= 0.7


def test_accuracy_one_is_always_right_and_zero_always_wrong(http: httpx.Client) -> None:
    questions = ARITHMETIC[:40] + CHOICE[:40]
    assert all(right(http, "always", q) for q in questions)
    assert not any(right(http, "never", q) for q in questions)


def test_a_question_gets_the_same_outcomes_whatever_is_asked_between(http: httpx.Client) -> None:
    question, others = ARITHMETIC[0].question, [q.question for q in ARITHMETIC[1:31]]
    alone = [ask(http, "half", question) for _ in range(5)]
    with ModelServer(CONFIG) as another, httpx.Client(base_url=another.url, timeout=10) as other_http:
        interleaved = []
        for i, other in enumerate(others):
            ask(other_http, "half", other)
            if i % 6 == 5:
                # Embedded differently, the question is still the same question.
                interleaved.append(ask(other_http, "half", prompt_for(ARITHMETIC[0], "numeric")))
    assert interleaved == alone
    # The five draws are independent, not one outcome repeated; over 30 questions both come up.
    outcomes = {answer(ask(http, "half", q.question)) == q.answer for q in ARITHMETIC[31:61]}
    assert outcomes == {True, False}


def test_models_draw_apart_with_the_same_seed(http: httpx.Client) -> None:
    half = [right(http, "half", q) for q in ARITHMETIC[:60]]
    other = [right(http, "other-half", q) for q in ARITHMETIC[:60]]
    assert half != other


def test_consistent_mistakes_are_one_wrong_value(http: httpx.Client) -> None:
    for q in (ARITHMETIC[5], CHOICE[5]):
        solution = solve(q.question)
        assert solution is not None
        given = {answer(ask(http, "never", q.question)) for _ in range(10)}
        assert given == {solution.mistake} and solution.mistake != q.answer


def test_scattered_mistakes_vary(http: httpx.Client) -> None:
    for q in (ARITHMETIC[5], CHOICE[5]):
        given = [answer(ask(http, "scattered", q.question)) for _ in range(20)]
        assert q.answer not in given
        assert len(set(given)) > 1
    letters = {answer(ask(http, "scattered", CHOICE[6].question)) for _ in range(40)}
    assert letters == set("ABCD") - {CHOICE[6].answer}


def test_the_reply_is_working_then_the_answer(http: httpx.Client) -> None:
    q = CHOICE[0]
    reply = ask(http, "always", q.question)
    assert reply.splitlines() == [f"Option {q.answer} is the one that fits.", f"Answer: {q.answer}"]


def test_usage_and_streaming_are_as_for_any_reply(http: httpx.Client) -> None:
    q = ARITHMETIC[0]
    response = http.post(
        "/chat/completions", json={"model": "always", "messages": [{"role": "user", "content": q.question}]}
    )
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == count_tokens(content)
    assert body["usage"]["prompt_tokens"] == count_tokens(q.question)

    with http.stream(
        "POST",
        "/chat/completions",
        json={"model": "always", "stream": True, "messages": [{"role": "user", "content": q.question}]},
    ) as streamed:
        events = [line.removeprefix("data: ") for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    pieces = [
        json.loads(e)["choices"][0]["delta"].get("content", "")
        for e in events[:-1]
        if json.loads(e)["choices"]
    ]
    assert "".join(pieces) == content


def test_only_generated_questions_outside_arbiter_requests_are_solved(http: httpx.Client) -> None:
    q = ARITHMETIC[0]
    # A question the solver does not know: the model's other behaviour answers.
    assert ask(http, "canned", "How many legs does a spider have?") == "canned answer"
    assert answer(ask(http, "canned", q.question)) == q.answer
    # Solver off.
    assert ask(http, "off", q.question) == "canned answer"
    # An arbiter request is answered as an arbiter, question or not.
    assert "<synthesis>" in ask(http, "always", f"{q.question}\nReply with <synthesis>...</synthesis>.")


def test_failed_calls_take_no_draw(http: httpx.Client, server: ModelServer) -> None:
    q = ARITHMETIC[0].question
    expected = [ask(http, "half", q) for _ in range(3)]
    server.set_model("half", ModelBehaviour(solver_accuracy=0.5, seed=7, fail_first=1))
    failed = http.post(
        "/chat/completions", json={"model": "half", "messages": [{"role": "user", "content": q}]}
    )
    assert failed.status_code == 500
    assert [ask(http, "half", q) for _ in range(3)] == expected


def test_unseeded_solver_still_answers(http: httpx.Client) -> None:
    q = ARITHMETIC[0]
    given = {answer(ask(http, "unseeded", q.question)) for _ in range(5)}
    solution = solve(q.question)
    assert solution is not None and given <= {solution.answer, solution.mistake}


@pytest.mark.parametrize(
    "fields", [{"solver_accuracy": 1.5}, {"solver_accuracy": -0.1}, {"solver_errors": "random"}]
)
def test_solver_settings_are_validated(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModelBehaviour.model_validate(fields)

"""How an evaluation asks a strategy one question, and what it reads off the run that answered.

The gateway's driver (moot_gateway/evals.py) does the I/O; what depends on a protocol lives here,
beside the protocols, so no service names a mode (tests/unit/test_registry.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from moot.eval import scoring
from moot.eval.models import ItemResult, Question, Scoring
from moot.views import AnyRunView

# What is kept of a run's final answer in an item (the run itself keeps it whole).
ANSWER_CHARS = 2_000


def question_request(request: Any, question: Question, how: Scoring) -> Any:
    """The run request of a strategy (resolved, with a placeholder prompt) for one question.

    Every strategy is told the same: the question, its options, how to give the answer. A vote
    says that itself (its `answer_format` and `choices`, set here unless the strategy set them),
    and then counts its votes the way the answer is scored; any other mode is asked `prompt_for`.
    """
    if request.mode != "vote":
        return request.model_copy(update={"prompt": scoring.prompt_for(question, how)})
    update: dict[str, Any] = {"prompt": question.question}
    if "answer_format" not in request.model_fields_set and how in ("numeric", "choice"):
        update["answer_format"] = scoring.FORMATS[how]
        if how == "choice" and question.choices and not scoring.lists_choices(question):
            update["choices"] = list(question.choices)
    return request.model_copy(update=update)


def calls_of(view: AnyRunView) -> int:
    """The model calls a run made (answered or failed), each once: a vote's escalation shares
    the votes' calls with its first iteration or round."""
    seen: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("call_id"), str) and node.get("status") in ("completed", "failed"):
                seen.add(node["call_id"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(view.model_dump(mode="json"))
    return len(seen)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def item_result(
    strategy: str, question: Question, view: AnyRunView, how: Scoring, tolerance: float
) -> ItemResult:
    """What the run `view` gave on `question`, scored (for `judge`, `correct` is the judge's to say)."""
    answer = view.answer if view.status == "completed" else None
    extracted = scoring.extract(answer, how, question.choices)
    correct = (
        extracted is not None
        and how != "judge"
        and scoring.is_correct(extracted, question.answer, how, tolerance)
    )
    return ItemResult(
        strategy=strategy,
        question_id=question.id,
        run_id=view.id,
        status=view.status,
        answer=answer[:ANSWER_CHARS] if answer else None,
        extracted=extracted,
        correct=correct,
        calls=calls_of(view),
        input_tokens=view.usage.input_tokens,
        output_tokens=view.usage.output_tokens,
        cost_usd=view.usage.cost_usd,
        latency_s=_seconds(view.created_at, view.finished_at),
    )

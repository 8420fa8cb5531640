"""An evaluation's contract: its questions, its strategies, what each (strategy, question) gave, the report.

An evaluation runs every question of a dataset under every strategy (a run request), reads each
run's final answer, scores it against the question's reference answer, and reports per strategy
(`moot.eval.report`). These models are what `POST /v1/evals` takes and `GET /v1/evals/{id}`
answers; pydantic only, like the rest of the contract.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

# How a final answer is compared with the reference: `exact` as normalised text, `numeric` as
# numbers within a tolerance, `choice` by option letter, `judge` by a model told the question,
# the reference and the answer.
Scoring = Literal["exact", "numeric", "choice", "judge"]
EvalStatus = Literal["running", "completed", "cancelled", "failed"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def _as_text(value: Any) -> Any:
    # Datasets exported from elsewhere write numeric answers as JSON numbers: 42, not "42".
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return value


class Question(BaseModel):
    """One line of a dataset: `{"id", "question", "answer", "choices"?}`; other keys are ignored
    (exports of GSM8K or MMLU carry more)."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, BeforeValidator(_as_text)] = Field(min_length=1, max_length=200)
    question: str = Field(min_length=1, max_length=50_000)
    answer: Annotated[str, BeforeValidator(_as_text)] = Field(
        min_length=1,
        max_length=50_000,
        description="The reference answer: a number, an option's letter (`choices`), or text.",
    )
    choices: list[Annotated[str, Field(min_length=1, max_length=2_000)]] | None = Field(
        None, min_length=2, max_length=26, description='The options, shown as "A. ...", "B. ...".'
    )


class Strategy(BaseModel):
    """A named way to answer: a run submission without its prompt (`{"mode": "vote", "members":
    ...}`, or `{"config": NAME, ...overrides}` for a saved configuration)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Letters, digits and `_.+-`, at most 64.", json_schema_extra={"pattern": _NAME.pattern}
    )
    run: dict[str, Any] = Field(description="The run submission every question is asked with.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: a strategy's name is letters, digits and _.+- (at most 64)")
        return v

    @field_validator("run")
    @classmethod
    def _run(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "prompt" in v:
            raise ValueError("a strategy has no prompt: each question is its prompt")
        if "mode" not in v and "config" not in v:
            raise ValueError('a strategy names its "mode" or a saved "config"')
        return v


class EvalRequest(BaseModel):
    """What to evaluate. An identical request from the same owner is the same evaluation: sent
    again, it resumes (what is done is skipped); change `label` to run it afresh."""

    model_config = ConfigDict(extra="forbid")

    questions: list[Question] = Field(min_length=1, max_length=10_000)
    strategies: list[Strategy] = Field(
        min_length=1, max_length=16, description="Compared with the first one, question by question."
    )
    scoring: Scoring | None = Field(
        None,
        description="Default: `choice` when every question has choices, `numeric` when every answer"
        " is a number, else `exact`.",
    )
    tolerance: float = Field(1e-6, ge=0.0, description="`numeric`: how far from the reference still counts.")
    judge: str | None = Field(None, max_length=200, description="The model that scores `judge` answers.")
    concurrency: int = Field(8, ge=1, le=64, description="Runs in flight at once.")
    label: str = Field("", max_length=200, description="Tells apart evaluations otherwise identical.")
    dataset: str = Field("", max_length=500, description="Where the questions came from (shown only).")

    @field_validator("questions")
    @classmethod
    def _distinct_ids(cls, v: list[Question]) -> list[Question]:
        seen: set[str] = set()
        for q in v:
            if q.id in seen:
                raise ValueError(f"question id {q.id!r} is used twice")
            seen.add(q.id)
        return v

    @field_validator("strategies")
    @classmethod
    def _distinct_names(cls, v: list[Strategy]) -> list[Strategy]:
        seen: set[str] = set()
        for s in v:
            if s.name in seen:
                raise ValueError(f"strategy name {s.name!r} is used twice: names must differ")
            seen.add(s.name)
        return v

    @model_validator(mode="after")
    def _judge(self) -> EvalRequest:
        if self.scoring == "judge" and not self.judge:
            raise ValueError('scoring "judge" needs a judge model ("judge")')
        return self


class ItemResult(BaseModel):
    """What one strategy gave on one question."""

    strategy: str
    question_id: str
    run_id: str
    status: str = Field(description="The run's status: completed, failed, cancelled.")
    answer: str | None = Field(None, description="The run's final answer (at most 2,000 characters).")
    extracted: str | None = Field(None, description="The answer as scored (a number, a letter, text).")
    correct: bool
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float | None = Field(None, description="From the run's creation to its end.")
    judge_run_id: str | None = None
    judge_cost_usd: float | None = Field(
        None, description="What judging this answer cost (not the strategy's)."
    )


class Comparison(BaseModel):
    """A strategy against the first one, on the questions both answered (paired)."""

    baseline: str
    difference: float = Field(description="Accuracy minus the baseline's.")
    ci_low: float
    ci_high: float
    wins: int = Field(description="Questions this strategy got right and the baseline wrong.")
    losses: int = Field(description="Questions the baseline got right and this strategy wrong.")
    mcnemar_p: float = Field(description="Exact McNemar test (two-sided) on the wins and losses.")


class StrategySummary(BaseModel):
    name: str
    run: dict[str, Any]
    questions: int = Field(description="Questions scored.")
    correct: int
    failed: int = Field(description="Runs that ended without an answer (scored wrong).")
    accuracy: float
    ci_low: float = Field(description="95 % bootstrap interval of the accuracy.")
    ci_high: float
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = Field(None, description="None when no call had a price.")
    cost_per_question: float | None = None
    accuracy_per_dollar: float | None = Field(None, description="Accuracy divided by cost per question.")
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    versus_first: Comparison | None = None


class Report(BaseModel):
    questions: int
    scoring: Scoring
    dataset: str = ""
    strategies: list[StrategySummary]
    judge_cost_usd: float | None = Field(None, description="What scoring by a judge cost, apart.")

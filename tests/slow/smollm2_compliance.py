"""How often SmolLM2-135M follows the arbiter, judge and conviction formats (docs/benchmarks.md).

Not a test: a measurement, run by hand on a machine with the local model installed:

    .venv/bin/python tests/slow/smollm2_compliance.py -n 20 [--baseline] [--save-fixtures DIR]

It builds the prompts exactly as the protocols do (`moot.protocols.consortium` /
`moot.protocols.debate`), on inputs the model writes itself (member answers, debate turns;
cached in `--inputs`, so a later run with other prompts sees the same inputs), asks the model
with the local server's default sampling, and counts per prompt kind:
- strict: the format followed to the letter (every mandatory tag, well formed; the decision
  word alone on the first line; CONVINCED / NOT CONVINCED starting the first line);
- readable: what the tolerant parsers recover (a confidence, a decision word, a conviction).

`--baseline` uses the prompts as they were before the local model was added (kept below), for
the before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moot.devstack import localmodel
from moot.messages import CallCompleted, CallJob
from moot.protocols import consortium, debate
from moot.protocols.base import Transition
from moot.protocols.consortium import prompts
from moot.protocols.consortium.parsing import parse_arbiter
from moot.protocols.debate import prompts as debate_prompts
from moot.requests import ConsortiumRequest, DebateRequest
from moot.texts import render

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Every text the transitions referred to (what the run store keeps): jobs are rendered through it.
TEXTS: dict[str, str] = {}
QUESTIONS = [
    "Name two benefits of regular exercise.",
    "What is the best way to learn a new language?",
    "Why is the sky blue?",
    "Should a small team write automated tests before adding new features?",
    "Is it better to work from home or from an office?",
]

BASELINE_ARBITER = """\
You are the arbiter of a panel of AI models. Several models answered the question below.
Combine their answers into one best answer and judge how sure the panel is.
{instructions}
QUESTION:
{prompt}

ANSWERS FROM THE MODELS (iteration {iteration}):
{responses}
{history}
Reply ONLY with these six tags, in this order, and nothing else:
<synthesis>the single best answer to the question, complete and self-contained</synthesis>
<confidence>a number between 0 and 1, for example 0.85</confidence>
<analysis>where the models agree and where they differ, briefly</analysis>
<dissent>any view that disagrees with the synthesis, or "none"</dissent>
<needs_iteration>true if another round of answers would clearly improve the synthesis, else false</needs_iteration>
<refinement_areas><area>one thing to improve</area><area>another thing</area></refinement_areas>
"""

BASELINE_JUDGE = """\
You judge a debate between AI models. Each first answered the question on its own, then they \
argued for their positions.

Question:
{question}

Transcript, rounds 1 to {last_round}:
{transcript}

Would another round bring out anything new? Consider whether the participants still raise new \
arguments of substance, whether one position has clearly come out strongest, and whether real \
disagreements remain that more debate could settle.

Start your reply with one word on the first line, CONTINUE or STOP, then give your reason in a \
sentence or two. For example:
STOP
The positions have converged and the last round repeated earlier points."""

BASELINE_CONVICTION = """\
You are {label} (debater {number}) in a debate between AI models.

Question:
{question}

Your position across the rounds:
{own_position}

Full transcript:
{transcript}

Be honest: has another participant argued so well that you now think their answer is better \
than yours? The other participants are: {others}.

Answer on the first line in exactly one of these forms:
CONVINCED: <the participant who convinced you, e.g. {others_example}>
NOT CONVINCED
Then explain briefly why."""


class Model:
    def __init__(self) -> None:
        from llama_cpp import Llama

        path = localmodel.gguf_path()
        assert path is not None, "run `python -m moot.devstack.localmodel install` first"
        self.llama = Llama(
            model_path=str(path),
            n_ctx=localmodel.DEFAULT_N_CTX,
            n_threads=os.cpu_count() or 1,
            n_threads_batch=os.cpu_count() or 1,
            verbose=False,
        )
        self.tokens = 0
        self.seconds = 0.0

    def chat(self, job: CallJob, max_tokens: int, temperature: float) -> str:
        started = time.monotonic()
        # The server's defaults for what the worker does not send (top_p, top_k, min_p, repeat_penalty).
        out: Any = self.llama.create_chat_completion(
            messages=[{"role": m.role, "content": render(m.content, TEXTS)} for m in job.conversation(TEXTS)],  # type: ignore[misc]
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=0.95,
            top_k=40,
            min_p=0.05,
            repeat_penalty=1.1,
        )
        self.seconds += time.monotonic() - started
        self.tokens += out["usage"]["completion_tokens"]
        return str(out["choices"][0]["message"]["content"] or "")


def _done(job: CallJob, text: str) -> CallCompleted:
    return job.completed(
        text,
        at=T0,
    )


def _keep(t: Transition[Any]) -> tuple[Any, list[Any]]:
    """A transition's state and commands, its texts kept for rendering the jobs."""
    TEXTS.update(t.texts)
    return t.state, t.commands


def _jobs(commands: list[Any]) -> list[CallJob]:
    return [c for c in commands if isinstance(c, CallJob)]


def consortium_input(model: Model, question: str, seed: int) -> dict[str, Any]:
    """Three member answers to `question`, written by the model."""
    req = ConsortiumRequest(prompt=question, members=[{"model": "local", "count": 3}], arbiter="local")  # type: ignore[list-item]
    _, commands = _keep(consortium.start(f"c{seed}", req, T0))
    return {"question": question, "answers": [model.chat(j, 150, 0.8) for j in _jobs(commands)]}


def arbiter_job(inp: dict[str, Any]) -> CallJob:
    req = ConsortiumRequest(prompt=inp["question"], members=[{"model": "local", "count": 3}], arbiter="local")  # type: ignore[list-item]
    state, first = _keep(consortium.start("c", req, T0))
    commands: list[Any] = []
    for job, text in zip(_jobs(first), inp["answers"], strict=True):
        state, commands = _keep(consortium.decide(state, _done(job, text)))
    (job,) = _jobs(commands)
    assert job.role == "arbiter"
    return job


def debate_input(model: Model, question: str, seed: int) -> dict[str, Any]:
    """Two rounds of a two-debater debate on `question`, written by the model."""
    req = DebateRequest(prompt=question, members=[{"model": "local", "count": 2}], max_rounds=4)  # type: ignore[list-item]
    state, commands = _keep(debate.start(f"d{seed}", req, T0))
    pending = _jobs(commands)
    turns: list[str] = []
    while pending and len(turns) < 4:
        job = pending.pop(0)
        text = model.chat(job, 120, 0.8)
        turns.append(text)
        state, commands = _keep(debate.decide(state, _done(job, text)))
        pending += _jobs(commands)
    return {"question": question, "turns": turns}


def _replay(inp: dict[str, Any], judge_mode: str) -> list[CallJob]:
    """The jobs after round 2 of the recorded debate: the judge's, or each debater's conviction."""
    extra: dict[str, Any] = {"judge": "local"} if judge_mode == "external_judge" else {}
    req = DebateRequest(
        prompt=inp["question"],
        members=[{"model": "local", "count": 2}],  # type: ignore[list-item]
        max_rounds=4,
        judge_mode=judge_mode,  # type: ignore[arg-type]
        **extra,
    )
    state, commands = _keep(debate.start("d", req, T0))
    pending = _jobs(commands)
    texts = list(inp["turns"])
    after: list[CallJob] = []
    while texts:
        job = pending.pop(0)
        state, commands = _keep(debate.decide(state, _done(job, texts.pop(0))))
        new = _jobs(commands)
        if new and new[0].role in ("judge", "conviction"):
            after = new
        pending += [j for j in new if j.role == "debater"]
    return after


_STRICT_JUDGE = re.compile(r"^\W*(CONTINUE|STOP)\W*$")


def strict_judge(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return bool(_STRICT_JUDGE.match(first.strip()))


def strict_conviction(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "").strip().lstrip("*_#>` ")
    return first.startswith(("CONVINCED", "NOT CONVINCED"))


def strict_arbiter(text: str) -> bool:
    v = parse_arbiter(text)
    return not v.malformed and v.confidence is not None and v.needs_iteration is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20, help="samples per prompt kind")
    parser.add_argument("--inputs", type=Path, default=Path("/tmp/moot-smollm2-inputs.json"))
    parser.add_argument("--baseline", action="store_true", help="the prompts before the local model")
    parser.add_argument("--temperature", type=float, default=0.8, help="arbiter/judge/conviction calls")
    parser.add_argument("--save-fixtures", type=Path, help="write every output here as a .txt file")
    parser.add_argument("--out", type=Path, help="write outputs and counts as JSON")
    args = parser.parse_args()
    if args.baseline:
        prompts.ARBITER_PROMPT = BASELINE_ARBITER
        debate_prompts.JUDGE_DECISION_PROMPT = BASELINE_JUDGE
        debate_prompts.CONVICTION_PROMPT = BASELINE_CONVICTION

    model = Model()
    inputs: dict[str, list[dict[str, Any]]] = {"consortium": [], "debate": []}
    if args.inputs.exists():
        inputs = json.loads(args.inputs.read_text())
    for kind, make in (("consortium", consortium_input), ("debate", debate_input)):
        while len(inputs[kind]) < args.n:
            i = len(inputs[kind])
            inputs[kind].append(make(model, QUESTIONS[i % len(QUESTIONS)], i))
            args.inputs.write_text(json.dumps(inputs, indent=1))
            print(f"input {kind} {i + 1}/{args.n}", file=sys.stderr)

    results: dict[str, list[dict[str, Any]]] = {"arbiter": [], "judge": [], "conviction": []}
    model.tokens, model.seconds = 0, 0.0
    for i in range(args.n):
        text = model.chat(arbiter_job(inputs["consortium"][i]), 300, args.temperature)
        v = parse_arbiter(text)
        results["arbiter"].append(
            {
                "text": text,
                "strict": strict_arbiter(text),
                "confidence": v.confidence,
                "malformed": v.malformed,
                "problems": v.problems,
            }
        )
        (judge,) = _replay(inputs["debate"][i], "external_judge")
        text = model.chat(judge, 100, args.temperature)
        word, _reason = debate.parse_judge_answer(text)
        results["judge"].append({"text": text, "strict": strict_judge(text), "word": word})
        job = _replay(inputs["debate"][i], "self_convergence")[0]
        text = model.chat(job, 100, args.temperature)
        results["conviction"].append({"text": text, "strict": strict_conviction(text)})
        print(f"sample {i + 1}/{args.n}", file=sys.stderr)

    summary = {
        "arbiter": {
            "strict": sum(r["strict"] for r in results["arbiter"]),
            "confidence readable": sum(r["confidence"] is not None for r in results["arbiter"]),
            "not malformed": sum(not r["malformed"] for r in results["arbiter"]),
        },
        "judge": {
            "strict": sum(r["strict"] for r in results["judge"]),
            "readable": sum(r["word"] is not None for r in results["judge"]),
        },
        "conviction": {"strict": sum(r["strict"] for r in results["conviction"])},
        "n": args.n,
        "prompts": "baseline" if args.baseline else "current",
        "temperature": args.temperature,
        "tokens_per_second": round(model.tokens / model.seconds, 1) if model.seconds else None,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    if args.save_fixtures:
        args.save_fixtures.mkdir(parents=True, exist_ok=True)
        tag = "baseline" if args.baseline else "current"
        for kind, rows in results.items():
            for i, r in enumerate(rows):
                (args.save_fixtures / f"{kind}-{tag}-{i:02d}.txt").write_text(r["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

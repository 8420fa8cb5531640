"""`moot eval` and `moot dataset`: does deliberating pay, on your questions (docs/eval.md).

`moot eval DATASET.jsonl --strategy NAME=SPEC ...` sends the evaluation to the gateway
(`POST /v1/evals`), which runs it through the workers; the command follows its progress and,
at its end, writes the report (Markdown, JSON, a plot) and prints the table. The evaluation
lives in the service: Ctrl-C stops following it, not it; the same command again follows it
from where it is (an identical request is the same evaluation), `--cancel ID` stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections import Counter
from contextlib import aclosing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moot.cli.client import GatewayError, MootClient
from moot.cli.common import EXIT_USAGE, CliError, err, plural
from moot.client import api
from moot.eval import datasets, strategies
from moot.eval.models import EvalRequest, Report

# A dropped progress stream is opened again this many times in a row, after this pause.
RESUMES, RESUME_PAUSE_SECONDS = 20, 1.0


def add_commands(sub: Any, gateway_command: Any) -> None:
    """`moot eval` (a gateway command) and `moot dataset` (local: writes a generated dataset)."""
    p = gateway_command(
        sub,
        "eval",
        _prepare,
        help="run every question of a dataset under each strategy, score the answers, report accuracy per dollar",
        description='Each line of DATASET is {"id", "question", "answer", "choices"?}. Every question'
        " runs under every strategy in the service (the workers make the calls); the final answers are"
        " scored, and the report (accuracy with its 95 % interval, calls, tokens, cost, latency, accuracy"
        " per dollar, and each strategy against the first) is printed and written to --out. Ctrl-C stops"
        " following, not the evaluation: the same command again follows it from where it is.",
        epilog="strategies: " + strategies.FORMS + ".\nexample: moot dataset arithmetic -n 50 > arith.jsonl;"
        " moot eval arith.jsonl --strategy single=single:m --strategy vote5=vote:m:5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", metavar="DATASET", nargs="?", help="a JSONL file of questions")
    p.add_argument(
        "-s",
        "--strategy",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="a strategy, repeatable; the first is the baseline the others are compared with",
    )
    p.add_argument(
        "--scoring", choices=("exact", "numeric", "choice", "judge"), help="default: from the answers"
    )
    p.add_argument("--tolerance", type=float, help="numeric scoring: how far from the answer still counts")
    p.add_argument(
        "--judge", metavar="MODEL", help="the model that scores free-text answers (--scoring judge)"
    )
    p.add_argument("--concurrency", type=int, help="runs in flight at once (default 8)")
    p.add_argument("--label", help="run an evaluation again from scratch under another label")
    p.add_argument("--out", type=Path, help="where the report goes (default: a folder named by its id)")
    p.add_argument("--plot", choices=("png", "svg"), default="png", help="the plot's format (default png)")
    p.add_argument("--cancel", metavar="EVAL_ID", help="stop a running evaluation instead")
    p.add_argument("--quiet", action="store_true", help="no progress lines")

    d = sub.add_parser(
        "dataset",
        help="write a generated dataset (arithmetic, multiple choice) as JSONL",
        description="Questions the project generates itself, with their answers: `arithmetic`, in the shape"
        " of Du et al. 2023 (a+b*c+d-e*f), and `choice`, four options built from computed facts.",
    )
    d.add_argument("kind", choices=sorted(datasets.GENERATORS))
    d.add_argument("-n", type=int, default=50, help="how many questions (default 50)")
    d.add_argument("--seed", type=int, default=0, help="the same seed gives the same questions")
    d.add_argument("-o", "--output", type=Path, help="the file (default: stdout)")


def dataset_command(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise CliError("-n must be at least 1", EXIT_USAGE)
    questions = datasets.GENERATORS[args.kind](args.n, args.seed)
    if args.output is None:
        datasets.write_dataset(questions, sys.stdout)
    else:
        datasets.write_dataset(questions, args.output)
        err(f"moot: {len(questions)} {args.kind} questions written to {args.output}")
    return 0


def _prepare(p: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    if args.cancel:
        return lambda client: _cancel(client, args.cancel)
    if not args.dataset:
        p.error("name the DATASET (a JSONL file), or --cancel EVAL_ID")
    if not args.strategy:
        p.error("name at least one --strategy NAME=SPEC (e.g. single=single:MODEL)")
    if args.scoring == "judge" and not args.judge:
        p.error("--scoring judge needs --judge MODEL: the model that says whether each answer is right")
    try:
        questions = datasets.read_dataset(args.dataset)
        chosen = [strategies.parse(s) for s in args.strategy]
    except (datasets.DatasetError, strategies.StrategyError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    fields: dict[str, Any] = {
        "questions": questions,
        "strategies": chosen,
        "dataset": Path(args.dataset).name,
        **{
            k: v
            for k, v in {
                "scoring": args.scoring,
                "tolerance": args.tolerance,
                "judge": args.judge,
                "concurrency": args.concurrency,
                "label": args.label,
            }.items()
            if v is not None
        },
    }
    try:
        request = EvalRequest(**fields)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise CliError(f"the evaluation cannot run:\n{problems}", EXIT_USAGE) from exc
    return lambda client: run_eval(client, request, args)


async def _cancel(client: MootClient, eval_id: str) -> int:
    try:
        await client.api.cancel_eval(eval_id)
    except api.ApiError as exc:
        raise GatewayError.of(exc) from None
    err(f"moot: evaluation {eval_id} cancelled (the same `moot eval` command resumes it)")
    return 0


async def run_eval(client: MootClient, request: EvalRequest, args: argparse.Namespace) -> int:
    try:
        accepted = await client.api.create_eval(request)
        eval_id = accepted["id"]
        was = accepted.get("was")
        so_far = (await client.api.get_eval(eval_id))["progress"]["done"] if was else 0
    except api.ApiError as exc:
        raise _explained(GatewayError.of(exc), request) from None
    total = len(request.questions) * len(request.strategies)
    verb = {
        None: "started",
        "completed": "already completed (--label NAME runs it afresh)",
        "running": f"already running: following it ({so_far} of {total} done)",
    }.get(was, f"resumed ({so_far} of {total} done before are kept)")
    err(
        f"moot: evaluation {eval_id} {verb}: {plural(len(request.questions), 'question')} x"
        f" {len(request.strategies)} {'strategy' if len(request.strategies) == 1 else 'strategies'}"
        f" = {plural(total, 'run')}"
    )
    if was == "completed":
        end: dict[str, Any] = await client.api.get_eval(eval_id)
    else:
        try:
            end = await _follow(client, eval_id, total, quiet=args.quiet)
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this, then raises KeyboardInterrupt
            _detached(eval_id)
            raise
    if end["status"] != "completed":
        why = f" ({end['reason']})" if end.get("reason") else ""
        raise CliError(f"evaluation {eval_id} {end['status']}{why}; the same command resumes it")
    report = Report.model_validate(end["report"])
    out_dir = args.out or Path(eval_id)
    written = write_report(report, await client.api.get_eval(eval_id), out_dir, args.plot)
    from moot.eval.report import markdown

    sys.stdout.write(markdown(report))
    sys.stdout.flush()
    err(f"moot: written {', '.join(str(p) for p in written)}")
    return 0


_REQUIRED_FIELD = re.compile(r"^strategies\.(?P<n>\d+)\.run\.(?:[a-z]+\.)?(?P<field>[a-z_]+)$")


def _explained(error: GatewayError, request: EvalRequest) -> GatewayError:
    """A strategy's missing field said the way a strategy is written (`;arbiter=MODEL`)."""
    if error.status == 422 and error.error and error.error.errors:
        for e in error.error.errors:
            found = _REQUIRED_FIELD.match(e.param)
            if found and e.message == "Field required":
                name = request.strategies[int(found["n"])].name
                e.message += f" (strategy {name!r}: add ;{found['field']}=... to its SPEC)"
    return error


def _detached(eval_id: str) -> None:
    err(
        f"\nmoot: stopped following evaluation {eval_id}; it goes on in the service. The same command"
        f" follows it again (nothing done is redone); `moot eval --cancel {eval_id}` stops it."
    )


async def _follow(client: MootClient, eval_id: str, total: int, *, quiet: bool) -> dict[str, Any]:
    """Progress lines until the evaluation's end event, which is returned; a dropped stream is
    opened again after the last event seen."""
    last: str | None = None
    per_strategy: Counter[str] = Counter()
    right: Counter[str] = Counter()
    failures = 0
    while True:
        try:
            async with aclosing(client.api.eval_events(eval_id, after=last)) as events:
                async for event in events:
                    failures = 0
                    if event.type != "eval.item":
                        return event.data
                    last = event.id or last
                    item = event.data["item"]
                    per_strategy[item["strategy"]] += 1
                    right[item["strategy"]] += bool(item["correct"])
                    if not quiet and _worth_saying(event.data["done"], total):
                        err(
                            f"  {event.data['done']}/{total} scored; "
                            + ", ".join(f"{s}: {right[s]}/{n} right" for s, n in per_strategy.items())
                        )
        except api.DROPPED:
            pass
        except api.ApiError as exc:
            if exc.status not in (502, 503, 504):  # a gateway restarting: open the stream again
                raise GatewayError.of(exc) from None
        failures += 1
        if failures > RESUMES:
            raise CliError(f"lost the progress of evaluation {eval_id}; the same command follows it again")
        await asyncio.sleep(RESUME_PAUSE_SECONDS)


def _worth_saying(done: int, total: int) -> bool:
    step = max(1, total // 20)  # about twenty lines for a whole evaluation
    return done % step == 0 or done == total


def write_report(report: Report, full: dict[str, Any], out_dir: Path, plot_format: str) -> list[Path]:
    """report.md, report.json (the evaluation as the API answers it) and plot.png|svg in `out_dir`."""
    from moot.eval.report import markdown, plot  # matplotlib and scipy: only once there is a report

    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "report.md", out_dir / "report.json"
    md.write_text(markdown(report))
    js.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return [md, js, plot(report, out_dir / f"plot.{plot_format}")]

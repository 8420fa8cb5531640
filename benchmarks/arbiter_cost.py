"""Arbiter cost per call outcome as a run grows: iteration 1 (the baseline) against iteration N.

    NATS_URL=nats://127.0.0.1:4222 .venv/bin/python benchmarks/arbiter_cost.py [--members 16] \
        [--iterations 10] [--answer-chars 4000] [--repeat 3]

What it does: against a real NATS server (NATS_URL, default nats://127.0.0.1:4222), in a fresh
namespace deleted at the end, it drives one consortium the way the services do, in this
process: `RunStore.create` (as the gateway), then for every iteration each member's outcome and
the arbiter's through `RunStore.apply` (as the arbiter: load the state from KV, `decide()`, store
new texts, CAS write, publish the outbox to JetStream). The answers are stored in the text store
first and the outcomes carry their references, as a member worker publishes them. The arbiter
always asks for another iteration, so the run goes to `--iterations`.

It prints, per iteration, the CPU time of this process per call outcome (time.process_time, so
waiting on NATS does not count; the median over the iteration's outcomes, best of `--repeat`
runs) and the size of the run's state in KV; then iteration N against iteration 1, the ratio.
The issue's figure: the ratio at iteration 10 within 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from datetime import UTC, datetime

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import nats

from moot.messages import CallJob
from moot.protocols import consortium
from moot.requests import ConsortiumRequest, MemberSpec
from moot.runtime.nats import ensure_topology, open_texts
from moot.runtime.runstore import RunStore
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.texts import TextSink

ARBITER_ANSWER = (
    "<synthesis>{synthesis}</synthesis><confidence>0.5</confidence><analysis>They differ.</analysis>"
    "<dissent>none</dissent><needs_iteration>true</needs_iteration>"
    "<refinement_areas><area>evidence</area></refinement_areas>"
)


def _prose(chars: int, seed: str) -> str:
    words = f"{seed} weighs each argument on its merits and keeps what holds up. "
    return (words * (chars // len(words) + 1))[:chars]


async def one_run(nc: nats.NATS, args: argparse.Namespace) -> list[tuple[int, float, int]]:
    """(iteration, median CPU seconds per outcome, state bytes after it) for every iteration."""
    names = Names(f"bench_{secrets.token_hex(4)}")
    settings = MootSettings(namespace=names.namespace)
    js = nc.jetstream()
    kv = await ensure_topology(js, names, settings)
    texts = await open_texts(js, names, settings)
    jobs: list[CallJob] = []

    async def publish(items: list[tuple[str, str, bytes]]) -> None:
        for subject, msg_id, payload in items:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
            if subject == names.call_jobs:
                jobs.append(CallJob.model_validate_json(payload))

    store = RunStore(kv=kv, names=names, publish=publish, texts=texts)
    request = ConsortiumRequest(
        prompt="Is a four-day week better for everyone?",
        members=[MemberSpec(model="m", count=args.members)],
        arbiter="a",
        min_iterations=1,
        max_iterations=args.iterations,
    )
    run_id = f"bench-{secrets.token_hex(4)}"
    await store.create(run_id, "consortium", consortium.start(run_id, request, datetime.now(UTC)))
    results = []
    try:
        for iteration in range(1, args.iterations + 1):
            cpu: list[float] = []
            while this := [j for j in jobs if j.iteration == iteration]:
                job = this[0]
                jobs.remove(job)
                if job.role == "member":
                    text = _prose(args.answer_chars, f"{job.call_id}") + "\nConfidence: 0.5"
                else:
                    text = ARBITER_ANSWER.format(
                        synthesis=_prose(args.answer_chars, f"synthesis {iteration}")
                    )
                sink = TextSink()
                outcome = job.completed(sink.text(text), at=datetime.now(UTC))
                await texts.put_many(sink.texts)  # what the worker does before publishing
                started = time.process_time()
                await store.apply(run_id, outcome)
                cpu.append(time.process_time() - started)
            entry = await kv.get(run_id)
            results.append((iteration, statistics.median(cpu), len(entry.value or b"")))
    finally:
        for stream in (names.runs_stream, names.jobs_stream):
            await js.delete_stream(stream)
        for bucket in (names.state_bucket, names.text_bucket):
            await js.delete_key_value(bucket)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--answer-chars", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    try:
        runs = [await one_run(nc, args) for _ in range(args.repeat)]
    finally:
        await nc.close()
    best = [min(run[i][1] for run in runs) for i in range(args.iterations)]
    sizes = [runs[0][i][2] for i in range(args.iterations)]
    print(f"{args.members} members, {args.answer_chars}-character answers, best of {args.repeat} runs")
    print("iteration  cpu ms per outcome  state bytes")
    for i, (ms, size) in enumerate(zip(best, sizes, strict=True), start=1):
        print(f"{i:9d}  {ms * 1000:18.3f}  {size:11d}")
    ratio = best[-1] / best[0]
    print(
        f"baseline (iteration 1): {best[0] * 1000:.3f} ms; iteration {args.iterations}: "
        f"{best[-1] * 1000:.3f} ms; ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())

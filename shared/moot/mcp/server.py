"""The MCP server: moot's runs as tools and resources for an MCP client (an assistant, an IDE, an agent).

A client of a running gateway, like the `moot` CLI, and with the same key (`MOOT_URL` and
`MOOT_API_KEY`, else the running local stack's): whoever talks to this server acts as that key's
owner. Tools:

- `run_consortium`, `run_debate`, `run_council`, `run_vote`, `run_moa`: one tool per mode, with
  the request's fields as arguments (checked against the mode's request model before anything
  is sent); `run_saved_configuration` runs a saved one, `continue_run` asks a follow-up of a
  finished run. Each waits for the answer, reporting every step and call as a progress
  notification (`moot.mcp.runs`), and returns the answer with the run's facts; `wait=false`
  returns at once with the run's id.
- `get_run` (optionally waiting, or with the whole transcript), `list_runs`,
  `list_configurations`.

Resources: `moot://runs/{run_id}`, a run's transcript in Markdown (`moot.mcp.transcript`); the
recent runs are listed as resources.

A refused request, an unreachable gateway or invalid arguments are tool errors (`is_error`) whose
text says what to change, in the CLI's words (`moot.cli.common.explain`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version
from typing import Annotated, Any

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import CallToolResult, Resource, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from moot.cli.client import GatewayError, MootClient
from moot.cli.common import connect, explain, short
from moot.cli.render import configs_table, runs_table
from moot.cli.runs import view_of
from moot.mcp.runs import Report, RunOutcome, tool_result, transcript_uri, wait_for
from moot.mcp.transcript import transcript
from moot.requests import (
    AnswerFormat,
    Budget,
    ConsortiumRequest,
    DebateFormat,
    DebateRequest,
    Escalation,
    JudgeMode,
    MemberSpec,
    VoteRequest,
    request_class,
)
from moot.views import RunSummary

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
moot runs deliberations of several language models on a question and returns the best answer:
a consortium (members answer, an arbiter synthesizes until confident), a debate (debaters argue
in rounds, a judge gives a verdict), a council (members answer and rank each other anonymized,
a chairman answers), a vote (the most common answer wins), a Mixture-of-Agents (layers refine,
an aggregator answers). Model names are the gateway's: an unknown one is refused with the list
of models offered. Saved configurations (list_configurations) run by name. Every run's full
transcript is the resource moot://runs/{run_id}."""

# How many recent runs resources/list shows.
LISTED_RUNS = 20


def _default(request: type[BaseModel], field: str) -> Any:
    """A request field's default, as the gateway applies it when the argument is left out."""
    return request.model_fields[field].default


# --------------------------------------------------------------------------- arguments

Prompt = Annotated[str, Field(description="The question or task, in full: the models see nothing else.")]
Members = Annotated[
    list[MemberSpec],
    Field(
        description="The models taking part, each as `count` independent instances (default 1), e.g."
        ' [{"model": "gpt-4o-mini", "count": 2}, {"model": "claude"}]. Each model once.'
    ),
]
System = Annotated[str | None, Field(description="A system prompt for every model's answers.")]
Temperature = Annotated[float | None, Field(description="Sampling temperature of every answer (0..2).")]
MaxTokens = Annotated[int | None, Field(description="At most this many tokens per answer.")]
RunBudget = Annotated[
    Budget | None,
    Field(
        description="What the run may spend before it is ended: `seconds` (default"
        f" {Budget.model_fields['seconds'].default}), `tokens`, `usd`."
    ),
]
Wait = Annotated[
    bool,
    Field(
        description="Wait for the answer, reporting progress (default). False: return at once with the"
        " run's id, to follow with get_run."
    ),
]
Overrides = Annotated[
    dict[str, Any] | None,
    Field(
        description='Fields of the run\'s request to change for this run, e.g. {"max_iterations": 2} or'
        ' {"members": [{"model": "m", "count": 3}]}.'
    ),
]
RunId = Annotated[str, Field(description="A run's id, as a run tool or list_runs returned it.")]

# What the tools do to the world: the run tools call models (open world) and create runs.
RUNS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
)
READS = ToolAnnotations(read_only_hint=True, open_world_hint=False)


def _json(value: Any) -> Any:
    """A tool argument as the gateway takes it: models as JSON, only the fields the caller set."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def _request(mode: str, **fields: Any) -> dict[str, Any]:
    """The body of a run of `mode`: the arguments given, checked against the mode's request model
    (the gateway's defaults hold for the others)."""
    body = {"mode": mode, **{name: _json(v) for name, v in fields.items() if v is not None}}
    try:
        request_class(mode).model_validate(body)
    except ValidationError as exc:
        problems = (
            f"  {'.'.join(map(str, e['loc'])) or 'request'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        raise ToolError(f"invalid {mode} request:\n" + "\n".join(problems)) from exc
    return body


def _per_call(system: str | None, temperature: float | None, max_tokens: int | None) -> dict[str, Any]:
    return {"system": system, "temperature": temperature, "max_tokens": max_tokens}


def _reporter(ctx: Context) -> Report:
    """Progress notifications to the caller, numbered: MCP progress must grow with each one. A
    no-op when the call asked for none (no progress token)."""
    sent = itertools.count(1)

    async def report(message: str) -> None:
        await ctx.report_progress(next(sent), None, message)

    return report


class RunListing(BaseModel):
    runs: list[RunSummary] = Field(description="The key owner's recent runs, newest first.")


class SavedConfiguration(BaseModel):
    name: str
    version: int
    mode: str
    config: dict[str, Any] = Field(description="The saved run request, without a prompt.")
    created_at: str


class ConfigurationListing(BaseModel):
    configurations: list[SavedConfiguration] = Field(description="The latest version of each.")


# --------------------------------------------------------------------------- the server


class MootServer(MCPServer[Any]):
    """moot's MCP server; `connect` opens a client of the gateway (one per request)."""

    def __init__(self, connect: Callable[[], MootClient] = connect) -> None:
        super().__init__("moot", title="moot", instructions=INSTRUCTIONS, version=version("moot"))
        self.connect = connect
        _add_run_tools(self)
        _add_read_tools(self)
        self.resource(
            "moot://runs/{run_id}",
            name="run transcript",
            title="A run's transcript",
            description="Every step of a run with every model's answer in full, then the run's answer.",
            mime_type="text/markdown",
        )(self.read_transcript)

    @contextlib.asynccontextmanager
    async def gateway(self, error: type[Exception] = ToolError) -> AsyncIterator[MootClient]:
        """A client of the gateway whose refusals and connection failures become `error`s saying
        what to change."""
        async with self.connect() as client:
            try:
                yield client
            except (GatewayError, httpx.HTTPError) as exc:
                raise error(explain(exc, client.base_url).message) from exc

    async def start(self, body: dict[str, Any], ctx: Context, wait: bool) -> CallToolResult:
        """Submit a run; with `wait`, follow it to its end. The result tells the run as it stands."""
        async with self.gateway() as client:
            created = await client.create_run(body)
            run_id = created["id"]
            report = _reporter(ctx)
            await report(f"{created['mode']} {run_id} accepted")
            if not wait:
                return tool_result(view_of(await client.get_run(run_id)))
            return tool_result(await wait_for(client, run_id, report, cancel_if_abandoned=True))

    async def read_transcript(self, run_id: str) -> str:
        async with self.gateway(ResourceError) as client:
            try:
                record = await client.get_run(run_id)
            except GatewayError as exc:
                if exc.status == 404:
                    raise ResourceNotFoundError(f"no run {run_id} (of this key's owner)") from exc
                raise
        return transcript(view_of(record), transcript_uri(run_id))

    async def list_resources(self) -> list[Resource]:
        """The static resources and the key owner's recent runs (none when the gateway cannot be
        reached: the server stays usable, and its tools say what is wrong)."""
        listed = await super().list_resources()
        try:
            async with self.connect() as client:
                runs = await client.list_runs(LISTED_RUNS)
        except (GatewayError, httpx.HTTPError) as exc:
            log.warning("cannot list recent runs: %s", type(exc).__name__)
            return listed
        return listed + [
            Resource(
                uri=transcript_uri(r["id"]),
                name=r["id"],
                title=f"{r.get('mode') or 'run'}: {short(r.get('prompt'), 60)}",
                description=f"{r.get('mode')} run, {r['status']}, created {r.get('created_at')}",
                mime_type="text/markdown",
            )
            for r in runs
        ]


def _add_run_tools(server: MootServer) -> None:
    @server.tool(annotations=RUNS)
    async def run_consortium(
        prompt: Prompt,
        members: Members,
        arbiter: Annotated[
            str,
            Field(description="The model that synthesizes the members' answers and states its confidence."),
        ],
        ctx: Context,
        confidence_threshold: Annotated[
            float | None,
            Field(
                description="Stop once the arbiter is at least this confident, 0..1 (default"
                f" {_default(ConsortiumRequest, 'confidence_threshold')})."
            ),
        ] = None,
        max_iterations: Annotated[
            int | None,
            Field(
                description=f"Iterations at most (default {_default(ConsortiumRequest, 'max_iterations')})."
            ),
        ] = None,
        min_iterations: Annotated[
            int | None,
            Field(
                description=f"Iterations at least (default {_default(ConsortiumRequest, 'min_iterations')})."
            ),
        ] = None,
        system: System = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        budget: RunBudget = None,
        wait: Wait = True,
    ) -> Annotated[CallToolResult, RunOutcome]:
        """Ask several models at once and get one synthesized answer. Every member instance answers
        in parallel; the arbiter synthesizes their answers and says how confident it is; while it
        is not confident enough, the members answer again seeing the synthesis. Returns the
        synthesis, with the run's id and transcript."""
        body = _request(
            "consortium",
            prompt=prompt,
            members=members,
            arbiter=arbiter,
            confidence_threshold=confidence_threshold,
            max_iterations=max_iterations,
            min_iterations=min_iterations,
            budget=budget,
            **_per_call(system, temperature, max_tokens),
        )
        return await server.start(body, ctx, wait)

    @server.tool(annotations=RUNS)
    async def run_debate(
        prompt: Prompt,
        debaters: Annotated[
            list[MemberSpec],
            Field(
                description="The debaters, each model as `count` debaters with their own voice (at least"
                ' two in all), e.g. [{"model": "gpt-4o-mini"}, {"model": "claude"}].'
            ),
        ],
        ctx: Context,
        judge: Annotated[
            str | None,
            Field(
                description="The external judge: decides after each round whether to go on, then writes"
                " the verdict. Without one (and without judge_mode), every round is played and there is"
                " no verdict: the transcript is the result."
            ),
        ] = None,
        judge_mode: Annotated[
            JudgeMode | None,
            Field(
                description="Who ends the debate: `external_judge` (the judge; the default with a judge),"
                " `self_convergence` (debaters drop out when convinced; the last one sums up),"
                " `display_only` (all rounds, no verdict)."
            ),
        ] = None,
        format: Annotated[
            DebateFormat | None,
            Field(
                description="How the debaters are prompted (default"
                f" {_default(DebateRequest, 'format')}); `custom` needs custom_prompt."
            ),
        ] = None,
        custom_prompt: Annotated[
            str | None,
            Field(
                description="The template of a `custom` format, with {question}, {history}, {own_position},"
                " {round}, {current_round}, {model_name}, {debater_number}; literal braces doubled."
            ),
        ] = None,
        max_rounds: Annotated[
            int | None,
            Field(description=f"Rounds at most (default {_default(DebateRequest, 'max_rounds')})."),
        ] = None,
        system: System = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        budget: RunBudget = None,
        wait: Wait = True,
    ) -> Annotated[CallToolResult, RunOutcome]:
        """Have models argue a question: they state positions, then argue turn by turn, until the
        judge stops them, they convince each other, or the rounds run out. Returns the judge's
        verdict (or the last debater's summary, or the whole debate when nobody judges)."""
        per_call = {k: v for k, v in _per_call(system, temperature, max_tokens).items() if v is not None}
        body = _request(
            "debate",
            prompt=prompt,
            members=[{**m.model_dump(mode="json"), **per_call} for m in debaters],
            judge=judge,
            judge_mode=judge_mode,
            format=format,
            custom_prompt=custom_prompt,
            max_rounds=max_rounds,
            budget=budget,
        )
        return await server.start(body, ctx, wait)

    @server.tool(annotations=RUNS)
    async def run_council(
        prompt: Prompt,
        members: Members,
        chairman: Annotated[
            str,
            Field(
                description="The model that writes the final answer, knowing the answers and their ranking."
            ),
        ],
        ctx: Context,
        reviewers: Annotated[
            list[MemberSpec] | None,
            Field(
                description="The models that rank the answers (anonymized); by default the members rank each"
                " other's, never their own."
            ),
        ] = None,
        system: System = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        budget: RunBudget = None,
        wait: Wait = True,
    ) -> Annotated[CallToolResult, RunOutcome]:
        """Ask a council: the members answer (at least two answers), reviewers rank the answers
        without knowing whose they are, and the chairman writes the final answer from the answers
        and the aggregate ranking. Returns the chairman's answer."""
        body = _request(
            "council",
            prompt=prompt,
            members=members,
            chairman=chairman,
            reviewers=reviewers,
            budget=budget,
            **_per_call(system, temperature, max_tokens),
        )
        return await server.start(body, ctx, wait)

    @server.tool(annotations=RUNS)
    async def run_vote(
        prompt: Prompt,
        members: Members,
        ctx: Context,
        answer_format: Annotated[
            AnswerFormat | None,
            Field(
                description="How answers are compared: `number` as numbers, `choice` by option (with"
                " choices), `yes_no` by polarity, `free` as normalized text (default"
                f" {_default(VoteRequest, 'answer_format')})."
            ),
        ] = None,
        choices: Annotated[
            list[str] | None,
            Field(description="The options of a `choice` vote, shown to the members as A., B., ..."),
        ] = None,
        agreement_threshold: Annotated[
            float | None,
            Field(
                description="The share of counted votes the most common answer needs, 0..1 (default"
                f" {_default(VoteRequest, 'agreement_threshold')})."
            ),
        ] = None,
        escalate: Annotated[
            Escalation | None,
            Field(
                description="Below the threshold, go on as a consortium"
                ' ({"mode": "consortium", "arbiter": "m"}) or a debate ({"mode": "debate", "judge": "m"})'
                " whose first iteration or round is the votes. Without it, the majority answers anyway."
            ),
        ] = None,
        system: System = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        budget: RunBudget = None,
        wait: Wait = True,
    ) -> Annotated[CallToolResult, RunOutcome]:
        """Let models vote: every member instance answers once and the most common answer wins, with
        the share that agreed. Good for questions with one short answer (a number, a choice, yes or
        no). Returns the winning answer (or the escalation's, when they disagreed)."""
        body = _request(
            "vote",
            prompt=prompt,
            members=members,
            answer_format=answer_format if answer_format or not choices else "choice",
            choices=choices,
            agreement_threshold=agreement_threshold,
            escalate=escalate,
            budget=budget,
            **_per_call(system, temperature, max_tokens),
        )
        return await server.start(body, ctx, wait)

    @server.tool(annotations=RUNS)
    async def run_moa(
        prompt: Prompt,
        layers: Annotated[
            list[list[MemberSpec]],
            Field(
                description="The proposers of each layer, first layer first; each layer sees the previous"
                ' layer\'s answers, e.g. [[{"model": "a"}, {"model": "b"}], [{"model": "a"}]].'
            ),
        ],
        aggregator: Annotated[
            str, Field(description="The model that writes the answer from the last layer's.")
        ],
        ctx: Context,
        system: System = None,
        temperature: Temperature = None,
        max_tokens: MaxTokens = None,
        budget: RunBudget = None,
        wait: Wait = True,
    ) -> Annotated[CallToolResult, RunOutcome]:
        """Run a Mixture-of-Agents: layers of proposers, each refining the previous layer's answers,
        then an aggregator writes the final answer. Returns the aggregator's answer."""
        body = _request(
            "moa",
            prompt=prompt,
            layers=layers,
            aggregator=aggregator,
            budget=budget,
            **_per_call(system, temperature, max_tokens),
        )
        return await server.start(body, ctx, wait)

    @server.tool(annotations=RUNS)
    async def run_saved_configuration(
        name: Annotated[str, Field(description="The saved configuration's name (see list_configurations).")],
        prompt: Prompt,
        ctx: Context,
        version: Annotated[int | None, Field(description="A version of it (default: the latest).")] = None,
        overrides: Overrides = None,
        wait: Wait = True,
    ) -> Annotated[CallToolResult, RunOutcome]:
        """Run a saved configuration (any mode: its models and settings are saved under a name) on a
        prompt. Returns the run's answer."""
        body: dict[str, Any] = {**(overrides or {}), "config": name, "prompt": prompt}
        if version is not None:
            body["config_version"] = version
        return await server.start(body, ctx, wait)

    @server.tool(annotations=RUNS)
    async def continue_run(
        run_id: Annotated[str, Field(description="A completed run whose conversation to continue.")],
        prompt: Annotated[str, Field(description="The follow-up question.")],
        ctx: Context,
        overrides: Overrides = None,
        wait: Wait = True,
    ) -> Annotated[CallToolResult, RunOutcome]:
        """Ask a follow-up question of a completed run: a new run of the same mode, models and
        settings whose models see the earlier question and answer first. Returns its answer."""
        body = {**(overrides or {}), "continue_from": run_id, "prompt": prompt}
        return await server.start(body, ctx, wait)


def _add_read_tools(server: MootServer) -> None:
    @server.tool(annotations=READS)
    async def get_run(
        run_id: RunId,
        ctx: Context,
        wait: Annotated[
            bool, Field(description="If the run is still going, follow it to its end, reporting progress.")
        ] = False,
        transcript: Annotated[
            bool,
            Field(description="Return the whole transcript (every answer in full) instead of the answer."),
        ] = False,
    ) -> Annotated[CallToolResult, RunOutcome]:
        """A run of yours: its status and answer (or, with transcript, every step in full)."""
        async with server.gateway() as client:
            try:
                run = view_of(await client.get_run(run_id))
            except GatewayError as exc:
                if exc.status == 404:
                    raise ToolError(f"no run {run_id} (of this key's owner): list_runs shows yours") from exc
                raise
            if wait and run.status == "running":
                run = await wait_for(client, run_id, _reporter(ctx), cancel_if_abandoned=False)
        return tool_result(run, full_transcript=transcript)

    @server.tool(annotations=READS)
    async def list_runs(
        limit: Annotated[int, Field(ge=1, le=200, description="At most this many (default 20).")] = 20,
    ) -> Annotated[CallToolResult, RunListing]:
        """Your recent runs, newest first: id, mode, status, when, and the prompt's start."""
        async with server.gateway() as client:
            runs = await client.list_runs(limit)
        listing = RunListing.model_validate({"runs": runs})
        return CallToolResult(
            content=[TextContent(text=runs_table(runs) if runs else "no runs yet")],
            structured_content=listing.model_dump(mode="json"),
        )

    @server.tool(annotations=READS)
    async def list_configurations() -> Annotated[CallToolResult, ConfigurationListing]:
        """The saved configurations you can run by name with run_saved_configuration: name, version,
        mode, models and who decides."""
        async with server.gateway() as client:
            configs = await client.list_configs()
        listing = ConfigurationListing(
            configurations=[
                SavedConfiguration.model_validate({**c, "mode": c["config"].get("mode", "consortium")})
                for c in configs
            ]
        )
        return CallToolResult(
            content=[TextContent(text=configs_table(configs) if configs else "no saved configurations yet")],
            structured_content=listing.model_dump(mode="json"),
        )

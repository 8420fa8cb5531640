"""Submitting and reading runs on behalf of an owner; shared by the runs API and the OpenAI endpoint.

A run's state holds its long texts by reference (`moot.texts`); every view read here is hydrated
(its texts put back from the text store), so what the API answers has every text inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from fastapi import status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from moot.messages import CancelRequested, utcnow
from moot.protocols import protocol_for
from moot.records.accounts import Principal
from moot.records.queries import fetch_run_view
from moot.requests import MODES, ChatMessage, RunMeta, models_named, run_request_adapter
from moot.runtime.nats import PayloadTooLarge
from moot.runtime.runstore import OutboxPending, RunExists
from moot.runtime.textstore import TextStore, hydrated
from moot.texts import TextRef, refs_in
from moot.views import AnyRunView, run_view_adapter
from moot_gateway import admission, configs
from moot_gateway.deps import Clients
from moot_gateway.errors import DEPENDENCY_ERRORS, ApiError, unavailable

log = logging.getLogger(__name__)

# Fields of a submission that are not part of the run request itself.
CONFIG_FIELD, VERSION_FIELD, CONTINUE_FIELD = "config", "config_version", "continue_from"


def not_found(what: str, param: str | None = None) -> ApiError:
    return ApiError(status.HTTP_404_NOT_FOUND, f"{what} not found", param=param, code="not_found")


async def view_of(clients: Clients, run_id: str, principal: Principal) -> AnyRunView | None:
    """The run's view, hydrated, if it exists and belongs to `principal`; None otherwise (never another's)."""
    if len(run_id) != 32 or any(c not in "0123456789abcdef" for c in run_id):
        return None
    view: AnyRunView | None = None
    loaded = await clients.store.load(run_id)
    if loaded is not None:
        mode, state = loaded
        view = protocol_for(mode).view(state)
    elif clients.pool is not None:
        view = await fetch_run_view(clients.pool, run_id)  # recorded hydrated
    if view is None or view.owner != principal.owner:
        return None
    return await hydrated_view(clients.store.texts, view)


async def hydrated_view(texts: TextStore, view: AnyRunView) -> AnyRunView:
    """The view with every text inline (its request a request again, not a reference)."""
    data = view.model_dump(mode="json")
    if not refs_in(data):
        return view
    return run_view_adapter.validate_python(await hydrated(texts, data))


async def _continued(
    clients: Clients, run_id: str, principal: Principal
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What a run continuing `run_id` starts from: that run's request (its prompt and history
    left out: a configuration the new run takes unless it says otherwise) and the
    conversation so far (its history, its prompt, its final answer)."""
    earlier = await view_of(clients, run_id, principal)
    if earlier is None:
        raise _invalid(CONTINUE_FIELD, f"run {run_id!r} not found")
    answer = earlier.answer
    if earlier.status != "completed" or answer is None:
        raise _invalid(
            CONTINUE_FIELD, f"run {run_id!r} has no final answer to continue from ({earlier.status})"
        )
    request = earlier.request
    assert not isinstance(request, TextRef)  # view_of hydrates
    configuration = request.model_dump(
        mode="json", exclude={"prompt", "history", "budget"}, exclude_unset=False
    )
    history = [
        *(m.model_dump() for m in request.history),
        {"role": "user", "content": request.prompt},
        {"role": "assistant", "content": answer},
    ]
    return configuration, history


def _same_mode(body: dict[str, Any], base: dict[str, Any], what: str, field: str) -> None:
    """A submission that names its mode must name the mode of what it runs on (a saved
    configuration, the run it continues): a debate is never quietly run as a consortium."""
    asked, base_mode = body.get("mode"), base.get("mode", MODES[0])
    if asked is not None and asked != base_mode:
        raise _invalid(field, f"{what} is a {base_mode}, not a {asked}: run it as a {base_mode}")


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": None}]
    )


async def resolve(
    clients: Clients, principal: Principal, body: dict[str, Any], saved: dict[str, Any] | None = None
) -> tuple[Any, RunMeta]:
    """The run request a submission stands for: saved configuration + overrides, earlier conversation.

    `saved` is the configuration the caller has already read (the chat endpoint), to save a query.
    """
    body = dict(body)
    meta = RunMeta(owner=principal.owner)
    name = body.pop(CONFIG_FIELD, None)
    version = body.pop(VERSION_FIELD, None)
    continue_from = body.pop(CONTINUE_FIELD, None)
    earlier: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    if continue_from is not None:
        if not isinstance(continue_from, str):
            raise _invalid(CONTINUE_FIELD, "continue_from must be a run id")
        earlier, history = await _continued(clients, continue_from, principal)
    if name is not None:
        if not isinstance(name, str) or (version is not None and not isinstance(version, int)):
            raise _invalid(CONFIG_FIELD, "config must be a name and config_version an integer")
        if saved is None or saved["name"] != name or (version is not None and saved["version"] != version):
            saved = await configs.get(clients.pool, principal.owner, name, version)  # else: the caller's
        if saved is None:
            raise _invalid(
                CONFIG_FIELD, f"no saved configuration {name!r}" + (f" version {version}" if version else "")
            )
        _same_mode(body, saved["config"], f"saved configuration {name!r}", CONFIG_FIELD)
        body = {**saved["config"], **body}  # per-run overrides win
        if isinstance(saved["config"].get("budget"), dict) and isinstance(body.get("budget"), dict):
            # Limit by limit: `{"budget": {"seconds": 60}}` keeps the saved configuration's others.
            body["budget"] = {**saved["config"]["budget"], **body["budget"]}
        meta.config_name, meta.config_version = saved["name"], saved["version"]
    if earlier is not None:
        if name is None:
            # Without a configuration of its own, a continuation is run as the run it continues
            # (same models, same settings), with what the submission overrides.
            _same_mode(body, earlier, f"run {continue_from!r}", CONTINUE_FIELD)
            body = {**earlier, **body}
        body["history"] = [*history, *body.get("history", [])]
        meta.continued_from = continue_from
    if (where := configs.nul_location(body)) is not None:
        # Postgres text cannot hold NUL: a run that would fail in the recorder is refused here.
        raise _invalid(".".join(map(str, where)), "NUL characters (\\u0000) are not allowed")
    try:
        # Strict: `"temperature": false` or `"max_tokens": "1"` are refused, not coerced.
        request = run_request_adapter.validate_python(body, strict=True)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc
    require_callable_models(clients, request)
    return request, meta


def require_callable_models(clients: Clients, request: Any) -> None:
    """422 naming each model the deployment does not offer (`moot.runtime.models`, the allow-list)."""
    allow_unlisted = clients.settings.allow_unlisted_models
    wrong = [
        (loc, m) for loc, m in models_named(request) if not clients.models.is_callable(m, allow_unlisted)
    ]
    if not wrong:
        return
    offered = ", ".join(clients.models.callable_names())
    raise RequestValidationError(
        [
            {
                "type": "value_error",
                "loc": ("body", *loc),
                "msg": f"model {model!r} is not offered here; the models are: {offered}",
                "input": model,
            }
            for loc, model in wrong
        ]
    )


def require_nats(clients: Clients) -> None:
    """503 at once while the NATS connection is down (rather than after a request's timeout)."""
    if not clients.broker.connection.is_connected:
        raise unavailable("nats")


async def submit(
    clients: Clients, principal: Principal, request: Any, meta: RunMeta, *, run_id: str | None = None
) -> str:
    """Admit the run under its key's limits, store it and publish its first commands: its id, or
    nothing stored at all.

    A run is accepted once its state is in KV: a first publish that fails then is retried in the
    background (`OutboxPending`). A failure before that (NATS unreachable) is a 503 with
    Retry-After, and the client may submit again: nothing was accepted, nothing counted.

    `run_id`: the id to store it under (an evaluation's, written down before it submits);
    RunExists when a run has it already, which then stays counted.
    """
    require_nats(clients)
    run_id = run_id or uuid.uuid4().hex
    await admission.admit(clients, principal, run_id, request.budget.seconds)
    try:
        await _create(clients, run_id, request, meta)
    except RunExists:
        raise
    except BaseException:
        await admission.forget(clients, run_id)
        raise
    return run_id


async def _create(clients: Clients, run_id: str, request: Any, meta: RunMeta) -> None:
    transition = protocol_for(request.mode).start(run_id, request, utcnow(), meta)
    try:
        await clients.store.create(run_id, request.mode, transition)
    except DEPENDENCY_ERRORS as exc:
        # The texts may be stored (harmless: content-addressed, they expire), the state is not,
        # unless the write reached KV and only its answer was lost: remove it, or the sweeper
        # ends it, since nothing of it was published.
        log.warning("run %s refused: NATS unavailable (%r)", run_id, exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(clients.store.kv.purge(run_id), timeout=2.0)
        raise unavailable("nats") from exc
    except PayloadTooLarge as exc:
        # Nothing was stored. Texts travel by reference, so only the run's shape (its calls) can
        # do this; refused like a body over the cap, never a 500.
        log.error("run refused: %s", exc)
        raise ApiError(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            f"this run is too large to carry: {exc}",
            param="members",
            code="run_too_large",
        ) from exc
    except OutboxPending:
        # Accepted and stored: answer 202 and keep publishing its first jobs in the background.
        log.warning("run %s: first messages not all published; retrying in the background", run_id)
        task = asyncio.create_task(_flush_until_done(clients, run_id))
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


async def _flush_until_done(clients: Clients, run_id: str) -> None:
    delay = 0.5
    for _ in range(20):
        await asyncio.sleep(delay)
        try:
            await clients.store.flush_pending(run_id)
            return
        except Exception:
            delay = min(delay * 2, 30.0)
    log.error("run %s: its first messages could not be published; it will not start", run_id)


async def cancel(clients: Clients, run_id: str, principal: Principal) -> AnyRunView:
    require_nats(clients)
    view = await view_of(clients, run_id, principal)
    if view is None:
        raise not_found(f"run {run_id!r}")
    if view.status != "running":
        raise ApiError(
            status.HTTP_409_CONFLICT, f"run {run_id!r} is already {view.status}", code="run_finished"
        )
    await clients.store.apply(run_id, CancelRequested(run_id=run_id))
    after = await view_of(clients, run_id, principal)
    assert after is not None
    return after


def history_from_chat(messages: list[ChatMessage]) -> tuple[str | None, list[ChatMessage], str]:
    """OpenAI messages -> (system prompt, conversation so far, prompt = the last user message)."""
    system = (
        "\n\n".join(m.content for m in messages if m.role == "system" and isinstance(m.content, str)) or None
    )
    rest = [m for m in messages if m.role != "system"]
    last_user = max((i for i, m in enumerate(rest) if m.role == "user"), default=None)
    if last_user is None:
        raise ApiError(status.HTTP_400_BAD_REQUEST, "messages must contain a user message", param="messages")
    prompt = rest[last_user].content
    if not isinstance(prompt, str):
        prompt = " ".join(str(p.get("text", "")) for p in prompt if isinstance(p, dict))
    return system, rest[:last_user], prompt

"""Saved configurations: a named run setup of any mode, versioned, usable as a model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from moot_gateway import configs, runs_service
from moot_gateway.auth import PrincipalDep
from moot_gateway.deps import ClientsDep
from moot_gateway.errors import errors
from moot_gateway.runs_service import not_found
from moot_gateway.schemas import SavedConfig, SavedConfigList, SavedConfigSubmission, SavedConfigVersions

router = APIRouter(prefix="/v1/consortiums", tags=["saved configurations"], responses=errors(401, 404, 422))

NameParam = Annotated[str, Path(pattern=configs.NAME_RE.pattern, description=configs.NAME_RULE)]


# 400: a body that is not JSON text (not UTF-8), refused before it is parsed.
@router.put("/{name}", response_model=SavedConfig, responses=errors(400, 413))
async def put_config(
    name: NameParam,
    config: Annotated[SavedConfigSubmission, Body()],
    clients: ClientsDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    """Save a configuration (a run request without `prompt`); saving again adds a version."""
    try:
        request, normalized = configs.check_config(config)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc
    except configs.ConfigError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", *exc.loc), "msg": str(exc), "input": None}]
        ) from exc
    runs_service.require_callable_models(clients, request)  # the allow-list, as for a run
    return await configs.put(clients.pool, principal.owner, name, normalized)


@router.get("", response_model=SavedConfigList)
async def list_configs(clients: ClientsDep, principal: PrincipalDep) -> dict[str, Any]:
    return {"object": "list", "data": await configs.latest_all(clients.pool, principal.owner)}


@router.get("/{name}", response_model=SavedConfigVersions)
async def get_config(
    name: NameParam,
    clients: ClientsDep,
    principal: PrincipalDep,
    version: Annotated[int | None, Query(ge=1, le=configs.MAX_VERSION)] = None,
) -> dict[str, Any]:
    """The latest version, or `?version=N`; `versions` lists every version number kept."""
    pool = clients.pool
    found = await configs.get(pool, principal.owner, name, version)
    if found is None:
        raise not_found(f"saved configuration {name!r}" + (f" version {version}" if version else ""))
    found["versions"] = [v["version"] for v in await configs.versions(pool, principal.owner, name)]
    return found


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_config(name: NameParam, clients: ClientsDep, principal: PrincipalDep) -> Response:
    if not await configs.delete(clients.pool, principal.owner, name):
        raise not_found(f"saved configuration {name!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)

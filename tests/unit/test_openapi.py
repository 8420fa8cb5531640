"""The gateway's /openapi.json: every body typed, every success answer with a schema.

`app.openapi()` needs no server: the lifespan (NATS, Postgres) does not run for it.
"""

from __future__ import annotations

from typing import Any

import pytest

from moot_gateway.main import create_app


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app().openapi()


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def fields(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Every property an object of this schema may have, through refs, unions and allOf."""
    schema = resolve(spec, schema)
    found = set(schema.get("properties", {}))
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            found |= fields(spec, option)
    return found


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_every_route_answers_success_with_a_schema(spec: dict[str, Any]) -> None:
    seen = []
    for method, path, op in operations(spec):
        ok = {code: r for code, r in op["responses"].items() if code.startswith("2") and code != "204"}
        if method == "delete":
            assert list(ok) == [] and "204" in op["responses"], path
            continue
        assert ok, f"{method} {path} documents no success"
        for code, response in ok.items():
            assert response["content"], f"{method} {path} {code}"
            for media, content in response["content"].items():
                schema = content.get("schema") or content.get("itemSchema")
                assert schema, f"{method} {path} {code} {media} has no schema"
                if media == "application/json":
                    assert fields(spec, schema), f"{method} {path} {code} answers an untyped object"
        seen.append((method, path))
    assert ("get", "/v1/runs/{run_id}/events") in seen and ("get", "/healthz") in seen


def test_the_run_events_are_documented_as_server_sent_events(spec: dict[str, Any]) -> None:
    response = spec["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]
    stream = response["content"]["text/event-stream"]
    assert {"run_id", "type", "run", "delta", "verdict"} <= fields(spec, stream["schema"])


def test_a_run_and_its_views_are_typed(spec: dict[str, Any]) -> None:
    get = spec["paths"]["/v1/runs/{run_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert {
        "id",
        "mode",
        "status",
        "request",
        "result",
        "iterations",
        "rounds",
        "debaters",
        "usage",
    } <= fields(spec, get["schema"])
    assert {"trace_id", "links"} <= fields(spec, get["schema"])
    listed = spec["paths"]["/v1/runs"]["get"]["responses"]["200"]["content"]["application/json"]
    data = resolve(spec, listed["schema"])["properties"]["data"]
    assert {"id", "mode", "status", "prompt", "created_at"} <= fields(spec, data["items"])


def body_fields(spec: dict[str, Any], method: str, path: str) -> set[str]:
    body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return fields(spec, body)


def test_a_run_submission_names_every_field_of_every_request(spec: dict[str, Any]) -> None:
    names = body_fields(spec, "post", "/v1/runs")
    consortium = {"prompt", "members", "arbiter", "confidence_threshold", "min_iterations", "max_iterations"}
    debate = {"format", "custom_prompt", "judge_mode", "judge", "max_rounds"}
    saved = {"config", "config_version", "continue_from", "history", "mode"}
    assert consortium | debate | saved <= names


def test_a_saved_configuration_is_a_run_request_without_its_prompt(spec: dict[str, Any]) -> None:
    names = body_fields(spec, "put", "/v1/consortiums/{name}")
    assert {"members", "arbiter", "judge_mode", "judge", "max_rounds"} <= names
    assert "prompt" not in names


def test_the_chat_completion_body_is_typed(spec: dict[str, Any]) -> None:
    assert {"model", "messages", "stream", "stream_options"} <= body_fields(
        spec, "post", "/v1/chat/completions"
    )
    ok = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert {"choices", "usage", "moot"} <= fields(spec, ok["application/json"]["schema"])
    assert "text/event-stream" in ok


def test_every_v1_route_declares_the_bearer_key_and_its_refusals(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    for method, path, op in operations(spec):
        if not path.startswith("/v1"):
            continue
        assert op.get("security"), f"{method} {path} does not declare the API key"
        assert "401" in op["responses"], f"{method} {path}"
        body = resolve(spec, op["responses"]["401"]["content"]["application/json"]["schema"])
        assert fields(spec, body) == {"error"}, f"{method} {path}: 401 is not the error body"


def test_saved_configuration_versions_are_bounded_as_postgres_stores_them(spec: dict[str, Any]) -> None:
    """A version is a Postgres integer: the document says so, and a fuzzer then sends larger ones
    as invalid (they once reached the query as a 500: `?version=51527855927922392`)."""
    get = spec["paths"]["/v1/consortiums/{name}"]["get"]
    version = next(p for p in get["parameters"] if p["name"] == "version")
    bounds = next(s for s in version["schema"]["anyOf"] if s.get("type") == "integer")
    assert (bounds["minimum"], bounds["maximum"]) == (1, 2**31 - 1)
    saved_run = spec["components"]["schemas"]["SavedRunSubmission"]["properties"]["config_version"]
    bounds = next(s for s in saved_run["anyOf"] if s.get("type") == "integer")
    assert (bounds["minimum"], bounds["maximum"]) == (1, 2**31 - 1)


def test_the_key_is_a_security_scheme_not_a_header_parameter(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        names = [p["name"].lower() for p in op.get("parameters", [])]
        assert "authorization" not in names, (method, path)


def test_every_error_has_the_one_error_shape(spec: dict[str, Any]) -> None:
    """422 included: FastAPI's own validation error schema is nowhere in the document."""
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for method, path, op in operations(spec):
        for status, answer in op["responses"].items():
            if status.startswith(("4", "5")) and path.startswith("/v1"):
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    run_refusals = spec["paths"]["/v1/runs"]["post"]["responses"]
    assert {"413", "422", "429"} <= set(run_refusals)


def test_examples_name_the_models_of_a_local_stack(spec: dict[str, Any]) -> None:
    """A reader who tries an example on `moot up` must not meet a 422 for a model it lacks."""
    body = spec["paths"]["/v1/runs"]["post"]["requestBody"]["content"]["application/json"]
    named = {
        m["model"] for example in body["examples"].values() for m in example["value"].get("members", [])
    } | {example["value"].get(role) for example in body["examples"].values() for role in ("arbiter", "judge")}
    assert named - {None} == {"local"}


async def test_swagger_ui_and_redoc_are_served_without_a_cdn() -> None:
    import httpx

    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        for page in ("/docs", "/redoc"):
            html = (await http.get(page)).text
            assert "cdn" not in html.lower() and "https://" not in html.split("<body")[-1], page
            scripts = [part.split('"')[0] for part in html.split('src="')[1:]]
            assert scripts and all(src.startswith("/") for src in scripts), (page, scripts)
            for src in scripts:
                asset = await http.get(src)
                assert asset.status_code == 200 and len(asset.content) > 100_000, src

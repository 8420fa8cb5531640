"""The gateway's edges that need no servers: CORS off unless configured, event streams per key,
which limits apply to a key."""

from __future__ import annotations

import httpx
import pytest

from moot.records.accounts import Limits
from moot_gateway.admission import Effective, StreamSlots
from moot_gateway.errors import ApiError
from moot_gateway.main import create_app
from moot_gateway.settings import GatewaySettings

PREFLIGHT = {
    "Origin": "https://ui.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


async def _preflight(gateway: GatewaySettings) -> httpx.Response:
    app = create_app(gateway=gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        return await http.options("/v1/runs", headers=PREFLIGHT)


async def test_cors_is_off_unless_configured() -> None:
    response = await _preflight(GatewaySettings())
    assert "access-control-allow-origin" not in response.headers
    assert response.status_code >= 400


async def test_cors_allows_the_configured_origins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOT_CORS_ORIGINS", "https://ui.example, https://other.example")
    response = await _preflight(GatewaySettings())
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://ui.example"
    app = create_app(gateway=GatewaySettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        elsewhere = await http.options("/v1/runs", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in elsewhere.headers


async def test_event_streams_are_capped_per_key() -> None:
    slots = StreamSlots()
    async with slots.hold("key_a", 2), slots.hold("key_a", 2):
        with pytest.raises(ApiError) as refused:
            async with slots.hold("key_a", 2):
                pass
        assert refused.value.status == 429
        assert refused.value.headers == {"Retry-After": "5"}
        assert refused.value.body()["error"]["code"] == "max_streams_per_key"
        async with slots.hold("key_b", 2):  # another key has its own
            assert slots.open == {"key_a": 2, "key_b": 1}
    assert slots.open == {}  # closed streams free their slots


def test_a_keys_own_limits_win_over_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOT_DEFAULT_RPM", "30")
    defaults = GatewaySettings()
    assert (defaults.default_rpm, defaults.default_max_concurrent_runs, defaults.default_usd_per_day) == (
        30,
        32,
        0,
    )
    assert Effective.of(Limits(), defaults) == Effective(30, 32, 0.0)
    assert Effective.of(Limits(rpm=0, usd_per_day=2.5), defaults) == Effective(0, 32, 2.5)
    assert not Effective.of(Limits(0, 0, 0), defaults).any


def test_the_body_cap_setting_has_its_documented_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySettings().max_body_bytes == 4 * 1024 * 1024
    monkeypatch.setenv("MOOT_MAX_BODY_BYTES", "2048")
    assert GatewaySettings().max_body_bytes == 2048

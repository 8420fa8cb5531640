"""NATS wiring without a server: NATS_URL as a list of servers, MOOT_NATS_REPLICAS on every stream
and KV bucket, and what happens to existing streams when the replica count changes."""

from __future__ import annotations

import dataclasses

import pytest
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

from moot.runtime.nats import ensure_topology, make_broker, nats_servers, open_texts
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names


def test_nats_url_one_or_several_servers() -> None:
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert nats_servers("nats://a:4222, nats://b:4223,nats://c:4224,") == [
        "nats://a:4222",
        "nats://b:4223",
        "nats://c:4224",
    ]
    with pytest.raises(ValueError):
        nats_servers(" , ")


def test_broker_gets_every_server() -> None:
    broker = make_broker(MootSettings(NATS_URL="nats://a:4222,nats://b:4222"))
    assert broker._connection_kwargs["servers"] == ["nats://a:4222", "nats://b:4222"]


def test_replicas_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOOT_NATS_REPLICAS", raising=False)
    assert MootSettings().nats_replicas == 1
    monkeypatch.setenv("MOOT_NATS_REPLICAS", "3")
    assert MootSettings().nats_replicas == 3


@dataclasses.dataclass
class _Info:
    config: StreamConfig


class FakeJetStream:
    """Streams and buckets in a dict; `can_change_replicas=False` refuses, as NATS before 2.10
    does, any update that changes a stream's replica count."""

    def __init__(self, *, can_change_replicas: bool = True) -> None:
        self.streams: dict[str, StreamConfig] = {}
        self.can_change_replicas = can_change_replicas
        self.updates: list[StreamConfig] = []

    async def add_stream(self, config: StreamConfig) -> None:
        assert config.name
        if config.name in self.streams and self.streams[config.name] != config:
            raise BadRequestError(code=400, err_code=10058, description="stream name already in use")
        self.streams[config.name] = config

    async def update_stream(self, config: StreamConfig) -> None:
        assert config.name
        if config.name not in self.streams:
            raise NotFoundError(code=404, err_code=10059, description="stream not found")
        if not self.can_change_replicas and config.num_replicas != self.streams[config.name].num_replicas:
            raise BadRequestError(
                code=400, err_code=10052, description="replicas configuration can not be updated"
            )
        self.updates.append(config)
        self.streams[config.name] = config

    async def stream_info(self, name: str) -> _Info:
        return _Info(self.streams[name])

    async def key_value(self, bucket: str) -> str:
        if f"KV_{bucket}" not in self.streams:
            raise BucketNotFoundError
        return bucket

    async def create_key_value(self, config: KeyValueConfig) -> str:
        self.streams[f"KV_{config.bucket}"] = StreamConfig(
            name=f"KV_{config.bucket}", num_replicas=config.replicas, max_age=config.ttl
        )
        return config.bucket


def _settings(replicas: int) -> MootSettings:
    return MootSettings(nats_replicas=replicas, namespace="t")


async def _topology(js: FakeJetStream, replicas: int) -> None:
    settings, names = _settings(replicas), Names("t")
    await ensure_topology(js, names, settings)  # type: ignore[arg-type]
    await open_texts(js, names, settings)  # type: ignore[arg-type]


async def test_every_stream_and_bucket_gets_the_replicas() -> None:
    js = FakeJetStream()
    await _topology(js, 3)
    names = Names("t")
    expected = {
        names.runs_stream,
        names.jobs_stream,
        names.dead_stream,
        names.advisories_stream,
        f"KV_{names.state_bucket}",
        f"KV_{names.text_bucket}",
    }
    assert set(js.streams) == expected
    assert {name: c.num_replicas for name, c in js.streams.items()} == dict.fromkeys(expected, 3)


async def test_existing_streams_and_buckets_are_raised_to_the_replicas() -> None:
    js = FakeJetStream()
    await _topology(js, 1)
    assert {c.num_replicas for c in js.streams.values()} == {1}
    await _topology(js, 3)
    assert {c.num_replicas for c in js.streams.values()} == {3}
    assert len(js.updates) == 6  # four streams, two buckets


async def test_server_that_cannot_change_replicas_keeps_them_and_updates_the_rest() -> None:
    js = FakeJetStream(can_change_replicas=False)
    await _topology(js, 1)
    names = Names("t")
    settings = _settings(3).model_copy(update={"event_retention_seconds": 3600.0})
    await ensure_topology(js, names, settings)  # type: ignore[arg-type]
    await open_texts(js, names, settings)  # type: ignore[arg-type]
    assert {c.num_replicas for c in js.streams.values()} == {1}
    assert js.streams[names.runs_stream].max_age == 3600.0  # what could be updated was


async def test_replicas_on_a_single_server_say_why() -> None:
    class SingleServer(FakeJetStream):
        async def add_stream(self, config: StreamConfig) -> None:
            if (config.num_replicas or 1) > 1:
                raise BadRequestError(code=500, err_code=10074, description="replicas > 1 not supported")
            await super().add_stream(config)

    with pytest.raises(BadRequestError, match="replicas > 1"):
        await _topology(SingleServer(), 3)

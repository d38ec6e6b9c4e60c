"""A governed request's final record is built only when something reads it (issue 15), and
reads the same as one built at once: through a hook, on the response's extension, in the
lane's stats, from the async and the blocking transport, with prices or without.

The transport answers in process (no sockets), and both governors run on clocks that give
the same readings, so that records made by different paths can be compared whole."""

from __future__ import annotations

import copy
import json
import logging
import pickle
from itertools import count
from typing import Any

import httpx2
import pytest

import pacekeeper
from pacekeeper import Governor, RecordCollector, RequestRecord
from pacekeeper.core.records import AttemptRecord

_KEY = pacekeeper.RECORD_EXTENSION
_ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
).encode()
_HEADERS = [("content-type", "application/json"), ("x-request-id", "req_7")]
_PRICE = pacekeeper.Price(input_usd_per_mtok=1.0, output_usd_per_mtok=4.0)
_BODY = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hello"}]}


def _answer(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(
        200,
        headers=_HEADERS,
        stream=httpx2.ByteStream(_ANSWER),
        request=request,
        extensions={"http_version": b"HTTP/1.1"},
    )


class _Async(httpx2.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return _answer(request)


class _Sync(httpx2.BaseTransport):
    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return _answer(request)


def _governor(*, hooks: list[Any] | None = None, priced: bool = False) -> Governor:
    ticks = count()
    walls = count(1_700_000_000)
    return Governor(
        hooks=hooks or [],
        clock=lambda: next(ticks) * 0.001,
        wall_clock=lambda: float(next(walls)),
        prices=(lambda model: _PRICE) if priced else None,
    )


async def _send(gov: Governor, *, tag: str | None = None) -> httpx2.Response:
    transport = pacekeeper.Transport(gov, transport=_Async())
    async with httpx2.AsyncClient(transport=transport, base_url="https://api.test/v1") as client:
        extensions = {pacekeeper.TAG_EXTENSION: tag} if tag is not None else None
        response: httpx2.Response = await client.post(
            "/chat/completions", json=_BODY, extensions=extensions
        )
    return response


@pytest.mark.parametrize("priced", [False, True])
async def test_the_record_built_when_read_is_the_one_a_hook_gets_at_once(priced: bool) -> None:
    collector = RecordCollector()
    hooked = await _send(_governor(hooks=[collector], priced=priced), tag="line-1")
    lazy = await _send(_governor(priced=priced), tag="line-1")
    [seen] = collector.requests
    assert hooked.extensions[_KEY] is seen  # the hook's own record, not a copy
    record = lazy.extensions[_KEY]
    assert isinstance(record, RequestRecord)
    assert record == seen
    assert (record.ok, record.status, record.prompt_tokens, record.request_id, record.tag) == (
        True,
        200,
        9,
        "req_7",
        "line-1",
    )
    assert (record.cost_usd is not None) is priced
    assert lazy.extensions[_KEY] is record  # built once


async def test_the_stats_count_a_success_without_its_record_as_with_it() -> None:
    hooked_gov, lazy_gov = _governor(hooks=[RecordCollector()]), _governor()
    for _ in range(3):
        await _send(hooked_gov)
        await _send(lazy_gov)
    assert lazy_gov.stats() == hooked_gov.stats()
    [snapshot] = lazy_gov.stats()
    assert (snapshot.requests, snapshot.ok, snapshot.prompt_tokens) == (3, 3, 27)


async def test_the_extensions_read_as_a_plain_dict_holding_the_record() -> None:
    """Every way of reading the mapping sees the record, and the same one."""
    reference = (await _send(_governor(hooks=[RecordCollector()]))).extensions
    assert type(reference) is dict

    readers: list[Any] = [
        lambda ext: ext[_KEY],
        lambda ext: ext.get(_KEY),
        lambda ext: dict(ext)[_KEY],
        lambda ext: {**ext}[_KEY],
        lambda ext: dict(ext.items())[_KEY],
        lambda ext: list(ext.values())[list(ext).index(_KEY)],
        lambda ext: ext.copy()[_KEY],
        lambda ext: copy.copy(ext)[_KEY],
        lambda ext: pickle.loads(pickle.dumps(ext))[_KEY],
        lambda ext: (ext | {})[_KEY],
        lambda ext: ({} | ext)[_KEY],
        lambda ext: ext.setdefault(_KEY),
        lambda ext: ext.pop(_KEY),
    ]
    for read in readers:
        extensions = (await _send(_governor())).extensions
        record = read(extensions)
        assert isinstance(record, RequestRecord), read
        assert record == reference[_KEY]
    for probe in (
        lambda ext: _KEY in ext,
        lambda ext: len(ext) == len(reference),
        lambda ext: set(ext) == set(reference),
        lambda ext: set(ext.keys()) == set(reference),
        lambda ext: _KEY in repr(ext),
        lambda ext: ext == reference,
        lambda ext: (ext != reference) is False,
    ):
        assert probe((await _send(_governor())).extensions), probe
    extensions = (await _send(_governor())).extensions
    assert extensions["http_version"] == b"HTTP/1.1"
    with pytest.raises(KeyError):
        extensions["absent"]
    assert extensions.get("absent", 5) == 5
    response = await _send(_governor())
    assert response.http_version == "HTTP/1.1"  # what httpx reads of every response
    assert response.extensions.get(_KEY) is response.extensions[_KEY]


async def test_a_record_set_by_hand_is_kept() -> None:
    extensions = (await _send(_governor())).extensions
    extensions[_KEY] = "mine"
    assert (extensions[_KEY], extensions.get(_KEY), dict(extensions)[_KEY]) == ("mine",) * 3
    extensions = (await _send(_governor())).extensions
    del extensions[_KEY]
    assert _KEY not in extensions
    with pytest.raises(KeyError):
        extensions[_KEY]


def test_the_blocking_transport_builds_it_when_read_too() -> None:
    collector = RecordCollector()
    records = []
    for gov in (_governor(hooks=[collector]), _governor()):
        transport = pacekeeper.SyncTransport(gov, transport=_Sync())
        with httpx2.Client(transport=transport, base_url="https://api.test/v1") as client:
            records.append(client.post("/chat/completions", json=_BODY).extensions[_KEY])
    assert records[0] is collector.requests[0]
    assert records[1] == records[0]


async def test_the_info_log_gets_the_record(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pacekeeper"):
        response = await _send(_governor())
    [logged] = [r for r in caplog.records if r.getMessage().startswith("request ")]
    assert logged.pacekeeper is response.extensions[_KEY]  # type: ignore[attr-defined]


def test_a_call_settled_by_hand_still_decides_with_its_record() -> None:
    collector = RecordCollector()
    gov = _governor(hooks=[collector])
    with gov.admit(route="/v1/chat/completions", model="m", tokens=10) as admission:
        decision = admission.report(status=200, prompt_tokens=9, completion_tokens=2)
    assert decision.record is collector.requests[0]
    assert admission.call.record is decision.record
    assert isinstance(collector.attempts[0], AttemptRecord)
    quiet = _governor()
    with quiet.admit(route="/v1/chat/completions", model="m", tokens=10) as admission:
        decision = admission.report(status=200, prompt_tokens=9, completion_tokens=2)
    assert decision.record == collector.requests[0]


async def test_no_record_is_built_until_the_extension_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pacekeeper.core import governor

    built: list[RequestRecord] = []

    def counted(**fields: Any) -> RequestRecord:
        built.append(RequestRecord(**fields))
        return built[-1]

    monkeypatch.setattr(governor, "RequestRecord", counted)
    gov = _governor()
    response = await _send(gov)
    assert gov.stats()[0].ok == 1
    assert response.http_version == "HTTP/1.1"
    assert built == []
    assert response.extensions[_KEY] is built[0]
    assert response.extensions[_KEY] is built[0]
    assert len(built) == 1


@pytest.mark.parametrize("priced", [False, True])
async def test_the_prometheus_collector_counts_answers_without_records(
    priced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone on a governor, the collector takes a success's fields (no record is built for
    it); beside a record hook it is fed the records: the scrapes are the same, to the byte."""
    from prometheus_client import CollectorRegistry, generate_latest

    import pacekeeper.core.governor as governor_module
    from pacekeeper.report.prometheus import GovernorCollector

    built: list[str] = []

    def counting(cls: Any) -> Any:
        def make(**fields: Any) -> Any:
            built.append(cls.__name__)
            return cls(**fields)

        return make

    monkeypatch.setattr(governor_module, "AttemptRecord", counting(AttemptRecord))
    monkeypatch.setattr(governor_module, "RequestRecord", counting(RequestRecord))
    scrapes = []
    for alone in (True, False):
        gov = _governor(hooks=[] if alone else [RecordCollector()], priced=priced)
        registry = CollectorRegistry()
        collector = GovernorCollector(gov)
        registry.register(collector)
        built.clear()
        for tag in ("a", "b", "c"):
            await _send(gov, tag=tag)
        if alone:
            assert built == []
            assert gov._counting[1] == (collector,)
        else:
            assert built == ["AttemptRecord", "RequestRecord"] * 3
            assert gov._counting[1] is None
        scrapes.append(generate_latest(registry).decode())
    assert scrapes[0] == scrapes[1]
    ok = 'model="m",outcome="ok",route="/v1/chat/completions",status="200"'
    assert f"pacekeeper_requests_total{{{ok}}} 3.0" in scrapes[0]

"""BentoML's request timeout as the services run it (aimass.serving._timeout): a request that starts no answer in
time gets the 504, a quick one leaves no live timer behind (BentoML's own left one per request for the whole
timeout), and an answer that has started is never cut."""
from __future__ import annotations

import asyncio
import gc

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from aimass.serving import _timeout


def _app(delay_before: float = 0.0, delay_after: float = 0.0, error: Exception | None = None):
    async def app(scope, receive, send):
        await asyncio.sleep(delay_before)
        if error is not None:
            raise error
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(delay_after)
        await send({"type": "http.response.body", "body": b"ok"})
    return app


async def _call(mw) -> list[dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await mw({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    return sent


def _live_timers() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.TimerHandle) and not o.cancelled())


@pytest.fixture(autouse=True)
def _installed():
    _timeout.install()


def test_no_answer_in_time_is_a_504():
    sent = asyncio.run(_call(TimeoutMiddleware(_app(delay_before=5), timeout=0.05)))
    assert sent[0]["status"] == 504 and b"0.05 seconds" in sent[1]["body"]


def test_a_quick_request_leaves_no_live_timer_and_an_started_answer_is_not_cut():
    async def many():
        mw = TimeoutMiddleware(_app(), timeout=30)
        for _ in range(200):
            assert (await _call(mw))[0]["status"] == 200
        return _live_timers()

    assert asyncio.run(many()) == 0
    slow_body = TimeoutMiddleware(_app(delay_after=0.1), timeout=0.05)
    assert [m.get("status") for m in asyncio.run(_call(slow_body))] == [200, None]


def test_the_apps_own_timeout_error_is_not_taken_for_the_limit():
    with pytest.raises(TimeoutError):
        asyncio.run(_call(TimeoutMiddleware(_app(error=TimeoutError("db")), timeout=30)))

"""The BentoML services' own configuration: BentoML's per-request metrics, access log and tracing stay off in
the app a replica serves (the gate answers /metrics), whatever the environment's BentoML options say."""
from __future__ import annotations

import subprocess
import sys

import pytest

from aimass.serving import services


@pytest.mark.parametrize("family", ["itemknn", "sasrec", "search", "pipeline"])
def test_the_served_app_has_no_bentoml_metrics_access_log_or_tracing(family, monkeypatch):
    from bentoml._internal.configuration.containers import BentoMLContainer

    # what an operator's environment might say: the service's own options still decide
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "api_server.metrics.enabled=true "
                                                 "api_server.logging.access.enabled=true")
    app = services.service(family).to_asgi()
    kinds = [m.cls.__name__ for m in app.user_middleware]
    assert "Gate" in kinds
    assert "AccessLogMiddleware" not in kinds and "RunnerTrafficMetricsMiddleware" not in kinds, kinds
    assert BentoMLContainer.tracing_excluded_urls.get().url_disabled("http://127.0.0.1:8000/recs/feedback")


def test_concurrent_first_requests_of_a_pipeline_replica_all_get_both_stage_cards():
    """The first requests of a fresh pipeline replica fetch the stages' cards; one arriving while another is
    between its two awaits must not see half of them (it got a 500)."""
    import asyncio

    class Stages:
        retrieval, ranking = "retrieval", "ranking"

        async def call(self, stage, method):
            await asyncio.sleep(0.01)
            return {"stage": stage}

    pipeline = object.__new__(services.Pipeline.inner)
    pipeline.stages, pipeline.cards = Stages(), None

    async def both():
        return await asyncio.gather(*(pipeline._cards() for _ in range(4)))

    for cards in asyncio.run(both()):
        assert cards == ({"stage": "retrieval"}, {"stage": "ranking"})


def test_a_pipeline_with_in_process_stages_applies_its_own_events_to_both_before_answering(tmp_path):
    """A bare `bentoml serve` of the pipeline runs its stages in-process: its own acknowledged events reach both
    stages' online state at once, as a single model's do (they waited for the poll). Stages behind Serve handles
    learn them by polling only."""
    import time
    from types import SimpleNamespace

    import numpy as np

    from aimass.serving._online import Online
    from aimass.serving._pipeline import Stages
    from aimass.settings import Settings

    s = Settings(home=tmp_path / "home", online_poll_s=10)  # no poll meanwhile: only the own events count
    onlines = [Online("multi", s, {100: 1, 101: 2}, np.zeros(3)) for _ in range(2)]
    try:
        pipeline = object.__new__(services.Pipeline.inner)
        retrieval, ranking = (SimpleNamespace(engine=SimpleNamespace(online=o)) for o in onlines)
        pipeline.stages = Stages(retrieval, ranking, handles=False)
        pipeline._applied([(1, 7, 101, "play", None, time.time()), (2, 7, 100, "dislike", None, time.time())])
        for online in onlines:
            assert online.history(7, None).tolist() == [2] and online.hidden_of(7) == {1}
        pipeline.stages = Stages("retrieval", "ranking", handles=True)  # Serve handles: nothing called on them
        pipeline._applied([(3, 8, 101, "play", None, time.time())])
    finally:
        for online in onlines:
            online.stop()


def test_a_genre_cap_counts_each_of_an_items_genres_where_the_items_table_lists_several():
    import asyncio

    class Stages:
        retrieval, ranking = "retrieval", "ranking"

        async def call(self, stage, method, **kw):
            if method == "rank":
                return {"items": kw["candidates"], "scores": [1.0] * len(kw["candidates"])}
            items = [1, 2, 3, 4]
            return {"items": items, "scores": [4.0, 3.0, 2.0, 1.0], "cold_start": False, "strategy": "model",
                    "history_length": 1, "history_tail": [9],
                    "attributes": {"genres": ["Action, Comedy", "Comedy", "Drama", "Action|Drama"]}}

    from aimass.serving import _pipeline

    out = asyncio.run(_pipeline.recommend(Stages(), 7, None, 4, True, None, None, None, 1))
    assert out["items"] == [1, 3]  # 2 is a second comedy, 4 a second action film (and drama)


def test_every_service_builds_in_one_process_and_binds_loopback():
    """A process may build every family's service (a notebook deploying each): the shared input models are
    made strict once, not once per service (the fifth failed with a RecursionError); and a bare `bentoml serve`
    of any of them binds 127.0.0.1 unless told otherwise (BentoML's default is every interface)."""
    program = """
from bentoml._internal.configuration.containers import BentoMLContainer
from aimass.serving import services
sizes = []
for family in services.servable():
    svc = services.service(family)
    svc.inject_config()  # what `bentoml serve` does before it binds
    assert str(BentoMLContainer.http.host.get()) == "127.0.0.1", (family, BentoMLContainer.http.host.get())
    sizes.append(len(repr(services.service("itemknn").apis["recommend"].input_spec.__pydantic_core_schema__)))
assert len(set(sizes)) == 1, sizes  # building one more service leaves the others' validation as it was
"""
    res = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_a_client_error_is_answered_not_logged_as_the_replicas_error(caplog, monkeypatch):
    """BentoML logged every 4xx it answered (a body failing validation, an aimass refusal) as an ERROR with a
    traceback and the input's values: any key holder could bury a replica's real errors under them. A validation
    error of aimass's own making is a bug, which BentoML answers 400 too: that one stays logged."""
    import logging

    import pydantic
    from bentoml._internal.server.http_app import log_exception  # what BentoML's app calls on each error
    from bentoml.exceptions import BentoMLException
    from starlette.requests import Request

    request = Request({"type": "http", "method": "POST", "path": "/similar", "headers": []})
    try:
        pydantic.TypeAdapter(int).validate_python("a search text a client sent")
    except pydantic.ValidationError as e:
        invalid = e
    monkeypatch.setenv("AIMASS_SERVE_MODEL", "recs/1")
    monkeypatch.setenv("AIMASS_MONITOR_WINDOW_S", "inf")
    try:
        services._settings()  # aimass's own code, building a model from what it was given
    except pydantic.ValidationError as e:
        ours = e
    cases = [(invalid, False), (ours, True), (BentoMLException("no item 7", error_code=404), False),
             (BentoMLException("store down", error_code=503), True), (RuntimeError("a bug"), True)]
    for exc, logged in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            try:
                raise exc
            except Exception:
                log_exception(request)
        assert bool(caplog.records) == logged, (exc, caplog.records)

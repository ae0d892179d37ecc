"""One serving cluster per test session: a tiny demo dataset, an item-kNN champion, a two-tower + SASRec
pair for the multi-stage path, both deployed on a real Ray Serve over HTTP on 127.0.0.1."""
from __future__ import annotations

import socket

import httpx
import pytest

import aimass
from aimass import registry, serving
from aimass.settings import Settings

TINY = {"dim": 16, "max_len": 20, "epochs": 1, "batch_size": 32}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, settings: Settings, keys: dict[str, str], urls: dict[str, str]):
        self.settings, self.keys, self.urls = settings, keys, urls
        self.client = httpx.Client(timeout=30)

    def post(self, endpoint: str, path: str, body=None, key: str | None = "consumer", **kw) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {self.keys[key]}"} if key else {})}
        if body is not None:
            kw["json"] = body
        return self.client.post(self.urls[endpoint] + path, headers=headers, **kw)

    def get(self, endpoint: str, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return self.client.get(self.urls[endpoint] + path, headers=headers)


@pytest.fixture(autouse=True)
def _leave_the_serving_cluster():
    """Deployments live in a detached cluster; this process must not stay attached to it after a test, or a
    later test's own local Ray (aimass._ray.init) would find Ray initialised and use the wrong cluster."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="package")  # torn down when tests/serving ends, before the rest of the suite
def served(tmp_path_factory):
    s = Settings(home=tmp_path_factory.mktemp("serving") / "home", serve_port=_free_port())
    inter, items = aimass.datasets.generate_demo(s.home.parent / "demo",
                                                 aimass.datasets.DemoConfig(users=60, tracks=120, seed=4))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    runs = {f: aimass.train(f, "demo@v1", TINY if f in ("sasrec", "two-tower") else None, workers=1,
                            progress=False, settings=s).run_id for f in ("itemknn", "two-tower", "sasrec")}
    import ray

    ray.shutdown()  # the training cluster; serving runs on its own detached one
    knn = registry.register(runs["itemknn"], "recs", settings=s)
    registry.promote("recs", knn.version, settings=s)
    registry.register(runs["two-tower"], "retrieval", settings=s)
    registry.register(runs["sasrec"], "ranker", settings=s)
    keys = {"consumer": serving.create_key("tests", settings=s)[0],
            "admin": serving.create_key("ops", role="admin", settings=s)[0],
            "revoked": serving.create_key("gone", settings=s)[0]}
    serving.revoke_key(keys["revoked"], settings=s)
    try:
        d = serving.deploy("recs@champion", "recs", settings=s)
        m = serving.deploy("retrieval/1", "multi", ranker="ranker/1", settings=s)
        ray.shutdown()
        yield Served(s, keys, {"recs": d.url, "multi": m.url})
    finally:
        serving.shutdown(settings=s)

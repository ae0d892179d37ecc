"""One serving cluster per test session: a tiny demo dataset, an item-kNN champion, a two-tower + SASRec
pair for the multi-stage path and a search index of the catalogue, deployed on a real Ray Serve over HTTP on
127.0.0.1."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import psutil
import pytest

import aimass
from aimass import registry, serving
from aimass.serving._cluster import free_port  # noqa: F401  (the tests' ports too)
from aimass.settings import Settings

TINY = {"dim": 16, "max_len": 20, "epochs": 1, "batch_size": 32}


def sharing(settings: Settings, home: Path, **kw) -> Settings:
    """Another home whose catalog, MLflow store and data registry are `settings`' own: it sees the served
    models without training any, and has its own serving cluster (one per home)."""
    return Settings(home=home, catalog_url=settings.catalog, mlflow_tracking_uri=settings.tracking_uri,
                    data_registry=str(settings.registry_path), dvc_remote=settings.remote, **kw)


def cluster_processes(temp_dir: str, address: str) -> list[str]:
    """Every live process that names the cluster's temp folder or its GCS address (Ray's client server does
    only the latter), as 'pid cmdline'. Independent of aimass's own bookkeeping on purpose."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if temp_dir + "/" in line or f"={address}" in line or f" {address}" in line:
            found.append(f"{p.pid} {line[:200]}")
    return found


def cluster_of(settings: Settings) -> tuple[str, str]:
    """(temp dir, GCS address) of the serving cluster of `settings`, while its cluster.json exists."""
    from aimass.serving import _cluster

    state = json.loads(_cluster.state_file(settings).read_text())
    return state["temp_dir"], state["address"]


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
    # batching on (off by default): every HTTP test runs through the batcher too
    s = Settings(home=tmp_path_factory.mktemp("serving") / "home", serve_port=free_port(), serve_batch_max=16)
    inter, items = aimass.datasets.generate_demo(s.home.parent / "demo",
                                                 aimass.datasets.DemoConfig(users=60, tracks=120, seed=4))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    params = {"sasrec": TINY, "two-tower": TINY, "mult-vae": {"hidden": 32, "latent": 8, "epochs": 2}}
    runs = {f: aimass.train(f, "demo@v1", params.get(f), workers=0, progress=False, settings=s).run_id
            for f in ("itemknn", "two-tower", "sasrec", "search", "ease", "mult-vae")}
    knn = registry.register(runs["itemknn"], "recs", settings=s)
    # Forced: the gate's latency check measures this machine, and serving tests must not depend on its load.
    registry.promote("recs", knn.version, force=True, settings=s)
    registry.register(runs["two-tower"], "retrieval", settings=s)
    registry.register(runs["sasrec"], "ranker", settings=s)
    registry.register(runs["search"], "catalogue", settings=s)
    registry.register(runs["ease"], "closed", settings=s)
    registry.register(runs["mult-vae"], "vae", settings=s)
    keys = {"consumer": serving.create_key("tests", settings=s)[0],
            "admin": serving.create_key("ops", role="admin", settings=s)[0],
            "revoked": serving.create_key("gone", settings=s)[0]}
    serving.revoke_key(keys["revoked"], settings=s)
    try:
        d = serving.deploy("recs@champion", "recs", settings=s)
        m = serving.deploy("retrieval/1", "multi", ranker="ranker/1", settings=s)
        q = serving.deploy("catalogue/1", "search", settings=s)
        import ray

        ray.shutdown()
        cluster = cluster_of(s)
        yield Served(s, keys, {"recs": d.url, "multi": m.url, "search": q.url})
    finally:
        serving.shutdown(settings=s)
    assert cluster_processes(*cluster) == []  # replicas, HAProxy and Ray's client server included

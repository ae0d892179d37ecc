"""The forward-pass batcher (serving/_batch.py): concurrent calls become batches, each caller gets its own row
or its batch's error, and nothing is lost or left waiting."""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from aimass import datasets
from aimass.serving._batch import Batcher


def _doubling(sizes: list[int], gate: threading.Event | None = None):
    def fn(xs):
        if gate is not None:
            gate.wait(5)
        sizes.append(len(xs))
        if "boom" in xs:
            raise ValueError("boom in the batch")
        return [2 * x for x in xs]
    return fn


def test_concurrent_calls_share_batches_and_each_gets_its_row():
    sizes: list[int] = []
    b = Batcher(_doubling(sizes), max_batch=8, max_wait_s=0.05)
    with ThreadPoolExecutor(32) as pool:
        out = list(pool.map(b, range(200)))
    assert out == [2 * x for x in range(200)]
    assert sum(sizes) == 200 == b.rows and len(sizes) == b.batches
    assert max(sizes) <= 8 and len(sizes) < 200  # batched, never above the limit


def test_without_a_wait_a_batch_is_what_queued_while_the_model_ran():
    sizes: list[int] = []
    gate = threading.Event()
    b = Batcher(_doubling(sizes, gate), max_batch=64)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(b, x) for x in range(16)]
        while b._busy is False or len(b._queue) < 15:  # one runs (held at the gate), fifteen queue behind it
            threading.Event().wait(0.01)
        gate.set()
        assert [f.result(5) for f in futures] == [2 * x for x in range(16)]
    assert sizes == [1, 15]


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_runs():
    sizes: list[int] = []
    b = Batcher(_doubling(sizes), max_batch=4, max_wait_s=0.2)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(b, x) for x in (1, "boom", 3, 4)]
        errors = [f.exception(5) for f in futures]
    assert all(isinstance(e, ValueError) for e in errors) and sizes == [4]
    assert b(21) == 42  # not stuck
    with pytest.raises(ValueError, match="boom"):
        b("boom")


@pytest.mark.integration
# SASRec, two-tower, item-kNN, EASE, Mult-VAE
@pytest.mark.parametrize("ref", ["ranker/1", "retrieval/1", "recs/1", "closed/1", "vae/1"])
def test_batched_answers_equal_unbatched_ones(served, ref):
    from aimass.serving import Engine

    s = served.settings.model_copy(update={"serve_cache_users": 0})
    plain = Engine(ref, s.model_copy(update={"serve_batch_max": 1}))
    batched = Engine(ref, s.model_copy(update={"serve_batch_max": 16, "serve_batch_wait_ms": 20.0}))
    users = sorted(plain.histories)
    items = [int(i) for i in plain.item_ids[:5]]

    def ask(e: Engine, u: int) -> list[dict]:
        return [e.recommend(u, None, 10), e.recommend(None, [items[u % 5]], 5, filters=None),
                e.rank(u, None, items), e.similar(items[u % 5], 5)]

    want = [ask(plain, u) for u in users]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda u: ask(batched, u), users))
    assert batched.batcher.rows == 4 * len(users) and batched.batcher.batches < batched.batcher.rows
    for w_all, g_all in zip(want, got, strict=True):
        for w, g in zip(w_all, g_all, strict=True):
            assert g["items"] == w["items"]
            np.testing.assert_allclose(g["scores"], w["scores"], rtol=1e-5, atol=1e-6)


def _passes(served) -> tuple[float, float]:
    text = served.get("recs", "/metrics", key="admin").text
    got = {m[1]: float(m[2]) for m in re.finditer(r"^(aimass_model_pass(?:es|_rows))_total (\S+)$", text, re.M)}
    return got["aimass_model_passes"], got["aimass_model_pass_rows"]


@pytest.mark.integration
def test_the_replica_counts_its_model_passes(served):
    items = datasets.load("demo@v1", settings=served.settings).interactions["item_id"].unique()[:3].tolist()
    passes, rows = _passes(served)
    for i in items:  # an explicit history is never answered from the cache: each one runs the model
        r = served.post("recs", "/recommend", {"history": [int(i)], "k": 3})
        assert r.status_code == 200, r.text
    after, after_rows = _passes(served)
    assert after_rows - rows == len(items) and 1 <= after - passes <= len(items)


@pytest.mark.integration
def test_concurrent_http_requests_share_model_passes(served):
    """BentoML runs a sync API in one thread unless the service says more: requests answered one at a time
    would never meet in the batcher (every pass was one row before the replica raised its thread count)."""
    items = datasets.load("demo@v1", settings=served.settings).interactions["item_id"].unique()[:16].tolist()
    passes, rows = _passes(served)
    for _burst in range(5):  # threads meet in the batcher by the scheduler's timing: a few bursts make it sure
        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda i: served.post("recs", "/recommend", {"history": [int(i)], "k": 3})
                                  .status_code, items * 4))
        assert codes == [200] * len(codes)
        after, after_rows = _passes(served)
        if after - passes < after_rows - rows:
            break
    assert after - passes < after_rows - rows, f"{after - passes:.0f} passes for {after_rows - rows:.0f} rows"


@pytest.mark.integration
def test_a_compressed_version_is_never_batched(served):
    """int8 quantises a batch's activations with one scale: a user's answer would depend on who else asked."""
    from aimass import registry
    from aimass.serving import Engine

    small = registry.compress("retrieval", 1, "int8", settings=served.settings)
    s = served.settings.model_copy(update={"serve_batch_max": 64})
    assert Engine(f"retrieval/{small.version}", s).batcher is None
    assert Engine("retrieval/1", s).batcher is not None

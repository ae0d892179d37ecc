"""Registration, aliases and the promotion gate against a real MLflow store and real training runs."""
from __future__ import annotations

import re
import threading

import numpy as np
import pandas as pd
import pytest

import aimass
from aimass import models
from aimass.errors import BackendError, ConflictError, InvalidInputError, NotFoundError
from aimass.settings import Settings
from tests.registry._state import snapshot as _snapshot

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    s = Settings(home=tmp_path_factory.mktemp("registry") / "home")
    cfg = aimass.datasets.DemoConfig(users=60, tracks=120, seed=2)
    inter, items = aimass.datasets.generate_demo(s.home.parent / "demo", cfg)
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    inter2, _ = aimass.datasets.generate_demo(s.home.parent / "demo2", cfg.model_copy(update={"seed": 3}))
    aimass.datasets.register("demo", inter2, "csv", items=items, settings=s)
    runs = {
        "pop": aimass.train("popularity", "demo@v1", workers=0, progress=False, settings=s).run_id,
        "knn": aimass.train("itemknn", "demo@v1", workers=0, progress=False, settings=s).run_id,
        "knn_v2": aimass.train("itemknn", "demo@v2", workers=0, progress=False, settings=s).run_id,
    }
    yield s, runs
    import ray

    ray.shutdown()


def test_register_carries_lineage_and_metrics(env):
    s, runs = env
    v = models.register(runs["knn"], "recs", settings=s)
    assert (v.name, v.version, v.family, v.run_id, v.method) == ("recs", 1, "itemknn", runs["knn"], "original")
    ds = aimass.datasets.get("demo@v1", settings=s)
    assert v.dataset == "demo@v1" and v.dataset_hash == ds.content_hash
    assert 0 < v.metrics["test_ndcg_at_10"] <= 1 and v.source.startswith("models:/m-")
    assert models.show("recs", settings=s).version == 1
    assert [x.version for x in models.versions("recs", settings=s)] == [1]
    scorer = models.load("recs/1", settings=s)
    out = scorer.recommend(pd.DataFrame({"history": [[1, 2, 3]], "k": [5]}))
    assert len(out["items"][0]) == 5 and scorer.info.ref == "recs/1"
    same = scorer.recommend(pd.DataFrame({"history": [np.array([1.0, 2.0, 3.0])], "k": [5.0]}))  # whole floats
    assert same["items"][0] == out["items"][0]
    # what the HTTP schema refuses is refused here too, not answered with one item or a truncated id
    for bad, why in [({"k": [-5]}, "k must be a whole number"), ({"k": [0]}, "k must be"), ({"k": [2.7]}, "k must"),
                     ({"k": [float("nan")]}, "k must"), ({"history": [[1.5]]}, "whole item ids"),
                     ({"history": [["a"]]}, "whole item ids"), ({"items": [[1]]}, "needs a 'history' column")]:
        with pytest.raises(InvalidInputError, match=why):
            scorer.recommend(pd.DataFrame({"history": [[1, 2, 3]], "k": [5], **bad}).drop(
                columns=[] if "items" not in bad else ["history"]))


def test_a_listing_holds_every_model_even_one_whose_name_no_filter_string_takes(env):
    """Another team's model in a shared registry may be named with a quote: the listing failed as a whole."""
    from aimass.tracking import client

    s, runs = env
    v = models.register(runs["pop"], "listed", settings=s)
    mlflow_client = client(s)
    mlflow_client.create_registered_model("team's model")
    try:
        for _ in range(2):
            mlflow_client.create_model_version("team's model", source=v.source, run_id=runs["pop"])
        listed = {m["name"]: m for m in models.list(settings=s)}
        assert (listed["team's model"]["versions"], listed["team's model"]["latest"]) == (2, 2)
        assert listed["listed"]["latest"] == v.version
    finally:  # the other tests' snapshots read every listed model as aimass's own
        mlflow_client.delete_registered_model("team's model")


def test_a_model_another_run_logged_is_registered_without_that_runs_figures_and_gated_on_its_own(env):
    """Registered under the item-kNN run with the popularity run's model, the version claimed item-kNN's
    figures and the gate passed it on them (the champion then served popularity)."""
    import mlflow

    s, runs = env
    champion = models.register(runs["knn"], "mixed", settings=s)
    models.promote("mixed", champion.version, force=True, settings=s)
    other = mlflow.get_run(runs["pop"]).outputs.model_outputs[0].model_id
    v = models.register(runs["knn"], "mixed", model_uri=f"models:/{other}", settings=s)
    assert not [k for k in v.tags if k.startswith("aimass.metric.")], v.tags
    with pytest.raises(ConflictError):  # re-scored, both on demo@v1: popularity is far below item-kNN
        models.promote("mixed", v.version, settings=s)
    assert models.show("mixed@champion", settings=s).version == champion.version


def test_gate_passes_first_champion_and_refuses_worse_models(env):
    s, runs = env
    good = models.register(runs["knn"], "gate", settings=s)
    p = models.promote("gate", good.version, settings=s)
    assert p.promoted and not p.forced and [c.check for c in p.checks] == ["latency"]
    worse = models.register(runs["pop"], "gate", settings=s)
    before = _snapshot(s)
    with pytest.raises(ConflictError, match=r"quality: test_ndcg_at_10 0\.\d+ vs champion 0\.\d+ .*-\d+\.\d+%"):
        models.promote("gate", worse.version, settings=s)
    assert _snapshot(s) == before
    assert models.show("gate@champion", settings=s).version == good.version
    # a metric training did not record (another K) is computed for both on the split they share, not "missing"
    from aimass import registry

    quality = next(c for c in registry.gate("gate", worse.version, metric="test_recall_at_20", settings=s)
                   if c.check == "quality")
    assert quality.detail.startswith("test_recall_at_20 0.") and quality.values["champion"] > 0
    # each decision is recorded on its candidate, a refusal too (the console lists them)
    assert "passed for champion: pass latency" in models.show(good.ref, settings=s).tags["aimass.gate"]
    assert models.show(worse.ref, settings=s).tags["aimass.gate"].endswith(
        " refused for champion: pass dataset; FAIL quality; pass latency")
    forced = models.promote("gate", worse.version, force=True, settings=s)
    assert forced.forced and forced.previous == good.version
    champ = models.show("gate@champion", settings=s)
    assert champ.version == worse.version and "quality" in champ.tags["aimass.forced_promotion"]


class _Planted:
    """What someone with access to the tracking server could log: a pickled model whose loading runs code."""

    def __init__(self, marker: str):
        self.marker = marker

    def load_context(self, context):
        open(self.marker, "w").close()

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_model_aimass_did_not_log_is_never_loaded(env, tmp_path):
    """Registering any logged model is allowed (model_uri), but loading builds the scorer from aimass's own
    code and the model's files: a model logged some other way is refused, its code never run."""
    import mlflow.pyfunc

    from aimass.tracking import mlflow_for

    s, _ = env
    marker = tmp_path / "ran"
    planted = type("Planted", (_Planted, mlflow.pyfunc.PythonModel), {})(str(marker))
    mlflow = mlflow_for(s)
    with mlflow.start_run() as run:
        uri = mlflow.pyfunc.log_model(name="model", python_model=planted).model_uri
    marker.unlink(missing_ok=True)  # logging may load it once itself, in the process that logs it
    v = models.register(run.info.run_id, "planted", model_uri=uri, settings=s)
    with pytest.raises(InvalidInputError, match="is not a model aimass logged"):
        models.load(v.ref, settings=s)
    assert not marker.exists()


def test_a_plain_version_logged_when_its_code_was_named_training_pyfunc_still_loads(env, tmp_path):
    """Versions trained before the MLflow plumbing moved to aimass.tracking name aimass/training/_pyfunc.py as
    their code, the same file name compressed versions carry: the scorer is chosen by the folder's content."""
    import shutil

    import mlflow
    import yaml

    from aimass.registry import _scorer
    from aimass.tracking import mlflow_for

    s, runs = env
    v = models.register(runs["knn"], "old-layout", settings=s)
    mlflow_for(s)
    old = tmp_path / "model"
    shutil.copytree(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{v.name}/{v.version}"), old)
    meta = yaml.safe_load((old / "MLmodel").read_text())
    meta["flavors"]["python_function"]["model_code_path"] = "code/aimass/training/_pyfunc.py"
    (old / "MLmodel").write_text(yaml.safe_dump(meta))
    scorer, now = _scorer(old, v.ref), models.load(v.ref, settings=s)
    history = [np.array([0, 1])]  # dense ids
    assert type(scorer) is type(now)
    assert np.array_equal(scorer.estimator.score(history), now.estimator.score(history))


def test_without_a_champion_a_baseline_version_is_gated_against(env):
    """A name deployed by version has no champion: retraining gates its challenger against the served version
    (`baseline`), quality included; only a first champion with nothing to compare is gated on latency alone."""
    s, runs = env
    served = models.register(runs["knn"], "nochamp", settings=s)
    worse = models.register(runs["pop"], "nochamp", settings=s)
    assert [c.check for c in aimass.registry.gate("nochamp", worse.version, settings=s)] == ["latency"]
    before = _snapshot(s)
    with pytest.raises(ConflictError, match=r"quality: test_ndcg_at_10 0\.\d+ vs champion 0\.\d+"):
        models.promote("nochamp", worse.version, baseline=served.version, settings=s)
    assert _snapshot(s) == before


def test_a_champion_that_cannot_be_read_refuses_promotion(env, monkeypatch):
    """Only a missing alias means "no champion yet". A store that fails while the champion is read (SQLite
    busy, a failing disk: simulated, no user runs one on purpose) must refuse the promotion and name the
    cause, not wave a worse candidate through with the dataset and quality checks skipped."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    s, runs = env
    champ = models.register(runs["knn"], "broken", settings=s)
    models.promote("broken", champ.version, settings=s)
    candidate = models.register(runs["pop"], "broken", settings=s)  # worse: the quality check would refuse it

    def failing(self, name, alias):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", failing)
    before = _snapshot(s)
    with pytest.raises(BackendError, match=r"champion cannot be read: \(sqlite3.OperationalError\) database is"):
        models.promote("broken", candidate.version, settings=s)
    assert _snapshot(s) == before
    assert models.show("broken", settings=s).version == candidate.version
    assert [v.aliases for v in models.versions("broken", settings=s)] == [["champion"], []]


def test_other_dataset_needs_force(env):
    s, runs = env
    models.promote("recs", 1, settings=s)
    other = models.register(runs["knn_v2"], "recs", settings=s)
    before = _snapshot(s)
    with pytest.raises(ConflictError, match="dataset: candidate trained on demo@v2, champion on demo@v1"):
        models.promote("recs", other.version, settings=s)
    assert _snapshot(s) == before


def test_latency_budget_is_enforced(env):
    s, runs = env
    v = models.register(runs["knn"], "slow", settings=s)
    with pytest.raises(ConflictError, match=r"latency: p99 [\d.]+ ms at batch 1 vs budget 0.0 ms"):
        models.promote("slow", v.version, latency_budget_ms=1e-6, settings=s)  # positive, met by no model
    p = models.promote("slow", v.version, alias="challenger", settings=s)
    assert models.show("slow@challenger", settings=s).version == v.version and p.alias == "challenger"


@pytest.mark.parametrize("budget", [0.0, -5.0, float("nan")])
def test_promote_with_a_latency_budget_that_is_not_positive_is_refused_and_records_no_gate(env, budget):
    """A budget no model can meet is a mistake in the request, refused before the gate runs: it is not
    recorded on the version as the gate's refusal of it."""
    from aimass import registry

    s, runs = env
    v = models.register(runs["knn"], "budget", settings=s)
    before = _snapshot(s)
    message = "latency budget must be a positive number of milliseconds"
    with pytest.raises(InvalidInputError, match=message):
        models.promote("budget", v.version, latency_budget_ms=budget, settings=s)
    with pytest.raises(InvalidInputError, match=message):
        registry.gate("budget", v.version, latency_budget_ms=budget, settings=s)
    assert "aimass.gate" not in models.show(v.ref, settings=s).tags
    assert _snapshot(s) == before


def test_a_compression_run_registered_by_hand_stays_a_child_of_its_parent(env):
    """A run that `compress` logged but could not register (its lock timed out) is registered later by hand,
    without a method: its tags make it the int8 child of version 1, not a new original."""
    import mlflow

    from aimass.tracking import mlflow_for

    s, runs = env
    parent = models.register(runs["knn"], "handmade", settings=s)
    mlflow_for(s)
    with mlflow.start_run() as run:  # what compress tags its run with; the model is the parent's files
        mlflow.set_tags({"aimass.method": "int8", "aimass.parent_model": f"handmade/{parent.version}"})
    child = models.register(run.info.run_id, "handmade", model_uri=parent.source, settings=s)
    assert (child.version, child.method, child.parent_version) == (parent.version + 1, "int8", parent.version)
    assert models.show(child.ref, settings=s).tags["aimass.parent_version"] == str(parent.version)
    # under another name its parent's number names no version of that name: a child without a parent there
    other = models.register(run.info.run_id, "handmade-other", model_uri=parent.source, settings=s)
    assert (other.method, other.parent_version) == ("int8", None)
    before = _snapshot(s)
    with pytest.raises(InvalidInputError, match="unknown method 'bogus'"):
        models.register(run.info.run_id, "handmade", method="bogus", model_uri=parent.source, settings=s)
    with pytest.raises(InvalidInputError, match="unknown method 'bogus'"):
        models.register(runs["pop"], "handmade", method="bogus", settings=s)
    assert _snapshot(s) == before


def test_concurrent_promotions_of_one_name_are_serialised(env):
    s, runs = env
    a = models.register(runs["knn"], "race", settings=s)
    b = models.register(runs["knn"], "race", settings=s)
    results: dict = {}
    barrier = threading.Barrier(2)

    def go(version):
        barrier.wait()
        try:
            results[version] = models.promote("race", version, settings=s)
        except ConflictError as e:
            results[version] = e

    threads = [threading.Thread(target=go, args=(v.version,)) for v in (a, b)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    refused = [r for r in results.values() if isinstance(r, ConflictError)]
    assert len(refused) == 1 and "in progress" in str(refused[0])
    winner = next(v for v, r in results.items() if not isinstance(r, ConflictError))
    assert models.show("race@champion", settings=s).version == winner


def test_an_unattended_promotion_waits_for_another_to_end(env):
    """A retrain's gate or a canary's end (wait_s) must not fail after hours of training because a person's
    promotion or a compression's registration of the model held its lock for a moment."""
    from filelock import FileLock

    s, runs = env
    v = models.register(runs["knn"], "waiting", settings=s)
    held = FileLock(s.locks / "model-waiting.lock", thread_local=False)  # released by the timer's thread
    held.acquire()
    try:
        with pytest.raises(ConflictError, match="in progress"):  # a person is told at once
            models.promote("waiting", v.version, settings=s)
        threading.Timer(1.0, held.release).start()
        p = models.promote("waiting", v.version, wait_s=60, settings=s)
    finally:
        if held.is_locked:
            held.release()
    assert p.version == v.version and models.show("waiting@champion", settings=s).version == v.version


@pytest.mark.parametrize("call,exc,message", [
    (lambda s: models.show("nobody", settings=s), NotFoundError, "no registered model named 'nobody'"),
    (lambda s: models.show("recs/99", settings=s), NotFoundError, "has no version 99"),
    (lambda s: models.show("recs@ghost", settings=s), NotFoundError, "has no alias 'ghost'"),
    (lambda s: models.register("0" * 32, "x", settings=s), NotFoundError, "no training run"),
    (lambda s: models.register("0" * 32, "bad/name", settings=s), InvalidInputError, "invalid model name"),
    (lambda s: models.promote("recs", 99, settings=s), NotFoundError, "has no version 99"),
    (lambda s: models.promote("recs", 1, alias="prod", settings=s), InvalidInputError, "unknown alias"),
    (lambda s: models.promote("recs", 1, min_unexposed_users=0, settings=s), InvalidInputError,
     "min_unexposed_users must be a whole number of users >= 1, got 0"),
    (lambda s: models.promote("recs", 1, metric="accuracy", settings=s), InvalidInputError,
     "unknown gate metric 'accuracy'"),
    (lambda s: models.promote("recs", 1, metric="test_ndcg_at_0", settings=s), InvalidInputError,
     "unknown gate metric 'test_ndcg_at_0'"),
])
def test_bad_input_is_refused_and_changes_nothing(env, call, exc, message):
    s, _ = env
    models.register(env[1]["knn"], "recs", settings=s) if not models.list(settings=s) else None
    before = _snapshot(s)
    with pytest.raises(exc, match=message):
        call(s)
    assert _snapshot(s) == before


def test_a_run_without_a_model_cannot_be_registered(env):
    import mlflow

    s, _ = env
    from aimass.tracking import mlflow_for

    mlflow_for(s)
    with mlflow.start_run() as run:
        mlflow.log_param("x", 1)
    before = _snapshot(s)
    with pytest.raises(InvalidInputError, match="has no logged model"):
        models.register(run.info.run_id, "empty", settings=s)
    assert _snapshot(s) == before


def test_a_comparison_split_must_descend_from_both_models_data(env):
    """demo@v2 was registered, not derived from demo@v1: no split is fair to both models, so re-scoring is
    refused and the dataset check refuses as before."""
    from aimass import registry

    s, runs = env
    champ = models.register(runs["knn"], "rescore", settings=s)
    models.promote("rescore", champ.version, settings=s)
    other = models.register(runs["knn_v2"], "rescore", settings=s)
    before = _snapshot(s)
    with pytest.raises(InvalidInputError, match=r"cannot compare on demo@v2: rescore/1 was trained on demo@v1, "
                                                r"which is not demo@v2 or an ancestor of it"):
        models.promote("rescore", other.version, rescore_on="demo@v2", settings=s)
    checks = registry.gate("rescore", other.version, settings=s)
    assert (checks[0].check, checks[0].passed, checks[0].detail) == (
        "dataset", False, "candidate trained on demo@v2, champion on demo@v1")
    assert _snapshot(s) == before


def test_the_challenger_alias_moves_without_the_gate(env):
    from aimass import registry

    s, runs = env
    good = models.register(runs["knn"], "duel", settings=s)
    models.promote("duel", good.version, settings=s)
    worse = models.register(runs["pop"], "duel", settings=s)
    assert registry.set_alias("duel", worse.version, "challenger", settings=s) is None
    assert models.show("duel@challenger", settings=s).version == worse.version
    before = _snapshot(s)
    with pytest.raises(InvalidInputError, match="moves only through promote"):
        registry.set_alias("duel", worse.version, "champion", settings=s)
    with pytest.raises(registry.GateRefusedError) as refused:
        models.promote("duel", worse.version, settings=s)
    assert [c.check for c in refused.value.checks if not c.passed] == ["quality"]
    assert refused.value.checks[1].values["champion"] == good.metrics["test_ndcg_at_10"]
    assert _snapshot(s) == before


def test_a_model_tested_on_a_sample_is_compared_with_the_champion_on_the_same_users(env):
    """Same data, but the candidate's recorded test figure comes from a seeded sample of 10 users: both are
    scored on the whole split, so the same model passes as itself rather than by the sample's luck."""
    s, runs = env
    sampled = aimass.train("itemknn", "demo@v1", workers=0, max_test_users=10, progress=False, settings=s).run_id
    models.promote("sampled", models.register(runs["knn"], "sampled", settings=s).version, settings=s)
    v = models.register(sampled, "sampled", settings=s)
    assert v.metrics["test_users"] == 10
    quality = next(c for c in aimass.registry.gate("sampled", v.version, settings=s) if c.check == "quality")
    assert quality.values["candidate_whole"] == pytest.approx(quality.values["champion_whole"]), quality.detail
    assert quality.passed
    # a figure training did not record (another K) is scored for both, not refused as missing
    deeper = next(c for c in aimass.registry.gate("sampled", v.version, metric="test_ndcg_at_20", settings=s)
                  if c.check == "quality")
    assert "missing" not in deeper.detail and deeper.passed, deeper.detail
    assert deeper.values["candidate_whole"] == pytest.approx(deeper.values["champion_whole"])


@pytest.mark.parametrize("ref", ["recs\n", "recs/1\n", "recs@champion\n", "recs\n/1"])
def test_a_model_name_or_reference_with_a_trailing_newline_is_refused(ref):
    from aimass import registry

    with pytest.raises(InvalidInputError, match="invalid model"):
        registry.parse_ref(ref)
    with pytest.raises(InvalidInputError, match="invalid model name"):
        registry.check_name("recs\n")


def test_a_gate_metric_with_a_trailing_newline_is_not_one_the_gate_can_score():
    from aimass.registry._gate import scorable

    assert scorable("test_ndcg_at_10") and not scorable("test_ndcg_at_10\n")


@pytest.mark.parametrize("elsewhere", ["../outside", "/outside"])
def test_a_model_whose_files_lie_outside_its_folder_is_refused(env, tmp_path, elsewhere):
    """Whoever can log a model to a shared tracking server writes its MLmodel: the files it names are read
    from the model's own folder, never from a path it points elsewhere on the serving machine."""
    import shutil

    import mlflow
    import yaml

    from aimass.registry import _scorer
    from aimass.tracking import mlflow_for

    s, runs = env
    v = models.register(runs["knn"], "escaping", settings=s)
    mlflow_for(s)
    model = tmp_path / "m" / "model"
    shutil.copytree(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{v.name}/{v.version}"), model)
    meta = yaml.safe_load((model / "MLmodel").read_text())
    arts = meta["flavors"]["python_function"]["artifacts"]
    target = (model.parent / "outside") if elsewhere.startswith("..") else tmp_path / "outside"
    shutil.copytree(model / arts["model"]["path"], target)  # a real model folder: only its place is wrong
    arts["model"]["path"] = "../outside" if elsewhere.startswith("..") else str(target)
    (model / "MLmodel").write_text(yaml.safe_dump(meta))
    named = re.escape(arts["model"]["path"])
    with pytest.raises(InvalidInputError, match=rf"names files outside the model's folder \({named}\)"):
        _scorer(model, v.ref)

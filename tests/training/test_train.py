"""Training jobs through real Ray Train (2 workers on a local loopback Ray), tracked in a real MLflow store."""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat

import mlflow
import numpy as np
import pandas as pd
import pytest

import aimass
from aimass.errors import InvalidInputError, NotFoundError
from aimass.settings import Settings
from tests.netcheck import Sampler

pytestmark = pytest.mark.integration

TINY = {  # one family of each kind (counts, closed form, a sequence model, two towers)
    "itemknn": {"neighbors": 20},
    "ease": {},  # its Gram matrix is summed over the workers' users
    "sasrec": {"dim": 16, "n_blocks": 1, "n_heads": 1, "max_len": 20, "epochs": 2, "batch_size": 32},
    # sampled softmax: its item table has sparse gradients, which the workers all-reduce as such
    "two-tower": {"dim": 16, "max_len": 20, "epochs": 2, "batch_size": 32, "loss": "sampled_softmax",
                  "n_negatives": 32},
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    s = Settings(home=tmp_path_factory.mktemp("train") / "home")
    inter, items = aimass.datasets.generate_demo(s.home.parent / "demo",
                                                 aimass.datasets.DemoConfig(users=60, tracks=120, seed=1))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    yield s
    import ray

    ray.shutdown()


def _runs(s: Settings) -> int:
    db = s.home / "mlflow.db"
    return len(aimass.runs.list_runs(settings=s)) if db.exists() else 0


# sasrec's two-worker job is the time-budget test's (a job on workers costs ~10 s of Ray Train start-up)
@pytest.mark.parametrize("family", [f for f in TINY if f != "sasrec"])
def test_each_kind_of_family_trains_on_two_workers_and_is_tracked(home, family):
    with Sampler() as net:  # the job's processes listen on loopback only (../shared/STACK.md)
        r = aimass.train(family, "demo", TINY[family], workers=2, progress=False, settings=home)
    net.check()
    _tracked(home, r, family)
    if family == "ease":  # lambda, decided from the item counts while it fits, is listed with what the data decided
        assert r.resolved["resolved.l2"] > 0
        assert float(mlflow.get_run(r.run_id).data.params["resolved.l2"]) == r.resolved["resolved.l2"]


def _tracked(home, r, family: str) -> None:
    """What a finished job on two workers left in MLflow: its params, dataset tags, metrics and a model."""
    run = mlflow.get_run(r.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["family"] == family and run.data.params["workers"] == "2"
    tags = run.data.tags
    info = aimass.datasets.get("demo", settings=home)
    assert (tags["aimass.dataset"], tags["aimass.dataset_version"], tags["aimass.dataset_hash"]) == (
        "demo", "1", info.content_hash)
    for key in ("best_val_ndcg_at_10", "test_ndcg_at_10", "test_recall_at_10", "test_mrr", "test_coverage_at_10"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    history = mlflow.MlflowClient().get_metric_history(r.run_id, "val_ndcg_at_10")
    assert len(history) == r.epochs >= 1
    model = mlflow.pyfunc.load_model(r.model_uri)
    assert r.model_uri.startswith("models:/m-")
    hist = [3, 4, 5]
    out = model.predict(pd.DataFrame({"history": [hist], "k": [7]}))
    items = out["items"][0]
    assert len(items) == 7 and not set(items) & set(hist) and len(set(items)) == 7
    assert np.all(np.diff(out["scores"][0]) <= 0)  # ranked, best first
    shown = aimass.runs.show(r.run_id, settings=home)
    assert shown["family"] == family and shown["models"] == [r.model_uri]


def test_ctrl_c_during_a_job_on_workers_is_a_keyboard_interrupt_and_ctrl_c_works_after_it(home):
    """Ray Train takes SIGINT over while a run on workers lasts: its handler aborts the run, which then read as
    failed (BackendError, run FAILED), and stayed installed, so no later Ctrl-C in the process did anything."""
    import os
    import signal
    import threading
    import time

    from aimass.tracking import client

    before = signal.getsignal(signal.SIGINT)
    known = {r["run_id"] for r in aimass.runs.list_runs(settings=home)}

    def interrupt_once_training():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.3)
            fresh = [r for r in aimass.runs.list_runs(settings=home) if r["run_id"] not in known]
            if fresh and client(home).get_run(fresh[0]["run_id"]).data.metrics:  # an epoch is done: mid-run
                os.kill(os.getpid(), signal.SIGINT)
                return

    threading.Thread(target=interrupt_once_training, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        aimass.train("sasrec", "demo", {**TINY["sasrec"], "epochs": 10_000}, workers=1, progress=False,
                     settings=home)
    assert signal.getsignal(signal.SIGINT) is before
    (run,) = [r for r in aimass.runs.list_runs(settings=home) if r["run_id"] not in known]
    assert run["status"] == "KILLED"


def test_sequence_models_beat_popularity_on_the_demo(home):
    """The demo's album-continuation structure is learnable: a sequence-aware model must beat popularity (the
    models fitted in process on the jobs' own split: the jobs themselves are tested above)."""
    from aimass.evaluation import evaluate, make_splits
    from aimass.zoo.item_knn import ItemKNN
    from aimass.zoo.popularity import Popularity

    sp = make_splits(aimass.datasets.load("demo", settings=home).interactions, seed=0)
    ndcg = {}
    for est in (Popularity(), ItemKNN()):
        est.fit(sp.train_sequences, sp.n_items)
        ndcg[est.family] = evaluate(est.score, list(sp.test_histories), np.asarray(sp.test_targets), sp.n_items,
                                    ks=(10,))["ndcg@10"]
    assert ndcg["itemknn"] > 2 * ndcg["popularity"], ndcg


BAD = [
    ("bogus", "demo", {}, 1, False, InvalidInputError, "unknown model family 'bogus'"),
    ("itemknn", "ghost", {}, 1, False, NotFoundError, "no dataset named 'ghost'"),
    ("itemknn", "demo@v9", {}, 1, False, NotFoundError, "has no version 9"),
    ("sasrec", "demo", {"lr": -1.0}, 1, False, InvalidInputError, "lr: Input should be greater than 0"),
    ("itemknn", "demo", {"colour": "red"}, 1, False, InvalidInputError, "colour: Extra inputs"),
    ("itemknn", "demo", {}, -1, False, InvalidInputError, r"workers must be 0 \(this process\) or more"),
    ("itemknn", "demo", {}, 64, False, InvalidInputError, "64 workers asked for"),
    ("itemknn", "demo", {}, 1, True, InvalidInputError, "GPU"),
    ("itemknn", "demo", {}, 0, True, InvalidInputError, "a GPU asked for but this process sees none"),
    ("ease", "demo", {"max_items": 50}, 0, False, InvalidInputError, "limit is max_items=50"),
    # valid alone, wrong together or for the data: refused before the run, not as a failed job
    ("sasrec", "demo", {**TINY["sasrec"], "dim": 16, "n_heads": 3}, 0, False, InvalidInputError,
     "invalid params for sasrec: dim=16 is not divisible by n_heads=3"),
    ("sasrec", "demo", {**TINY["sasrec"], "batch_size": 1}, 2, False, InvalidInputError,
     "no training batch for 2 workers: batch_size 1"),
    ("sasrec", "demo", {"time_budget_s": float("inf")}, 0, False, InvalidInputError,
     "time_budget_s: Input should be a finite number"),
    ("ease", "demo", {"l2": float("inf")}, 0, False, InvalidInputError, "l2: Input should be a finite number"),
    ("popularity", "demo", {"seed": -1}, 0, False, InvalidInputError, "seed: Input should be greater than"),
    # absurd sizes: refused naming them, not an overflow in the job that leaves a FAILED run
    ("sasrec", "demo", {"dim": 10**20}, 0, False, InvalidInputError, "dim: Input should be less than or equal"),
    ("two-tower", "demo", {"batch_size": 2**40}, 0, False, InvalidInputError, "batch_size: Input should be less"),
    ("mult-vae", "demo", {"hidden": 2**40}, 0, False, InvalidInputError, "hidden: Input should be less"),
]


@pytest.mark.parametrize("family,dataset,params,workers,gpu,exc,message", BAD)
def test_bad_jobs_fail_before_anything_is_written(home, family, dataset, params, workers, gpu, exc, message):
    before = _runs(home)
    with pytest.raises(exc, match=message):
        aimass.train(family, dataset, params, workers=workers, gpu=gpu, progress=False, settings=home)
    assert _runs(home) == before


def test_too_few_interactions_per_user(home, tmp_path):
    pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 3], "timestamp": [1, 2, 3, 4]}).to_csv(
        tmp_path / "short.csv", index=False)
    aimass.datasets.register("short", tmp_path / "short.csv", "csv", settings=home)
    before = _runs(home)
    with pytest.raises(InvalidInputError, match="too few interactions per user"):
        aimass.train("itemknn", "short", workers=1, progress=False, settings=home)
    assert _runs(home) == before


@pytest.mark.parametrize("splits, message", [
    (["train", "val", "test", "test"], "more than one 'test' row"),
    (["train", "train", "train", "test"], "0 users a 'val' row"),
])
def test_a_split_column_the_protocol_cannot_read_is_bad_input(splits, message):
    """Versions registered before registration checked the split column's layout reach training."""
    from types import SimpleNamespace

    from aimass.training import _prepare

    frame = pd.DataFrame({"user_id": np.repeat(np.arange(1, 31), 4), "item_id": np.tile([1, 2, 3, 4], 30),
                          "timestamp": np.arange(120), "split": splits * 30})
    with pytest.raises(InvalidInputError, match=message):
        _prepare(SimpleNamespace(interactions=frame, ref="old@v1"), None, 0)


def test_a_half_written_text_feature_cache_is_computed_again(home):
    from aimass import datasets
    from aimass.training import _prepare, _text_features

    ds = datasets.load("demo", settings=home)
    _, splits = _prepare(ds, None, 0)
    cache = home.home / "cache" / "text-features" / f"{ds.info.content_hash}.npy"
    cache.parent.mkdir(parents=True, exist_ok=True)
    whole = io.BytesIO()  # a job killed while it wrote the cache: half of a right-sized array
    np.save(whole, np.ones((splits.n_items + 1, 384), dtype=np.float32))
    cache.write_bytes(whole.getvalue()[:len(whole.getvalue()) // 2])
    feats = _text_features(home, ds, splits, False)
    assert feats.shape[0] == splits.n_items + 1 and np.array_equal(np.load(cache), feats)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left beside it


def test_no_training_example_is_refused_before_the_run(home, tmp_path):
    # 3 interactions a user: one to train on, one to validate, one to test; SASRec needs 2 to train on
    pd.DataFrame({"user_id": np.repeat(np.arange(1, 9), 3), "item_id": np.tile([1, 2, 3], 8),
                  "timestamp": np.arange(24)}).to_csv(tmp_path / "three.csv", index=False)
    aimass.datasets.register("three", tmp_path / "three.csv", "csv", settings=home)
    before = _runs(home)
    with pytest.raises(InvalidInputError, match="sasrec has no training example in this dataset"):
        aimass.train("sasrec", "three", TINY["sasrec"], workers=0, progress=False, settings=home)
    assert _runs(home) == before


def test_a_catalogue_beyond_free_memory_is_refused_naming_both(home, monkeypatch):
    import psutil

    # what a machine with 0.1 MB free would say: EASE's dense matrix over the demo's catalogue is more
    free = psutil.virtual_memory()._replace(available=100_000)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: free)
    before = _runs(home)
    with pytest.raises(InvalidInputError, match=r"ease needs about 0\.\d MB for 1\d\d items \(2 worker\(s\) x "
                                                r"0\.\d MB\) and this machine has 0\.1 MB free"):
        aimass.train("ease", "demo", workers=2, progress=False, settings=home)
    assert _runs(home) == before


def test_a_one_pass_family_this_machine_would_take_longer_than_the_budget_over_is_refused(home, tmp_path):
    # 3,000 items: EASE's inverse is timed against a 2,048 one here (a fraction of a second), more than 6 ms
    rng = np.random.default_rng(0)
    pd.DataFrame({"user_id": np.repeat(np.arange(1, 601), 5), "item_id": rng.permutation(3000) + 1,
                  "timestamp": np.arange(3000)}).to_csv(tmp_path / "wide.csv", index=False)
    aimass.datasets.register("wide", tmp_path / "wide.csv", "csv", settings=home)
    before = _runs(home)
    with pytest.raises(InvalidInputError, match=r"ease on 3,000 items takes about \d+ s on this machine \(one pass, "
                                                r"which cannot stop early\) and the time budget is 0 s"):
        aimass.train("ease", "wide", workers=0, time_budget_min=0.0001, progress=False, settings=home)
    assert _runs(home) == before


def test_the_local_rays_folders_sit_in_one_of_this_users_alone(home):
    """Ray opens the temp folder it is given, and each session's, to every user (0777): that folder is inside
    one only this user can enter, so no other user reads or swaps its sockets."""
    from aimass import _ray

    _ray.init(home)
    folder = _ray.temp_folder(home)
    assert list(folder.glob("session_2*/sockets"))
    st = folder.parent.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()


def test_params_are_recorded_as_the_family_reads_them(home):
    r = aimass.train("itemknn", "demo", {"neighbors": 20.0}, workers=0, progress=False, settings=home)
    assert json.loads(mlflow.get_run(r.run_id).data.tags["aimass.job"])["params"] == {"neighbors": 20}


def test_resume_continues_a_stopped_job_in_the_same_run(home):
    params = {**TINY["sasrec"], "patience": 10}
    # in this process (workers=0): a resume on workers is the time-budget test's
    first = aimass.train("sasrec", "demo", params, workers=0, epochs=1, max_val_users=7, progress=False,
                         settings=home)
    assert first.epochs == 1
    job = json.loads(mlflow.get_run(first.run_id).data.tags["aimass.job"])
    assert job["max_val_users"] == 7  # the cap really used, so a resume validates on the same 7 users
    # what the first part said of its budget does not outlive the resume that earned no such note
    mlflow.MlflowClient().set_tag(first.run_id, "aimass.budget_note", "validation peaked at epoch 1 of 9")
    again = aimass.resume(first.run_id, epochs=3, progress=False, settings=home)
    assert again.run_id == first.run_id and again.epochs == 3
    assert "aimass.budget_note" not in mlflow.get_run(first.run_id).data.tags
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(first.run_id, "loss")]
    assert steps == [1, 2, 3]  # epoch 1 from the first job, 2 and 3 continued from its checkpoint
    # the resumed epochs were validated on those same users: the restored best epoch scores as recorded
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert again.metrics["best_val_ndcg@10"] == pytest.approx(max(h["val_ndcg@10"] for h in again.history),
                                                              abs=1e-6)
    from aimass.evaluation import make_splits

    splits = make_splits(aimass.datasets.load("demo", settings=home).interactions, max_val_users=7, seed=0)
    assert len(splits.val_users) == 7 and job["val_users_sha1"] == hashlib.sha1(
        np.asarray(splits.val_users, dtype=np.int64).tobytes()).hexdigest()


def test_runs_with_other_seeds_are_judged_on_the_same_users(home):
    """The capped validation users and the sampled test users are one draw per dataset version, not the
    model's seed: otherwise two seeds (or an auto search's probes) are compared on different users."""
    jobs, runs = [], []
    for seed in (1, 2):
        r = aimass.train("itemknn", "demo", {"neighbors": 20, "seed": seed}, workers=0, max_val_users=7,
                         max_test_users=5, progress=False, settings=home)
        runs.append(r)
        jobs.append(json.loads(mlflow.get_run(r.run_id).data.tags["aimass.job"]))
    assert jobs[0]["val_users_sha1"] == jobs[1]["val_users_sha1"] and jobs[0]["eval_seed"] == 0
    # item-kNN ignores its seed: the same model on the same users scores the same
    assert runs[0].metrics["test_users"] == 5
    for key in ("best_val_ndcg@10", "test_ndcg@10", "test_recall@10"):
        assert runs[0].metrics[key] == runs[1].metrics[key]
    # a one-pass family has nothing to continue: a resume would count again and log a second model in the run
    with pytest.raises(InvalidInputError, match="trains in one pass"):
        aimass.resume(runs[0].run_id, progress=False, settings=home)
    assert len(aimass.runs.show(runs[0].run_id, settings=home)["models"]) == 1


def test_a_resume_of_a_job_whose_budget_was_a_param_and_is_spent_is_refused(home):
    params = {**{k: v for k, v in TINY["sasrec"].items() if k != "epochs"}, "time_budget_s": 2}
    first = aimass.train("sasrec", "demo", params, workers=0, progress=False, settings=home)
    assert first.stop_reason == "time budget"
    with pytest.raises(InvalidInputError, match="its own whole budget"):
        aimass.resume(first.run_id, progress=False, settings=home)
    # nothing trained further: one loss per epoch of the first job
    assert len(mlflow.MlflowClient().get_metric_history(first.run_id, "loss")) == first.epochs


def test_local_mode_trains_in_this_process_and_resumes(home):
    """workers=0: Ray Train's local mode, the same loop without a cluster; its checkpoints land where Ray
    Train's would (two kept), so resume works the same."""
    first = aimass.train("sasrec", "demo", TINY["sasrec"], workers=0, epochs=1, progress=False, settings=home)
    run = mlflow.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["workers"] == "0" and first.epochs == 1
    again = aimass.resume(first.run_id, epochs=3, progress=False, settings=home)
    assert again.run_id == first.run_id and again.epochs == 3
    assert first.stop_reason == again.stop_reason == "epochs"  # the first part's reason did not end the resume
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(first.run_id, "loss")]
    assert steps == [1, 2, 3]
    kept = sorted(p.name for p in (home.home / "ray-results" / first.run_id).glob("checkpoint_*"))
    assert len(kept) == 2 and all((home.home / "ray-results" / first.run_id / k / "state.json").exists()
                                  for k in kept)
    assert 0 <= again.metrics["test_ndcg@10"] <= 1
    # each job logged its model in the run; the run's model is the resumed one, not the first part's
    assert aimass.runs.show(first.run_id, settings=home)["models"] == [again.model_uri, first.model_uri]
    assert aimass.registry.register(first.run_id, "resumed", settings=home).source == again.model_uri
    # nothing left to train: refused before the finished run is reopened
    for kwargs, message in (({"epochs": 3}, "has trained 3 epochs already"),
                            ({"epochs": 5, "time_budget_min": 0.0001}, "minutes already, its whole budget")):
        with pytest.raises(InvalidInputError, match=message):
            aimass.resume(first.run_id, progress=False, settings=home, **kwargs)
        assert mlflow.get_run(first.run_id).info.status == "FINISHED"
    # a job that ran its family's default epochs (no count recorded) has nothing left either
    from aimass.zoo import family_class

    default = family_class("sasrec").Config().epochs
    _without_an_epoch_count(home, first.run_id, trained=default)
    with pytest.raises(InvalidInputError, match=f"has trained {default} epochs already"):
        aimass.resume(first.run_id, progress=False, settings=home)
    assert mlflow.get_run(first.run_id).info.status == "FINISHED"


def test_a_diverged_first_epoch_is_never_the_model_and_a_job_that_only_diverged_says_so(home, monkeypatch):
    """Validation figures NaN (the model diverged) at the first epoch: no best model exists yet when its
    checkpoint is written, which must not end the job; the next finite epoch becomes the model. A job whose
    every epoch diverged fails naming that, not a missing folder."""
    import aimass.zoo.trainer as trainer
    from aimass.errors import BackendError

    real, calls = trainer.validation_metrics, []

    def diverged_first(*args, **kw):
        calls.append(1)
        got = real(*args, **kw)
        return {k: float("nan") for k in got} if len(calls) == 1 else got

    monkeypatch.setattr(trainer, "validation_metrics", diverged_first)
    r = aimass.train("sasrec", "demo", TINY["sasrec"], workers=0, epochs=2, progress=False, settings=home)
    assert (r.epochs, r.best_epoch) == (2, 2) and len(calls) == 2
    monkeypatch.setattr(trainer, "validation_metrics", lambda *a, **k: {k2: float("nan") for k2 in real(*a, **k)})
    with pytest.raises(BackendError, match="diverged: its validation figures were NaN at every one of its 2"):
        aimass.train("sasrec", "demo", TINY["sasrec"], workers=0, epochs=2, progress=False, settings=home)
    # the reason stays with the run, where the console and `aimass runs` read it (MLflow keeps only FAILED)
    failed = aimass.runs.list_runs(settings=home)[0]
    assert failed["status"] == "FAILED" and "diverged: its validation figures were NaN" in failed["error"]


def test_a_checkpoint_from_before_ensembles_resumes_as_one_network(home):
    """A checkpoint whose config has no ``members`` holds one network: a budgeted resume, whose budget would
    buy an ensemble on this sparse data, must rebuild that one network rather than fail to load it."""
    params = {**TINY["sasrec"], "epochs": 500, "patience": None}
    first = aimass.train("sasrec", "demo", {**params, "members": 1}, workers=0, epochs=1, time_budget_min=0.5,
                         progress=False, settings=home)
    client = mlflow.MlflowClient()
    job = json.loads(client.get_run(first.run_id).data.tags["aimass.job"])
    job["params"].pop("members")  # as an older aimass recorded it
    client.set_tag(first.run_id, "aimass.job", json.dumps(job))
    saved_configs = list((home.home / "ray-results" / first.run_id).glob("checkpoint_*/best/config.json"))
    for saved in saved_configs:
        meta = json.loads(saved.read_text())
        meta["config"].pop("members")
        saved.write_text(json.dumps(meta))
        # a config this aimass cannot read is refused by name, not rebuilt from re-derived values
        saved.write_text(json.dumps({**meta, "config": {**meta["config"], "heads_per_block": 3}}))
    with pytest.raises(InvalidInputError, match="does not fit this aimass's sasrec config"):
        aimass.resume(first.run_id, epochs=2, progress=False, settings=home)
    for saved in saved_configs:
        meta = json.loads(saved.read_text())
        meta["config"].pop("heads_per_block")
        saved.write_text(json.dumps(meta))
    again = aimass.resume(first.run_id, epochs=2, progress=False, settings=home)
    assert again.epochs == 2 and again.members == 1 and again.n_parameters == first.n_parameters


def _without_an_epoch_count(home, run_id: str, trained: int) -> dict:
    """The run as a job that gave no epoch count records it, its last checkpoint at epoch `trained`; returns
    that checkpoint's state."""
    from aimass.training import _latest_checkpoint

    client = mlflow.MlflowClient()
    job = json.loads(client.get_run(run_id).data.tags["aimass.job"])
    job["epochs"] = None
    job["params"].pop("epochs")
    client.set_tag(run_id, "aimass.job", json.dumps(job))
    state_file = _latest_checkpoint(home, run_id) / "state.json"
    state = {**json.loads(state_file.read_text()), "epoch": trained}
    state_file.write_text(json.dumps(state))
    return state


def test_time_budget_stops_every_worker_at_the_same_step(home):
    """Two workers must agree on when the budget runs out: one stopping a step before the other hangs DDP."""
    # a sampled loss: the members' item tables take sparse gradients, all-reduced as such and checkpointed
    params = {**TINY["sasrec"], "epochs": 500, "patience": None, "batch_size": 8, "loss": "sampled_softmax",
              "n_negatives": 32}
    with Sampler() as net:
        r = aimass.train("sasrec", "demo", params, workers=2, time_budget_min=0.05, progress=False, settings=home)
    net.check()
    _tracked(home, r, "sasrec")  # the sequence model's case of the test above
    assert 1 <= r.epochs < 500  # stopped by the 3 s budget, long before the epochs ran out
    # the demo is sparse and an epoch of it takes milliseconds: the budget trains an ensemble, on both workers
    members = int(mlflow.get_run(r.run_id).data.params["resolved.members"])
    aimass.registry.register(r.run_id, "budgeted", settings=home)
    model = aimass.registry.load("budgeted/1", settings=home)
    assert members > 1 and len(model.estimator.module_.members) == members == r.members
    tags = mlflow.get_run(r.run_id).data.tags
    assert r.stop_reason == tags["aimass.stop_reason"] == "time budget"
    # a budget note (the best epoch came in the budget's first half) names that epoch; a last-epoch best has none
    assert tags.get("aimass.budget_note", "") == r.note
    assert not r.note or f"peaked at epoch {r.best_epoch} of {r.epochs}," in r.note
    assert r.note == "" or r.best_epoch < r.epochs
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(r.run_id, "loss")]
    assert steps == list(range(1, r.epochs + 1))
    # the job's own budget is spent: a resume that gives none would buy one step, so it is refused by name
    with pytest.raises(InvalidInputError, match="its own whole budget of 0.05"):
        aimass.resume(r.run_id, epochs=r.epochs + 1, progress=False, settings=home)
    # a resume rebuilds the ensemble its checkpoint holds
    assert aimass.resume(r.run_id, epochs=r.epochs + 1, time_budget_min=5, progress=False,
                         settings=home).members == members
    # a budgeted job with no epoch count runs past its family's default count (200): resumed with a budget,
    # it is not refused as having no epoch left
    state = _without_an_epoch_count(home, r.run_id, trained=250)
    more = aimass.resume(r.run_id, time_budget_min=state["train_time_s"] / 60 + 0.02, progress=False, settings=home)
    assert more.epochs > 250 and more.stop_reason == "time budget"


def test_a_job_may_test_on_a_seeded_sample_of_users(home):
    """A large catalogue's full-ranking test costs users x items: max_test_users samples the test users
    (seeded: the same sample each time), and the run records how many it tested."""
    full = aimass.train("popularity", "demo", None, workers=0, progress=False, settings=home)
    a = aimass.train("itemknn", "demo", None, workers=0, max_test_users=7, progress=False, settings=home)
    b = aimass.train("itemknn", "demo", None, workers=0, max_test_users=7, progress=False, settings=home)
    assert full.metrics["test_users"] > 7 and a.metrics["test_users"] == b.metrics["test_users"] == 7
    assert a.metrics["test_ndcg@10"] == b.metrics["test_ndcg@10"]
    assert json.loads(mlflow.get_run(a.run_id).data.tags["aimass.job"])["max_test_users"] == 7
    before = _runs(home)
    with pytest.raises(InvalidInputError, match="max_test_users must be at least 1"):
        aimass.train("itemknn", "demo", None, workers=0, max_test_users=0, progress=False, settings=home)
    assert _runs(home) == before

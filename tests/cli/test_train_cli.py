"""`aimass train`, `runs` and `models` as a user runs them, and `dvc repro` of the reference pipeline."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cli.test_datasets_cli import AIMASS, run

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_train_auto_searches_on_validation_and_registers_the_best_with_its_leaderboard(tmp_path):
    home = tmp_path / "home"
    demo = json.loads(run(home, "datasets", "generate-demo", str(tmp_path / "d"), "--users", "60", "--tracks",
                          "120", "--json").stdout)
    run(home, "datasets", "register", "demo", demo["interactions"], "--format", "csv")
    short = run(home, "train", "auto", "--dataset", "demo", "--time-budget", "0.5", "--workers", "0", ok=False)
    assert short.returncode != 0 and "at least 1 minute" in short.stderr
    assert not (home / "mlflow.db").exists() or json.loads(run(home, "runs", "list", "--json").stdout) == []
    unknown = run(home, "train", "auto", "--dataset", "nope", "--time-budget", "1", ok=False)
    assert unknown.returncode == 3 and "model search on" not in unknown.stdout + unknown.stderr  # no stage line
    # a refusal that needs the data (EASE's size limit, over the demo's catalogue) is one line too
    limit = run(home, "train", "ease", "--dataset", "demo", "-p", "max_items=10", "--workers", "0", ok=False)
    assert limit.returncode == 2 and limit.stdout == "" and "limit is max_items=10" in limit.stderr
    named = run(home, "train", "auto", "--dataset", "demo", "--time-budget", "1", "--name", "bad name", ok=False)
    assert named.returncode != 0 and "invalid model name 'bad name'" in named.stderr  # before the budget is spent
    assert not (home / "mlflow.db").exists() or json.loads(run(home, "runs", "list", "--json").stdout) == []
    # --epochs 1 caps the neural candidates so that the search ends early: what is checked is its shape
    res = run(home, "train", "auto", "--dataset", "demo", "--time-budget", "1", "--workers", "0", "--epochs",
              "1", "--json")
    out = json.loads(res.stdout)
    board = out["leaderboard"]
    ranked = [r for r in board if r["rank"] != "-"]
    baselines = sorted((r["family"], r["params"]) for r in board if r["stage"] == "baseline")
    assert baselines == [("ease", ""), ("itemknn", ""), ("itemknn", '{"shrink": 0}'), ("popularity", "")]
    assert {"popularity", "itemknn", "ease", "sasrec", "two-tower"} <= {r["family"] for r in ranked}
    # Mult-VAE is probed unless EASE, the bag-of-items baseline, validated below item-kNN (its best baseline)
    second = next(r for r in board if r["params"] == '{"shrink": 0}')
    assert second["rank"] != "-" or second["note"].startswith("not run: the first itemknn job took")
    val: dict[str, float] = {}
    for r in board:
        if r["stage"] == "baseline" and r["rank"] != "-":
            val[r["family"]] = max(val.get(r["family"], 0.0), float(r["val_ndcg@10"]))
    vae = next(r for r in board if r["family"] == "mult-vae")
    if vae["rank"] == "-":  # the printed figures are rounded, and rounding keeps their order (ties aside)
        assert vae["note"].startswith("not probed: EASE") and vae["run_id"] == "" and val["ease"] <= val["itemknn"]
    else:
        assert val["ease"] >= val["itemknn"]
    assert any(r["stage"] == "final" for r in ranked)
    vals = [float(r["val_ndcg@10"]) for r in ranked]
    assert vals == sorted(vals, reverse=True) and out["best_run_id"] == ranked[0]["run_id"]
    assert out["registered"] == "demo/1"
    shown = json.loads(run(home, "runs", "show", out["best_run_id"], "--json").stdout)
    assert shown["tags"]["aimass.auto.rank"] == "1"
    assert [r["run_id"] for r in shown["leaderboard"]][:len(ranked)] == [r["run_id"] for r in ranked]
    final = next(r for r in board if r["stage"] == "final")
    continued = [r for r in board if r["note"] == f"continued as the final candidate (run {final['run_id']})"]
    assert len(continued) == 1 and continued[0]["family"] == final["family"] and continued[0]["run_id"] == ""
    neural = next(r for r in ranked if r["family"] in ("sasrec", "two-tower"))
    params = json.loads(run(home, "runs", "show", neural["run_id"], "--json").stdout)["params"]
    # what the data decided is recorded with the run: the history length the network reads, and the data's
    # statistics it was decided from
    assert int(params["resolved.max_len"]) >= 8 and float(params["data.per_item"]) > 0
    # a budget on this sparse demo buys a SASRec ensemble, and the job says how many members it trained
    one = json.loads(run(home, "train", "sasrec", "--dataset", "demo", "--workers", "0", "--time-budget", "0.05",
                         "--param", "dim=16", "--param", "n_blocks=1", "--json").stdout)
    assert one["members"] > 1
    shown = json.loads(run(home, "runs", "show", one["run_id"], "--json").stdout)
    assert int(shown["params"]["resolved.members"]) == one["members"]


def test_train_runs_models_round_trip(tmp_path):
    home = tmp_path / "home"
    demo = json.loads(run(home, "datasets", "generate-demo", str(tmp_path / "d"), "--users", "50", "--tracks",
                          "100", "--json").stdout)
    run(home, "datasets", "register", "demo", demo["interactions"], "--format", "csv")
    # in this process (Ray Train's local mode): the quickstart's test runs the CLI's Ray jobs
    trained = run(home, "train", "itemknn", "--dataset", "demo@v1", "--workers", "0", "--param", "neighbors=30",
                  "--json")
    out = json.loads(trained.stdout)  # all of stdout, so nothing else was printed there (json.loads: "Extra data")
    assert trained.stderr == "", trained.stderr
    log = (home / "logs" / "aimass.log").read_text()
    assert "local mode" in log and " mlflow." in log  # Ray Train's and MLflow's output went to the log instead
    assert out["family"] == "itemknn" and out["dataset"] == "demo@v1" and out["model_uri"].startswith("models:/")
    assert 0 < out["metrics"]["test_ndcg@10"] <= 1
    listed = json.loads(run(home, "runs", "list", "--json").stdout)
    assert [r["run_id"] for r in listed] == [out["run_id"]]
    shown = json.loads(run(home, "runs", "show", out["run_id"], "--json").stdout)
    assert shown["params"]["param.neighbors"] == "30" and shown["models"] == [out["model_uri"]]
    reg = json.loads(run(home, "models", "register", out["run_id"], "--name", "recs", "--json").stdout)
    assert reg["version"] == 1 and reg["dataset"] == "demo@v1"
    promo = json.loads(run(home, "models", "promote", "recs", "1", "--json").stdout)
    assert promo["promoted"] and promo["alias"] == "champion"
    assert json.loads(run(home, "models", "show", "recs@champion", "--json").stdout)["version"] == 1
    bad = run(home, "train", "itemknn", "--dataset", "demo", "--param", "neighbors", ok=False)
    assert bad.returncode == 2 and "key=value" in bad.stderr
    bad = run(home, "train", "sasrec", "--dataset", "demo", "--param", "lr=-0.1", ok=False)
    assert bad.returncode == 2 and "lr: Input should be greater than 0" in bad.stderr
    # a resume continues the run's own job: a flag it would ignore is refused, not dropped
    bad = run(home, "train", "--resume", out["run_id"], "--workers", "2", "--param", "neighbors=5", ok=False)
    assert bad.returncode == 2 and "--param, --workers cannot be given" in bad.stderr
    assert len(json.loads(run(home, "runs", "list", "--json").stdout)) == 1


def test_dvc_repro_runs_the_reference_pipeline(tmp_path):
    work = tmp_path / "pipeline"
    work.mkdir()
    for name in ("dvc.yaml", "pipelines", "platform", ".gitignore"):  # platform/: the stages depend on its code
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, work / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo"].update(users=60, tracks=120)
    params["train"].update(family="itemknn", params={}, epochs=None, workers=0)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "AIMASS_HOME": str(tmp_path / "home"), "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(AIMASS).parent}:{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], [str(Path(AIMASS).parent / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    res = subprocess.run([str(Path(AIMASS).parent / "dvc"), "repro"], cwd=work, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    # the train stage speaks as the CLI does: its stage line, the libraries' output in the home's log
    log = tmp_path / "home" / "logs" / "aimass.log"
    assert f"training itemknn on demo@v1; logs: {log}" in res.stdout and log.stat().st_size > 0
    evaluated = json.loads((work / "metrics" / "eval.json").read_text())
    assert evaluated["dataset"] == "demo@v1" and 0 < evaluated["test_ndcg_at_10"] <= 1
    assert 0 < evaluated["test_sampled_ndcg_at_10"] <= 1  # the old-paper protocol, labelled
    # the metrics are git's to version (`dvc metrics diff` compares commits); the data output is DVC's
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=work, env=env,
                            capture_output=True, text=True, check=True).stdout
    shown = {line[3:] for line in status.splitlines()}
    assert {"metrics/train.json", "metrics/eval.json", "data/prepared.json", "dvc.lock"} <= shown, shown
    assert not any(p.startswith("data/demo/") for p in shown), shown
    trained = json.loads((work / "metrics" / "train.json").read_text())
    assert trained["model_uri"] == evaluated["model_uri"]
    # another home: its state is outside DVC's view, so the stages run again there (never skipped, nor restored
    # from DVC's run cache) and the model is trained in it
    other = {**env, "AIMASS_HOME": str(tmp_path / "other")}
    res = subprocess.run([str(Path(AIMASS).parent / "dvc"), "repro"], cwd=work, env=other, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(run(tmp_path / "other", "datasets", "list", "--json").stdout)[0]["name"] == "demo"
    again = json.loads((work / "metrics" / "train.json").read_text())
    assert again["run_id"] != trained["run_id"]
    assert json.loads(run(tmp_path / "other", "runs", "list", "--json").stdout)[0]["run_id"] == again["run_id"]


def test_train_auto_prints_its_leaderboard_and_fails_when_the_winner_cannot_be_registered(monkeypatch, capsys,
                                                                                          tmp_path):
    """A search of 45 minutes whose registration failed (another promotion held the name's lock) still shows
    what it found, but the exit is the failure's: a script must not deploy a name that was never registered."""
    import importlib

    from aimass import datasets, models, training

    cli_train = importlib.import_module("aimass.cli.train")  # the package exports a command named train
    from aimass.cli._common import state
    from aimass.errors import ConflictError
    from aimass.settings import Settings
    from aimass.training._auto import AutoResult, Candidate

    best = Candidate("itemknn", {}, "baseline", run_id="r1", val_ndcg=0.1)
    monkeypatch.setattr(training, "auto", lambda *a, **k: AutoResult("s1", "demo@v1", best, [best], 1.0))
    monkeypatch.setattr(datasets, "get", lambda *a, **k: None)  # the search itself is not run here

    def held(*a, **k):
        raise ConflictError("another promotion of 'demo' is in progress")

    monkeypatch.setattr(models, "register", held)
    monkeypatch.setattr(state, "settings", Settings(home=tmp_path / "home"), raising=False)
    with pytest.raises(ConflictError):
        cli_train._auto("demo", 1, 0, None, None, None, True)
    printed = capsys.readouterr().out  # without the CLI's set-up, its stage line is printed too
    out = json.loads(printed[printed.index("{"):])
    assert out["registered"] == "not registered: another promotion of 'demo' is in progress"
    assert out["best_run_id"] == "r1"

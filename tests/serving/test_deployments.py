"""Deployments as the SDK and CLI see them, the Serve config they write, and the network rule: every
listener the serving cluster starts is on loopback."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from aimass import serving
from aimass.errors import InvalidInputError, NotFoundError
from aimass.serving import _cluster, _procs
from tests.netcheck import listeners, non_loopback

pytestmark = pytest.mark.integration
AIMASS = str(Path(sys.executable).with_name("aimass"))


def test_deployments_list_show_and_pinned_versions(served):
    s = served.settings
    by = {d.endpoint: d for d in serving.deployments(settings=s)}
    assert by["recs"].status == "RUNNING" and by["recs"].requested == "recs@champion"
    assert (by["recs"].model, by["recs"].version, by["recs"].family) == ("recs", 1, "itemknn")
    assert by["multi"].family == "pipeline" and by["multi"].ranker == "ranker/1"
    assert serving.show("recs", settings=s).url == served.urls["recs"]
    assert by["recs"].proxy == _cluster.proxy_mode(s)


def test_written_serve_config_builds_the_same_applications(served):
    from ray.serve.schema import ServeDeploySchema

    from aimass.serving import app

    path = Path(serving.show("recs", settings=served.settings).config)
    cfg = yaml.safe_load(path.read_text())
    # it and the deployment records carry the store URLs replicas need (credentials too): this user's only
    records = list((served.settings.home / "serve" / "deployments").glob("*.json"))
    assert records and {p.stat().st_mode & 0o777 for p in [path, *records]} == {0o600}
    ServeDeploySchema.model_validate(cfg)  # what `serve deploy` validates first
    apps = {a["name"]: a for a in cfg["applications"]}
    assert {"recs", "multi"} <= set(apps) and apps["recs"]["route_prefix"] == "/recs"
    assert cfg["http_options"] == {"host": "127.0.0.1", "port": served.settings.serve_port}
    assert apps["recs"]["import_path"] == "aimass.serving.app:build"
    assert apps["recs"]["args"]["env"]["AIMASS_SERVE_MODEL"] == "recs/1"
    multi = app.build(apps["multi"]["args"])
    assert multi._bound_deployment.name == "ingress"
    # Serve's logger below INFO (AIMASS_SERVE_LOG_LEVEL): no record is built per request only to be dropped
    assert apps["recs"]["args"]["log_level"] == served.settings.serve_log_level == "WARNING"
    for level in ("WARNING", "DEBUG"):
        logging = app.build({**apps["multi"]["args"], "log_level": level})._bound_deployment.logging_config
        assert (logging["log_level"], logging["enable_access_log"]) == (level, False)
    from aimass.serving import _app  # what configs written before the rename name

    assert _app.build is app.build


@pytest.mark.parametrize("call,exc,message", [
    (lambda s: serving.deploy("nobody", "x", settings=s), NotFoundError, "no registered model named"),
    (lambda s: serving.deploy("recs", "Bad Name", settings=s), InvalidInputError, "invalid endpoint"),
    (lambda s: serving.deploy("recs", "x", max_replicas=999_999_999, settings=s), InvalidInputError,
     "max_replicas <= 1,000"),
    (lambda s: serving.deploy("recs", "x", min_replicas=3, max_replicas=2, settings=s), InvalidInputError,
     "min_replicas"),
    (lambda s: serving.show("ghost", settings=s), NotFoundError, "no deployment named 'ghost'"),
    (lambda s: serving.delete("ghost", settings=s), NotFoundError, "no deployment named 'ghost'"),
    (lambda s: serving.revoke_key("000000000000", settings=s), NotFoundError, "no API key"),
    (lambda s: serving.create_key("x", role="root", settings=s), InvalidInputError, "unknown role"),
])
def test_bad_requests_raise_typed_errors(served, call, exc, message):
    with pytest.raises(exc, match=message):
        call(served.settings)


def test_cli_deploy_list_delete(served):
    s = served.settings
    env = {**os.environ, "AIMASS_HOME": str(s.home), "AIMASS_SERVE_PORT": str(s.serve_port)}

    def cli(*args, check=True):
        r = subprocess.run([AIMASS, *args], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 or not check, r.stderr
        return r

    out = cli("deploy", "recs/1", "--endpoint", "cli", "--max-replicas", "1").stdout
    assert len(out.strip().splitlines()) == 1 and out.startswith("deployed recs/1 (itemknn) at http"), out
    assert "; scheduler: drift reports every" in out  # the drift/retrain scheduler runs in the cluster
    d = json.loads(cli("deployments", "show", "cli", "--json").stdout)  # stdout: the JSON and nothing else
    assert d["url"].endswith("/cli") and d["status"] == "RUNNING"
    r = httpx.post(d["url"] + "/recommend", json={"user_id": 1, "k": 2},
                   headers={"Authorization": f"Bearer {served.keys['consumer']}"}, timeout=30)
    assert r.status_code == 200 and len(r.json()["items"]) == 2
    listed = json.loads(cli("deployments", "list", "--json").stdout)
    assert {x["endpoint"] for x in listed} >= {"recs", "multi", "cli"}
    assert json.loads(cli("deployments", "delete", "cli", "--json").stdout)["endpoint"] == "cli"
    gone = cli("deployments", "show", "cli", check=False)
    assert gone.returncode == 3 and "no deployment named 'cli'" in gone.stderr
    assert "cli" not in [a["name"] for a in yaml.safe_load(Path(d["config"]).read_text())["applications"]]


def test_every_listener_of_the_serving_cluster_is_on_loopback(served):
    served.post("multi", "/recommend", {"user_id": 1})  # every stage has served a request
    temp_dir = json.loads(_cluster.state_file(served.settings).read_text())["temp_dir"]
    # The head's processes name its temp folder; workers, replicas and HAProxy are their descendants.
    roots = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    found = sorted({x for r in roots for x in listeners(r.pid)})
    names = {name for _, name, _, _ in found}
    assert any("ServeReplica" in n for n in names) and any("gcs_server" in n for n in names), names
    if _cluster.proxy_mode(served.settings) == "haproxy":
        assert "haproxy" in names, names  # its stats and Prometheus ports are patched to loopback
    assert non_loopback(found) == []


def test_no_per_request_work_beyond_the_answer_in_serve_and_haproxy(served):
    """Serve writes no access-log line per request, HAProxy sends no per-request log or metrics datagram, and
    replicas do not watch each request for the client's disconnect (aimass.serving.hooks)."""
    # Serve buffers up to 1,000 request-path records before it writes them
    assert {served.get("recs", "/healthz").status_code for _ in range(1001)} == {200}
    head = Path(json.loads(_cluster.state_file(served.settings).read_text())["temp_dir"])
    # Ray opens its folders to every user (0777): the head's, around them, is this user's alone
    assert stat.S_IMODE(head.stat().st_mode) == 0o700 and head.stat().st_uid == os.getuid()
    logs = _procs.ray_dir(head) / "session_latest" / "logs"
    replica_logs = list((logs / "serve").glob("replica_recs_*.log"))
    assert replica_logs, sorted(p.name for p in (logs / "serve").iterdir())
    assert not [line for f in replica_logs for line in f.read_text(errors="replace").splitlines()
                if "GET" in line], "Serve logged requests"
    if _cluster.proxy_mode(served.settings) == "haproxy":
        cfg = next(_procs.haproxy_dir(served.settings.home).rglob("haproxy.cfg")).read_text()
        assert "set-header x-request-disconnect-disabled ?1" in cfg
        assert "format rfc5424" not in cfg  # the per-request metrics log line
        assert "option dontlog-normal" in cfg  # nor a syslog line of each request that succeeds


def test_bentoml_build_pins_the_registered_version(served):
    tag = serving.build_bento("recs@champion", settings=served.settings)
    assert tag == "aimass-recs:v1"
    bento = served.settings.home / "bentos" / "bentos" / "aimass-recs" / "v1"
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    assert json.loads((bento / "src" / "pin.json").read_text()) == {"AIMASS_SERVE_MODEL": "recs/1"}
    assert spec["service"] == "service:ItemKNN" and spec["labels"]["model_version"] == "1"
    assert spec["labels"]["family"] == "itemknn" and spec["labels"]["dataset"] == "demo@v1"
    assert serving.build_bento("recs/1", settings=served.settings) == tag  # immutable: built once


def test_the_infra_sample_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    sample = Path(__file__).resolve().parents[2] / "infra" / "serve" / "serve-config.example.yaml"
    ServeDeploySchema.model_validate(yaml.safe_load(sample.read_text()))


def test_multi_stage_is_one_application_of_three_deployments(served):
    from ray import serve

    _cluster.connect(served.settings)
    app = serve.status().applications["multi"]
    assert set(app.deployments) == {"ingress", "retrieval", "ranking"}
    assert all(str(d.status.value if hasattr(d.status, "value") else d.status) == "HEALTHY"
               for d in app.deployments.values())


def test_a_deploy_whose_replicas_do_not_start_leaves_the_split_as_the_record_says(served, monkeypatch):
    """The split is made before the replicas start (they read it as they load); when they fail, the record
    still names the old model, and so must the split in force."""
    import aimass.serving as api
    from aimass.errors import BackendError
    from aimass.serving import _traffic

    s = served.settings

    def fails(*args, **kwargs):
        raise BackendError("replicas did not start")

    monkeypatch.setattr(api, "_run", fails)
    with pytest.raises(BackendError, match="did not start"):
        serving.deploy("recs/1", "never-started", settings=s)
    assert _traffic.current(s, "never-started") is None
    assert [h.state for h in _traffic.history(s, "never-started")] == ["failed"]


def test_a_deploy_over_a_running_experiment_is_refused(served):
    from aimass.catalog import Experiment, session
    from aimass.errors import ConflictError

    s = served.settings
    with session(s) as db:
        db.add(Experiment(endpoint="on-trial", experiment_id="t1", metric="play_rate",
                          arms=[{"ref": "recs/1", "weight": 100}]))
        db.commit()
    with pytest.raises(ConflictError, match="experiment t1 is running on 'on-trial': stop it first"):
        serving.deploy("recs/1", "on-trial", settings=s)
    from aimass.serving import _traffic

    assert "on-trial" not in [d.endpoint for d in serving.deployments(settings=s)]
    assert _traffic.current(s, "on-trial") is None  # no split made either


def test_an_endpoint_changes_kind_and_a_running_experiment_guards_its_deletion(served):
    """A search index deployed over a recommender endpoint restarts it with the other service (a split change
    would refuse the other kind); an experiment running on an endpoint keeps it from being deleted (its record
    would outlive it), and a stopped one does not."""
    from aimass import experiments
    from aimass.catalog import Experiment, session
    from aimass.errors import ConflictError

    s = served.settings
    serving.deploy("recs/1", "kinds", min_replicas=1, max_replicas=1, settings=s)
    try:
        d = serving.deploy("catalogue/1", "kinds", min_replicas=1, max_replicas=1, settings=s)
        assert d.family == "search"
        r = httpx.post(f"{d.url}/search", json={"query": "rock", "k": 3}, timeout=30,
                       headers={"Authorization": f"Bearer {served.keys['consumer']}"})
        assert r.status_code == 200 and r.json()["model"] == "catalogue", r.text
        with session(s) as db:
            db.add(Experiment(endpoint="kinds", experiment_id="k1", metric="play_rate",
                              arms=[{"ref": "catalogue/1", "weight": 100}]))
            db.commit()
        with pytest.raises(ConflictError, match="experiment k1 is running on 'kinds': stop it first"):
            serving.delete("kinds", settings=s)
        assert "kinds" in [x.endpoint for x in serving.deployments(settings=s)]
        assert experiments.stop("kinds", settings=s).state != "running"
    finally:
        serving.delete("kinds", settings=s)
    # an experiment left running by an endpoint deleted before this rule can still be stopped
    with session(s) as db:
        db.add(Experiment(endpoint="kinds", experiment_id="k2", metric="play_rate",
                          arms=[{"ref": "recs/1", "weight": 100}]))
        db.commit()
    assert experiments.stop("kinds", settings=s).experiment_id == "k2"


def test_a_model_swap_whose_update_fails_gives_the_traffic_back(served, monkeypatch):
    """A redeploy of a running endpoint moves its traffic to the new model, then updates the application (new
    replica settings): when that update fails (a Ctrl-C, Serve refusing it), the split before it returns and the
    record names the old model again, as the failure says."""
    from aimass.serving import _traffic

    s = served.settings
    before = serving.show("recs", settings=s)
    arms = [a["ref"] for a in _traffic.current(s, "recs").arms]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        serving.deploy("closed/1", "recs", max_replicas=before.max_replicas + 1, settings=s)
    assert [a["ref"] for a in _traffic.current(s, "recs").arms] == arms
    after = serving.show("recs", settings=s)
    assert (after.model, after.version, after.max_replicas) == (before.model, before.version, before.max_replicas)


def test_a_replica_never_loads_a_model_of_the_other_kind(served):
    """A redeploy as the other kind activates its split while the old replicas still run: they keep what they
    serve (a recommender replica answering /recommend from a search index gave 400s for the whole update)."""
    from aimass.errors import InvalidInputError
    from aimass.serving import _traffic
    from aimass.serving._arms import Arms, Table

    s = served.settings.model_copy(update={"serve_endpoint": None})
    arms = Arms(s, "kinds-unit", "recs/1", lambda *a, **k: None, follow=False)
    with pytest.raises(InvalidInputError, match="catalogue/1 is not a model this recommender replica can serve"):
        arms._load(Table(None, None, (("catalogue/1", _traffic.BUCKETS),)))
    searching = Arms(s, "kinds-unit", "catalogue/1", lambda *a, **k: None, follow=False)
    with pytest.raises(InvalidInputError, match="recs/1 is not a model this search replica can serve"):
        searching._load(Table(None, None, (("recs/1", _traffic.BUCKETS),)))
    assert list(arms.engines) == ["recs/1"] and list(searching.engines) == ["catalogue/1"]
    for engine in [*arms.engines.values(), *searching.engines.values()]:
        engine.close()


def test_every_registry_name_gets_a_bento_name_of_its_own_that_bentoml_accepts():
    from bentoml._internal.tag import Tag

    from aimass.serving._bento import bento_name

    names = ["recs", "Recs", "RECS", "a" * 64, "a" * 63 + "b", "recs.", "recs_", "recs-", "My.Model_2"]
    bentos = [bento_name(n) for n in names]
    assert bento_name("recs") == "aimass-recs" and len(set(bentos)) == len(names)
    for b in bentos:
        tag = Tag.from_taglike(f"{b}:v1")  # BentoML's own validation of a tag
        assert tag.name == b  # not lowercased into another model's Bento


def test_an_endpoint_name_with_a_trailing_newline_is_refused():
    assert serving.check_endpoint("recs") == "recs"
    with pytest.raises(InvalidInputError, match="invalid endpoint"):
        serving.check_endpoint("recs\n")


@pytest.mark.parametrize("option, value", [("target_ongoing_requests", float("inf")),
                                           ("target_ongoing_requests", float("nan")),
                                           ("target_ongoing_requests", 1e308),  # overflowed in Serve's options
                                           ("upscale_delay_s", float("nan")), ("downscale_delay_s", float("inf"))])
def test_scaling_options_that_are_not_finite_are_refused_before_anything_starts(tmp_path, option, value):
    from aimass.errors import InvalidInputError
    from aimass.settings import Settings

    s = Settings(home=tmp_path / "home")
    with pytest.raises(InvalidInputError, match="must be"):
        serving.deploy("recs/1", "recs", settings=s, **{option: value})
    assert not serving.running(settings=s) and not (s.home / "mlflow.db").exists()


def test_a_deploy_under_another_serve_port_than_the_running_cluster_is_refused(served):
    from aimass.errors import ConflictError

    other = served.settings.model_copy(update={"serve_port": served.settings.serve_port + 1})
    with pytest.raises(ConflictError, match=f"runs on 127.0.0.1:{served.settings.serve_port}, not"):
        serving.deploy("recs/1", "elsewhere", settings=other)
    assert "elsewhere" not in serving.endpoints(settings=served.settings)


def test_applications_are_what_serve_runs_and_asking_starts_no_cluster(served, tmp_path):
    from aimass.settings import Settings

    assert {"recs", "multi", "search"} <= serving.applications(settings=served.settings)
    empty = Settings(home=tmp_path / "home")
    assert serving.applications(settings=empty) == set() and not serving.running(settings=empty)


def test_an_unreadable_deployment_record_is_skipped_not_an_error_for_every_endpoint(tmp_path):
    from datetime import UTC, datetime

    from aimass.settings import Settings

    s = Settings(home=tmp_path / "home")
    d = serving.Deployment(endpoint="recs", url="http://127.0.0.1:1/recs", model="recs", version=1,
                           family="itemknn", requested="recs/1", dataset="demo@v1", proxy="default", min_replicas=1,
                           max_replicas=1, target_ongoing_requests=8.0, config="", created_at=datetime.now(UTC))
    folder = s.home / "serve" / "deployments"
    folder.mkdir(parents=True)
    (folder / "recs.json").write_text(json.dumps({"deployment": d.model_dump(mode="json"), "args": {}}))
    (folder / "other.json").write_text("")  # emptied by a disk that filled under an older aimass
    assert [x.endpoint for x in serving.deployments(settings=s)] == ["recs"]
    assert serving.endpoints(settings=s) == ["recs"]


def test_one_change_of_an_endpoint_at_a_time(tmp_path, monkeypatch):
    """A deploy, traffic change or delete of an endpoint waits for another one of it, then is refused, changing
    nothing; the one in progress may nest its own (a deploy that switches the split)."""
    import threading

    from aimass.errors import ConflictError
    from aimass.settings import Settings

    monkeypatch.setattr(serving, "ENDPOINT_WAIT_S", 0.3)
    s = Settings(home=tmp_path / "home")
    inside, leave = threading.Event(), threading.Event()
    nested = []

    def deploying():
        with serving._one_change(s, "recs"):
            with serving._one_change(s, "recs"):  # re-entrant in its thread
                nested.append(True)
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=deploying)
    t.start()
    try:
        assert inside.wait(10) and nested == [True]
        for call in (lambda: serving.delete("recs", settings=s), lambda: serving.rollback("recs", settings=s),
                     lambda: serving.set_traffic("recs", ["m/1=100"], settings=s)):
            with pytest.raises(ConflictError, match="in progress"):
                call()
        with serving._one_change(s, "other"):  # another endpoint is not held
            pass
    finally:
        leave.set()
        t.join()
    with pytest.raises(InvalidInputError, match="invalid endpoint"):  # the lock file is never named outside
        serving.delete("../../x", settings=s)
    assert not (tmp_path / "x.lock").exists()


def test_a_listing_joins_the_cluster_without_starting_serve(tmp_path, monkeypatch):
    """`deployments list` after Serve was shut down on a cluster of one's own: reading the status must not start
    Serve's controller and proxy again (it did, through connect's serve.start)."""
    import ray
    from ray import serve

    from aimass.serving import _cluster
    from aimass.settings import Settings

    s = Settings(home=tmp_path / "home")
    started = []
    monkeypatch.setattr(_cluster, "running", lambda settings: True)
    monkeypatch.setattr(_cluster, "ensure", lambda settings: {"address": "127.0.0.1:1"})
    monkeypatch.setattr(_cluster._ray, "check_answers", lambda settings: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    monkeypatch.setattr(serve, "start", lambda **kw: started.append(kw))
    monkeypatch.setattr(serve, "status", lambda: serve.schema.ServeStatus())
    assert serving._live_status(s) == {} and started == []
    _cluster.connect(s)  # a deploy's join does start it
    assert started == [{"http_options": {"host": s.host, "port": s.serve_port}}]

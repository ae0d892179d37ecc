"""The operator console over the real data of a demo job (the session's `aimass quickstart`): every page runs
under Streamlit's AppTest without an exception and shows figures from the catalog and MLflow; `aimass console`
serves it on 127.0.0.1 and stops."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import psutil
import pytest
from streamlit.testing.v1 import AppTest

import aimass
from aimass import monitoring, registry, serving
from aimass.settings import Settings
from tests.cli.test_datasets_cli import run
from tests.conftest import free_port

pytestmark = pytest.mark.integration
APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")


def open_console(home: Path, monkeypatch) -> AppTest:
    """An AppTest of the console reading `home` (as `-- --home H` would), its first page run."""
    import streamlit as st

    monkeypatch.setattr("sys.argv", ["app.py", "--home", str(home)])
    st.cache_resource.clear()  # the settings of another test's home
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def console(quickstart_home, monkeypatch):
    return open_console(quickstart_home, monkeypatch)


def _texts(at) -> str:
    """Everything the page shows as text: markdown, metrics, messages and the tables' cells."""
    parts = [e.value for e in (*at.title, *at.subheader, *at.markdown, *at.error, *at.success, *at.info,
                                *at.warning, *at.caption)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [df.value.to_csv() for df in at.dataframe]
    return "\n".join(str(p) for p in parts)


def page(at, path: str):
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return _texts(at)


def test_overview_shows_the_demo_endpoint_and_its_hour(console, quickstart_home):
    s = Settings(home=quickstart_home)
    shown = _texts(console)
    sig = monitoring.golden_signals("demo", settings=s)
    assert sig.requests > 40  # the quickstart's traffic burst, all replicas' answers
    assert "demo" in shown and f"{sig.requests:,} requests in the hour" in shown
    assert f"demo-sasrec/{serving.show('demo', settings=s).version}" in shown
    stats = aimass.events.stats("demo", settings=s)
    assert str(stats["events"]) in shown  # feedback events
    charted = [c.proto.spec + str(c.proto.datasets) for c in console.get("arrow_vega_lite_chart")
               + console.get("vega_lite_chart")]
    # per minute: requests, latency and (as the README says) the error rate
    assert [any(col in c for c in charted) for col in ("requests_per_s", "p99_ms", "error_rate")] == [True] * 3


def test_every_page_renders_catalog_figures(console, quickstart_home):
    s = Settings(home=quickstart_home)
    datasets = page(console, "pages/datasets.py")
    assert "demo@v1" in datasets and "demo@v2" in datasets
    assert "demo@v1 + " in datasets  # v2's lineage: folded feedback events
    models = page(console, "pages/models.py")
    for v in registry.versions("demo-sasrec", settings=s):
        assert f"demo-sasrec/{v.version}" in models
    assert "int8" in models and "validation NDCG@10" in models
    # every version's size and batch-1 p99: a child's from its run, its parent's as the compression measured it
    table = console.dataframe[0].value
    child = table[table["method"] == "int8"].iloc[0]
    pair = table[table["model"].isin([child["model"], child["parent"]])]
    assert len(pair) == 2 and (pair[["size MB", "p99 ms (batch 1)"]] != "-").all().all(), pair
    gate = registry.get("demo-sasrec/1", settings=s).tags["aimass.gate"]  # the quickstart's promotion
    assert "for champion: " in gate and gate.split(" ", 1)[1] in models
    (attempt,) = aimass.retraining.history("demo", settings=s)  # the quickstart's retrain and its gate
    assert attempt.challenger in models and "; ".join(
        f"{'pass' if c.passed else 'FAIL'} {c.check}" for c in attempt.gate) in models
    traffic = page(console, "pages/deployments.py")
    split = serving.traffic("demo", settings=s).split
    assert split.experiment_id in traffic and all(a["ref"] in traffic for a in split.arms)
    assert "Replicas and scaling decisions" in traffic
    (shadowed,) = monitoring.shadow_comparison("demo", settings=s).to_dict("records")  # the demo's shadow
    shown = next(df.value for df in console.dataframe if "shadow" in df.value.columns)  # the shadow comparison
    assert shown["shadow"].tolist() == [split.shadow] and shown["requests copied"].tolist() == [shadowed["copies"]]
    drift = page(console, "pages/monitoring.py")
    reports = monitoring.reports("demo", settings=s)
    assert reports and len(console.dataframe[0].value) == len(reports)
    assert str(reports[0].n_current) in drift
    console.toggle(key="online-metrics").set_value(True).run()  # on demand: a day of answers joined to feedback
    assert not console.exception and "demo-sasrec/1" in _texts(console)  # online metrics per version
    online = next(df.value for df in console.dataframe if "click-through" in df.value.columns)
    assert {"click-through 95%", "hit rate 95%", "negative 95%"} <= set(online.columns)  # every rate's interval
    assert any("iframe" in str(type(e)).lower() or getattr(e, "type", "") == "iframe"
               for e in console.main)  # the newest Evidently report, embedded
    ab = page(console, "pages/experiments.py")
    assert f"demo: {split.experiment_id}" in ab and "always-valid p" in ab
    explore = page(console, "pages/explore.py")  # the champion and its int8 child, side by side, for user 1
    assert "demo-sasrec/1" in explore and len(console.dataframe) == 2
    assert all(len(df.value) == 10 for df in console.dataframe)
    search = page(console, "pages/search.py")  # the demo's searches in three modes, and its clicks on results
    activity = monitoring.search_activity("search", settings=s)
    assert activity.queries >= 10 and f"queries (7 days) {activity.queries}" in search  # + the printed curl's
    by_mode = next(df.value for df in console.dataframe if "mode" in df.value.columns)
    assert by_mode.set_index("mode")["clicked"].to_dict() == activity.by_mode.set_index("mode")["clicked"].to_dict()
    assert by_mode["clicked"].sum() == 6
    charted = [c.proto.spec + str(c.proto.datasets) for c in console.get("arrow_vega_lite_chart")
               + console.get("vega_lite_chart")]
    # queries per hour only: its no-result queries stacked on top would count them twice
    assert any("queries" in c for c in charted) and not any("no_results" in c for c in charted)
    per_index = next(df.value for df in console.dataframe if "index" in df.value.columns)
    assert per_index["index"].tolist() == ["demo-search/1"] and per_index["clicked"].tolist() == [6]


def test_a_failing_page_shows_its_error_with_passwords_masked(tmp_path, monkeypatch):
    """A store's client names the URL it called (password included); Streamlit would show the message whole."""
    def unreachable(**_):
        raise ConnectionError("API request to https://ops:s3cret-pw@mlflow.example/api/2.0/runs failed")

    monkeypatch.setattr(aimass.runs, "list_runs", unreachable)
    monkeypatch.setattr("sys.argv", ["app.py", "--home", str(tmp_path / "home")])
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    shown = str([e.proto for e in at.exception])
    assert "ConnectionError" in shown and "mlflow.example" in shown and "s3cret-pw" not in shown


def test_a_registered_model_without_versions_or_of_another_team_is_left_out_of_the_pages(tmp_path, monkeypatch):
    """A shared MLflow registry holds names aimass cannot read as its own (a name of its pattern whose versions
    were deleted, another team's "Fraud Model"): the pages that list models still render, without them."""
    from mlflow import MlflowClient

    s = Settings(home=tmp_path / "home")
    s.home.mkdir()
    client = MlflowClient(tracking_uri=s.tracking_uri, registry_uri=s.tracking_uri)
    client.create_registered_model("orphan")
    client.create_registered_model("Fraud Model")
    client.create_registered_model("team's model")  # no MLflow filter string takes its name
    at = open_console(s.home, monkeypatch)
    for path in ("pages/datasets.py", "pages/models.py", "pages/explore.py", "pages/admin.py"):
        page(at, path)


def test_aimass_console_serves_on_loopback_and_stops(quickstart_home):
    port = free_port()
    run(quickstart_home, "console", "--stop", ok=False)  # the quickstart's own, when its test did not run
    started = json.loads(run(quickstart_home, "console", "--detach", "--port", str(port), "--json").stdout)
    try:
        assert started["url"] == f"http://127.0.0.1:{port}" and not started["already_running"]
        assert httpx.get(started["url"] + "/_stcore/health", timeout=10).text == "ok"
        listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
        again = json.loads(run(quickstart_home, "console", "--detach", "--json").stdout)
        assert again["already_running"] and again["pid"] == started["pid"]
        elsewhere = run(quickstart_home, "console", "--detach", "--port", str(port + 1), ok=False)  # not given
        assert elsewhere.returncode == 4 and f"already runs at {started['url']}, not on port {port + 1}" in \
            elsewhere.stderr
        both = run(quickstart_home, "console", "--stop", "--port", str(port), ok=False)  # which was meant?
        assert both.returncode == 2 and "--stop cannot be given with --detach or --port" in both.stderr
        assert psutil.pid_exists(started["pid"])
        busy = run(quickstart_home.parent / "other", "console", "--detach", "--port", str(port), ok=False)
        assert busy.returncode == 4 and f"console port {port}" in busy.stderr.strip().splitlines()[-1]
        with httpx.Client(timeout=10) as kept:  # a connection the console closes when it stops (a browser tab)
            assert kept.get(started["url"] + "/_stcore/health").text == "ok"
            stopped = json.loads(run(quickstart_home, "console", "--stop", "--json").stdout)
        # its port held in TIME_WAIT by the connection it closed: a console started again at once still gets it
        again = json.loads(run(quickstart_home, "console", "--detach", "--port", str(port), "--json").stdout)
        assert again["url"] == started["url"] and not again["already_running"]
    finally:
        stopped = json.loads(run(quickstart_home, "console", "--stop", "--json").stdout)
    assert stopped == {"stopped": True} and not psutil.pid_exists(started["pid"])


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_foreground_console_killed_or_hung_up_stops_streamlit(tmp_path, sig):
    """`aimass console` in the foreground stops Streamlit on Ctrl-C; a kill or a closed terminal must too (Python
    ends without its finally blocks on those, and Streamlit runs in a session of its own)."""
    import os
    import signal
    import subprocess
    import time

    from tests.cli.test_datasets_cli import AIMASS

    home, port = tmp_path / "home", free_port()
    p = subprocess.Popen([AIMASS, "console", "--port", str(port)], env={**os.environ, "AIMASS_HOME": str(home)},
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in p.stdout:
            if line.startswith("console "):
                break
        record = home / "console.json"
        deadline = time.monotonic() + 30
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = json.loads(record.read_text())["pid"]
        p.send_signal(getattr(signal, sig))
        p.wait(timeout=60)
        assert not psutil.pid_exists(pid) and not record.exists()
    finally:
        if p.poll() is None:
            p.kill()
        run(home, "console", "--stop", ok=False)


def test_a_console_started_under_nohup_outlives_a_hang_up(tmp_path):
    """`nohup aimass console` asked for hang-ups to be ignored: the CLI's own handler must not undo that."""
    import os
    import signal
    import subprocess
    import time

    from tests.cli.test_datasets_cli import AIMASS

    home, port = tmp_path / "home", free_port()
    p = subprocess.Popen([AIMASS, "console", "--port", str(port)], env={**os.environ, "AIMASS_HOME": str(home)},
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        for line in p.stdout:
            if line.startswith("console "):
                break
        p.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert p.poll() is None and httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=10).text == "ok"
    finally:
        p.terminate()
        p.wait(timeout=60)
        run(home, "console", "--stop", ok=False)


def test_without_an_admin_key_the_console_changes_nothing_with_one_each_action_is_recorded(console, quickstart_home):
    from aimass import admin

    s = Settings(home=quickstart_home)
    page(console, "pages/admin.py")
    assert not console.button and not console.checkbox  # no key: no action is even drawn
    consumer, victim = serving.create_key("console-test-consumer", settings=s)
    console.session_state["admin_key"] = consumer  # what the sidebar's field (drawn by app.py) keeps
    console.run()
    assert not console.button and "an admin API key is required" in _texts(console)
    assert admin.history(settings=s) == []
    key, ops = serving.create_key("console-test-ops", role="admin", settings=s)
    _, other = serving.create_key("console-test-other", settings=s)
    console.session_state["admin_key"] = key
    console.run()
    console.selectbox[-1].select(victim.key_id).run()  # the key to revoke
    assert console.button(key="do-revoke_key").disabled  # not confirmed yet
    console.checkbox(key=f"confirm-revoke_key-{victim.key_id}-").check().run()
    console.selectbox[-1].select(other.key_id).run()  # another key: the box ticked for the first confirms nothing
    assert console.button(key="do-revoke_key").disabled
    console.selectbox[-1].select(victim.key_id).run()
    console.checkbox(key=f"confirm-revoke_key-{victim.key_id}-").check().run()
    console.button(key="do-revoke_key").click().run()
    assert not console.exception, console.exception
    # the confirmation was for that click: the box is unticked and the button waits for a new one
    assert not console.checkbox(key=f"confirm-revoke_key-{victim.key_id}-").value
    assert console.button(key="do-revoke_key").disabled
    assert victim.key_id not in [k.key_id for k in serving.list_keys(settings=s)]  # revoked
    # an action that fails (the endpoint is stopped, its canary runs) is recorded with its reason too
    console.checkbox(key="confirm-rollback-demo-").check().run()
    console.button(key="do-rollback").click().run()
    assert "roll demo back to its previous split failed" in _texts(console)
    failed, done = admin.history(settings=s)
    assert (done.action, done.target, done.ok) == ("revoke_key", victim.key_id, True)
    assert done.actor == f"console:console-test-ops ({ops.key_id})" and done.at is not None
    assert (failed.action, failed.ok) == ("rollback", False) and failed.outcome.startswith("failed: ")
    secret = key.removeprefix(f"aimass_{ops.key_id}_")  # url-safe base64: it may hold "_" itself
    assert secret not in str([a.model_dump() for a in admin.history(settings=s)])  # no secret kept


def test_a_console_started_from_the_sdk_gets_the_callers_settings_whole(tmp_path):
    """`aimass.dashboard.start(settings)` passed on the home alone: the console read the environment's stores,
    not the ones it was given. Credentials go through a file of this user's, never the environment; and a
    record cut short (a full disk) is a stale one, not an error blocking start and stop."""
    from aimass import dashboard

    s = Settings(home=tmp_path / "home", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'other.db'}",
                 catalog_url="postgresql://ops:pw9@127.0.0.1:1/aimass")
    s.home.mkdir(parents=True)
    (s.home / "console.json").write_text('{"pid": ')
    info = dashboard.start(s, port=free_port())
    try:
        env = psutil.Process(info["pid"]).environ()
        assert env["AIMASS_MLFLOW_TRACKING_URI"] == s.mlflow_tracking_uri and "pw9" not in json.dumps(env)
        assert json.loads(Path(env["AIMASS_SECRETS_FILE"]).read_text())["catalog_url"] == s.catalog_url
        assert (s.home / "console.json").stat().st_mode & 0o777 == 0o600
    finally:
        assert dashboard.stop(s)
    assert not psutil.pid_exists(info["pid"])


def test_explore_answers_from_the_version_registered_now_not_a_deleted_one_of_the_same_number(tmp_path, monkeypatch):
    """A model deleted in MLflow and registered again starts at version 1 again: Explore's loaded versions are
    keyed by what the version is, not only its number, or the page answered from the deleted model."""
    import pandas as pd
    import streamlit as st
    from mlflow import MlflowClient

    s = Settings(home=tmp_path / "home")
    cfg = aimass.datasets.DemoConfig(users=60, tracks=120, seed=2)
    inter, items = aimass.datasets.generate_demo(tmp_path / "demo", cfg)
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    runs = {f: aimass.train(f, "demo@v1", workers=0, progress=False, settings=s).run_id
            for f in ("popularity", "itemknn")}
    registry.register(runs["popularity"], "x", settings=s)
    at = open_console(s.home, monkeypatch)

    def shown() -> list[int]:
        page(at, "pages/explore.py")  # user 1, k 10: the page's defaults
        return at.dataframe[0].value["item"].tolist()

    first = shown()
    MlflowClient(tracking_uri=s.tracking_uri, registry_uri=s.tracking_uri).delete_registered_model("x")
    registry.register(runs["itemknn"], "x", settings=s)
    st.cache_data.clear()  # the listing's own cache (a few seconds) has run out
    data = aimass.datasets.load("demo@v1", settings=s).interactions
    seen = data.loc[data["user_id"] == 1, "item_id"].astype(int).tolist()
    now = registry.load("x/1", settings=s).recommend(pd.DataFrame({"history": [seen], "k": [10]}))["items"][0]
    assert shown() == list(now) != first


def test_an_endpoint_deleted_while_the_listing_is_cached_is_no_error_on_the_deployments_page(tmp_path, monkeypatch):
    """The pages reuse the endpoint listing for a few seconds: one deleted meanwhile is said to be, not raised."""
    from datetime import UTC, datetime

    s = Settings(home=tmp_path / "home")
    d = serving.Deployment(endpoint="recs", url="http://127.0.0.1:1/recs", model="recs", version=1,
                           family="itemknn", requested="recs/1", dataset="demo@v1", proxy="default", min_replicas=1,
                           max_replicas=1, target_ongoing_requests=8.0, config="", created_at=datetime.now(UTC))
    record = s.home / "serve" / "deployments" / "recs.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"deployment": d.model_dump(mode="json"), "args": {}}))  # as a deploy writes it
    at = open_console(s.home, monkeypatch)
    page(at, "pages/deployments.py")
    record.unlink()  # what a delete does to it, in another process
    assert "'recs' was deleted a moment ago" in page(at, "pages/deployments.py")


DEPLOY_HINT = "aimass deploy MODEL@champion --endpoint NAME"


def test_a_home_that_was_not_there_is_named_and_never_called_healthy(tmp_path, monkeypatch):
    """A mistyped --home gets an empty home made on the spot: the console said "Nothing is failing." and named
    no home, so it looked like a healthy one. The pages that need an endpoint say how to deploy one."""
    home = tmp_path / "typo"
    at = open_console(home, monkeypatch)
    assert any(str(home) in w.value and "is --home / AIMASS_HOME right?" in w.value for w in at.warning)
    assert f"home: {home}" in [c.value for c in at.sidebar.caption]
    assert "Nothing is failing." not in _texts(at)
    for path in ("pages/deployments.py", "pages/monitoring.py", "pages/experiments.py"):
        shown = page(at, path)
        assert DEPLOY_HINT in shown and "aimass experiments start" not in shown


@pytest.fixture(scope="module")
def small_home(tmp_path_factory):
    """One registered version of a cheap family, a later training run that failed (its validation figures all
    NaN, its reason kept as training keeps it) and feedback sent to an endpoint that was never deployed."""
    from mlflow import MlflowClient

    from aimass.tracking import EXPERIMENT

    tmp = tmp_path_factory.mktemp("small")
    s = Settings(home=tmp / "home")
    inter, items = aimass.datasets.generate_demo(tmp / "demo", aimass.datasets.DemoConfig(users=40, tracks=80, seed=3))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    registry.register(aimass.train("popularity", "demo@v1", workers=0, progress=False, settings=s).run_id, "recs",
                      settings=s)
    client = MlflowClient(tracking_uri=s.tracking_uri)
    run = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id, run_name="sasrec-broken",
                            tags={"aimass.family": "sasrec", "aimass.dataset_ref": "demo@v1",
                                  "aimass.error": "BackendError: sasrec diverged (a lower lr may help)"})
    for epoch in (1, 2):
        client.log_metric(run.info.run_id, "loss", 1.0 / epoch, step=epoch)
        client.log_metric(run.info.run_id, "val_ndcg_at_10", float("nan"), step=epoch)
    client.set_terminated(run.info.run_id, "FAILED")
    aimass.events.EventLog(s).write("ghost", [aimass.events.FeedbackEventBase(
        event_id=f"e{i}", user_id=1, item_id=2, type="click", timestamp=1733000000 + i) for i in range(3)])
    # a bare `bentoml serve` of the model My_Model.v2 logs its feedback under my_model.v2, no endpoint's name
    aimass.events.EventLog(s).write("my_model.v2", [aimass.events.FeedbackEventBase(
        event_id="b0", user_id=1, item_id=2, type="click", timestamp=1733000000)])
    return s


def test_a_failed_run_and_stray_feedback_are_shown_with_their_reasons(small_home, monkeypatch):
    """A FAILED run showed no status, no reason and an empty chart of NaN; events for an endpoint nobody
    deployed showed nowhere; missing figures read "None"; empty headings said nothing."""
    at = open_console(small_home.home, monkeypatch)
    assert not at.warning  # a home that was there already
    overview = _texts(at)
    assert "status FAILED" in overview and "sasrec diverged (a lower lr may help)" in overview
    (stray,) = [df.value for df in at.dataframe if "feedback events" in df.value.columns and "model" not in
                df.value.columns]
    assert stray.to_dict("records") == [{"endpoint": "ghost", "feedback events": 3},
                                        {"endpoint": "my_model.v2", "feedback events": 1}]
    models = page(at, "pages/models.py")
    assert "sasrec-broken failed: BackendError: sasrec diverged" in models  # the run chosen first: the newest
    assert "no finite value in its 2 epoch(s)" in models
    assert len(at.get("arrow_vega_lite_chart") + at.get("vega_lite_chart")) == 1  # the loss alone
    versions = at.dataframe[0].value
    assert versions[["size MB", "p99 ms (batch 1)"]].values.tolist() == [["-", "-"]]  # measured by compression only
    assert "no promotion attempted yet" in models


def test_explore_says_when_a_user_is_not_in_the_dataset(small_home, monkeypatch):
    """Any id gets an answer: one the dataset lacks (a typo) gets a cold-start one, which the page must say."""
    at = open_console(small_home.home, monkeypatch)
    page(at, "pages/explore.py")
    assert not at.warning  # user 1 has a history
    at.number_input[0].set_value(987654).run()
    assert [w.value for w in at.warning] == ["user 987654 is not in demo@v1: this is a cold-start answer "
                                             "(no history to start from)"]


def test_admin_explains_its_empty_sections_and_never_offers_its_own_key(small_home, monkeypatch):
    """With nothing deployed and nothing done, the sections said nothing; the key acted with could be revoked
    from under the operator; a revoked key read as one without the admin role."""
    key, ops = serving.create_key("ops", role="admin", settings=small_home)
    _, reader = serving.create_key("reader", settings=small_home)
    at = open_console(small_home.home, monkeypatch)
    at.session_state["admin_key"] = key
    shown = page(at, "pages/admin.py")
    assert "nothing deployed: traffic actions need an endpoint" in shown and "no action recorded yet" in shown
    assert not [df for df in at.dataframe if df.value.empty]
    assert at.selectbox[-1].options == [f"reader (consumer, {reader.key_id})"]  # the other key alone
    serving.revoke_key(ops.key_id, settings=small_home)
    at.run()
    assert f"this key ({ops.key_id}) was revoked" in [e.value for e in at.sidebar.error][0]

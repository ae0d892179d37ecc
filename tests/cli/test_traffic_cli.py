"""`aimass traffic`, `aimass rollback` and `aimass experiments` without a serving cluster: bad input refused at
the boundary with the error's exit code and one `error:` line (in process, and two cases through the installed
entry point), and the read-only views (`traffic show`, `experiments show`) and `experiments stop` over state
written straight into a fresh home. Changing a split on a real Ray Serve is in tests/serving/test_traffic.py."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

AIMASS = str(Path(sys.executable).with_name("aimass"))
ARMS = ("recs/1", "recs/2")

# (arguments, exit code, what the error line says); "shop" is not deployed in these homes
REFUSED = [
    (("traffic", "set", "nowhere", "a/1=100"), 3, "no deployment named 'nowhere'"),
    (("traffic", "set", "nowhere", "a/1=90", "b/1=10", "--json"), 3, "no deployment named 'nowhere'"),
    (("traffic", "set", "shop", "bad-arm"), 2, "REF=WEIGHT"),
    (("traffic", "set", "shop", "a/1=90", "b/1=1O"), 2, "invalid arm 'b/1=1O'"),
    (("traffic", "set", "shop", "a/1=500"), 2, "WEIGHT a whole percent 0-100"),
    (("traffic", "set", "shop", "a/1=100", "--delay", "a/1=slow"), 2, "REF=MILLISECONDS"),
    (("traffic", "set", "Not OK", "a/1=100"), 2, "invalid endpoint 'Not OK'"),
    (("traffic", "show", "nowhere"), 3, "no deployment named 'nowhere'"),
    (("rollback", "nowhere"), 3, "no deployment named 'nowhere'"),
    (("rollback", "nowhere", "--json"), 3, "no deployment named 'nowhere'"),
    (("experiments", "show", "nowhere"), 3, "no deployment named 'nowhere'"),
    (("experiments", "stop", "nowhere", "--promote", "a/1"), 3, "no deployment named 'nowhere'"),
    (("experiments", "start", "nowhere", "--arms", "a/1=50,b/1=50"), 3, "no deployment named 'nowhere'"),
    (("experiments", "start", "shop", "--arms", "a/1=50", "--arms", "b/1"), 2, "invalid arm 'b/1'"),
    (("experiments", "start", "shop", "--arms", "a/1=50,b/1=50", "--max-error-rate", "5"), 2,
     "--max-error-rate must be a share between 0 and 1"),
    (("experiments", "start", "shop", "--arms", "a/1=50,b/1=50", "--max-p99-ratio", "0"), 2,
     "--max-p99-ratio must be positive"),
]


def test_bad_input_is_refused_with_the_errors_code_and_message(tmp_path):
    """In process (a fresh interpreter costs a second or more each): the SDK's typed error reaches the entry
    point, which turns it into the exit code and the `error:` line (checked in the next test)."""
    from typer.testing import CliRunner

    from aimass.cli import app
    from aimass.errors import AimassError

    for args, code, message in REFUSED:
        r = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), *args])
        assert isinstance(r.exception, AimassError), (args, r.output, r.exception)
        assert r.exception.exit_code == code and message in str(r.exception), (args, r.exception)
        assert r.stdout == "", (args, r.stdout)  # nothing printed before the refusal, even with --json


def test_usage_errors_before_anything_runs(tmp_path):
    from typer.testing import CliRunner

    from aimass.cli import app

    for args in (("traffic", "set", "shop"), ("experiments", "start", "shop")):  # no arms
        r = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), *args])
        assert r.exit_code == 2 and "Missing" in r.output, (args, r.output)


def test_the_entry_point_prints_one_error_line_and_exits_with_its_code(tmp_path):
    cases = [(("traffic", "set", "nowhere", "a/1=90", "b/1=10", "--json"), 3, "no deployment named 'nowhere'"),
             (("traffic", "set", "shop", "bad-arm"), 2, "REF=WEIGHT")]
    procs = [(args, code, message, subprocess.Popen([AIMASS, "--home", str(tmp_path / "home"), *args],
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
             for args, code, message in cases]
    for args, code, message, p in procs:
        out, err = p.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert p.returncode == code and lines and lines[-1].startswith("error: ") and message in lines[-1], (
            args, p.returncode, err)
        assert out == "", (args, out)  # stdout stays clean, --json or not


@pytest.fixture
def shop(settings, monkeypatch):
    """A home where 'shop' looks deployed (its record, no cluster) with three splits (the first from the deploy,
    one that failed, the A/B one in force), a running experiment on the last and some answers and events."""
    from aimass.catalog import Experiment, FeedbackEventBase, session
    from aimass.cli._common import state
    from aimass.events import EventLog, ServedLog
    from aimass.serving import _traffic

    record = settings.home / "serve" / "deployments" / "shop.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"args": {"family": "itemknn"}, "deployment": {}}))
    _traffic.activate_initial(settings, "shop", ARMS[0])
    arms = [_traffic.Arm(ref=ARMS[0], weight=50), _traffic.Arm(ref=ARMS[1], weight=50)]
    bad = _traffic.propose(settings, "shop", [_traffic.Arm(ref="broken/1", weight=100)], None, actor="alice")
    _traffic.decide(settings, bad.id, "failed", "Traceback (most recent call last):\n  ...\nOSError: not a model\n")
    split = _traffic.propose(settings, "shop", arms, "recs/3", experiment_id="shop-x1", reason="experiment shop-x1",
                             faults={ARMS[1]: {"delay_ms": 250}}, actor="alice")
    _traffic.report(settings, "shop", split.id, "replica-a", "prepared")
    _traffic.decide(settings, split.id, "active")
    _traffic.report(settings, "shop", split.id, "replica-a", "active")
    with session(settings) as db:
        db.add(Experiment(endpoint="shop", experiment_id="shop-x1", arms=[a.model_dump() for a in arms],
                          metric="play_rate", guardrails={"max_p99_ratio": 1.5, "max_error_rate": 0.01,
                                                          "min_answers": 50}))
        db.commit()
    served, n = ServedLog(settings), 0
    for arm, ms, users in ((ARMS[0], 12.0, 0), (ARMS[1], 30.0, 100)):  # each user sticks to one arm
        name, version = arm.split("/")
        for i in range(60):
            served.record("shop", f"r{n}", "recommend", name, int(version), users + i, [1, 2], [10, 20],
                          [0.9, 0.5], arm=arm, experiment_id="shop-x1", latency_ms=ms + i % 5)
            n += 1
    served.record("shop", "r-err", "recommend", "recs", 2, 101, [], [], [], "error", arm=ARMS[1],
                  experiment_id="shop-x1", latency_ms=5.0)
    served.flush()
    now = datetime.now(UTC)
    # each play by the user its answer went to (recs/2's users are 100-159): another user's play converts nothing
    EventLog(settings).write("shop", [FeedbackEventBase(event_id=f"e{i}", user_id=i if i < 60 else i + 40,
                                                        item_id=10, type="play", timestamp=now, request_id=f"r{i}")
                                      for i in [*range(15), *range(60, 90)]])
    monkeypatch.setattr(state, "settings", settings, raising=False)
    return settings


def _invoke(app, *args: str):
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, list(args))
    assert out.exit_code == 0, (args, out.output, out.exception)
    return out.stdout


def test_traffic_show_tables_and_json(shop):
    from aimass.cli.traffic import app

    human = _invoke(app, "show", "shop")
    assert "shop: split #3 in force since" in human and "(experiment shop-x1, by alice)" in human
    assert "ARM" in human and "WEIGHT" in human and "recs/1  50%" in human and "+250 ms" in human
    assert "shadow: recs/3" in human and "experiment: shop-x1" in human
    assert "replica-a" in human and "active" in human
    history = human[human.index("history"):]
    assert history.index("#3") < history.index("#2") < history.index("#1")  # newest first
    assert "broken/1=100" in history and "OSError: not a model" in history and "Traceback" not in history
    data = json.loads(_invoke(app, "show", "shop", "--history", "2", "--json"))
    assert data["split"]["arms"] == [{"ref": "recs/1", "weight": 50}, {"ref": "recs/2", "weight": 50}]
    assert data["split"]["shadow"] == "recs/3" and data["pending"] is None
    assert [h["state"] for h in data["history"]] == ["active", "failed"]


def test_experiments_show_and_stop(shop):
    from aimass.cli.experiments import app

    human = _invoke(app, "show", "shop")
    assert human.startswith("experiment shop-x1 on shop: running since")
    assert "recs/1 (control)" in human and "0.250 [" in human and "0.500 [" in human
    assert "1 (1.6%)" in human  # the failed request counts against recs/2
    assert "recs/2 vs recs/1" in human and "+0.2500 [" in human and "+100.0%" in human
    assert "collecting" in human and "60/" in human  # under min_samples (100): no call yet
    # one failure is not an error rate (3 at least, 1 point above the control's); p99 34 ms vs 16 ms is too slow
    assert "guardrails broken: recs/2: p99 latency 34.0 ms > 1.5 x the control's 16.0 ms" in human
    assert "error rate" not in human[human.index("guardrails broken"):] and "not checked yet" not in human
    data = json.loads(_invoke(app, "show", "shop", "--json"))
    assert data["experiment"]["experiment_id"] == "shop-x1"
    assert [(a["arm"], a["answers"], a["successes"], a["errors"]) for a in data["arms"]] == [
        ("recs/1", 60, 15, 0), ("recs/2", 60, 30, 1)]
    assert data["comparisons"][0]["state"] == "collecting" and data["comparisons"][0]["winner"] is None
    from aimass.cli.traffic import _stale_experiment

    assert _stale_experiment("shop", SimpleNamespace(experiment_id="shop-x1")) == ""
    assert "experiment shop-x1 is still running but no longer gets traffic" in _stale_experiment(
        "shop", SimpleNamespace(experiment_id="shop-other"))  # what `traffic set`/`rollback` add to their line
    line = _invoke(app, "stop", "shop")  # no promotion: no cluster needed
    assert line.startswith("stopped experiment shop-x1 on shop; the split in force stays as it is"), line
    # a rollback restores the previous split, which after a ramp is the experiment's own, not the one before it
    assert "go back to the previous split (after a ramp, the experiment's own earlier one" in line, line
    assert "aimass traffic show shop lists them) with aimass rollback shop" in line, line
    stopped = json.loads(_invoke(app, "show", "shop", "--json"))["experiment"]
    assert stopped["state"] == "stopped" and stopped["decision"] == "stopped"
    assert _stale_experiment("shop", SimpleNamespace(experiment_id="shop-other")) == ""
    again = _invoke(app, "show", "shop", "--id", "shop-x1")
    assert "stopped" in again.splitlines()[0] and "ran from" in again.splitlines()[0]


def test_the_guardrail_lines_say_what_is_checked_against_the_control():
    """A treatment with 60 requests against a control with 10 was never judged (both need 50), and the error
    guardrail is the control's rate plus the margin, not an absolute rate."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from aimass.cli.experiments import view_lines
    from aimass.experiments import ArmView

    def arm(name, answers, errors):
        return ArmView(arm=name, weight=50, users=answers, answers=answers, successes=0, rate=0.0,
                       interval=(0.0, 0.1), errors=errors, error_rate=errors / (answers + errors),
                       latency_p50_ms=1.0, latency_p99_ms=2.0)

    e = SimpleNamespace(experiment_id="x1", endpoint="recs", state="running", started_at=datetime.now(UTC),
                        stopped_at=None, decision=None, metric="positive_rate", alpha=0.05, mde=0.02,
                        min_samples=100, auto=False, guardrails=None)
    lines = view_lines(SimpleNamespace(experiment=e, arms=[arm("recs/1", 10, 0), arm("recs/2", 60, 0)],
                                       comparisons=[], guardrails_broken=[], higher_is_better=True))
    text = "\n".join(lines)
    assert "guardrails not checked yet for recs/2: under 50 requests" in text
    assert "error rate <= the control's + 1.00% (or under 3 failed requests)" in text and "within 10 ms" in text
    assert "each have 50 requests (answers and failures)" in text


def test_the_help_says_when_the_guardrails_are_judged_and_what_rollback_restores():
    """The help said neither that a guardrail waits for 50 requests on both sides nor that the error rate needs 3
    failures; and `stop` said a rollback restores the split from before the experiment (after a ramp it restores
    the experiment's own earlier split)."""
    import inspect

    from aimass.cli.experiments import start, stop

    options = inspect.signature(start).parameters
    errors, p99 = options["max_error_rate"].default.help, options["max_p99_ratio"].default.help
    assert "each have 50 requests (answers and failures)" in errors and "3 failed requests or more" in errors
    assert "each have 50 requests (answers and failures)" in p99
    assert "before the experiment" not in stop.__doc__
    assert "go back to the previous split with aimass rollback: after a ramp, that is the experiment's own" in (
        " ".join(stop.__doc__.split()))

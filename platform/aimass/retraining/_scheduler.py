"""The loop that runs drift reports and retrain triggers for every deployed endpoint. It lives inside the
serving cluster as a detached actor (`start_in_cluster`), so it runs as long as the endpoints do and stops
with them. A retrain runs as its own `aimass retrain E --reason R` process: hours of training must not block
the loop, and a crash of either must not take the other down."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from aimass.errors import AimassError, ConflictError, NotFoundError
from aimass.settings import Settings, default_settings, error_line

log = logging.getLogger(__name__)
ACTOR = "aimass-scheduler"
NAMESPACE = "aimass"  # serving's (aimass.serving._cluster.connect)
TICK_S = 30.0
# The floor between two launches for one endpoint when its last attempt left no record, not even the one the
# scheduler writes for a process that died without its own (a full disk): the triggers cannot see that attempt.
RETRY_S = 300.0
# The share of the scheduler's time one canary's looks may take: a look reads the experiment's answers whole
# (0.62 s at 200,000 answers on 2 idle cores, benchmarks/canary_look.py), so a look that took t seconds waits
# t / LOOK_SHARE before the next. A sequential test stays valid however seldom it looks; a long canary is only
# decided later.
LOOK_SHARE = 0.1


class Launched(NamedTuple):
    """A retrain this scheduler started. `proc` (anything with poll()) is None once it ended and was looked at,
    or when it did not start."""

    started: float
    proc: object | None
    reason: str


class Scheduler:
    """`tick()` does what is due now. The callables default to the real ones; tests pass fakes."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 endpoints: Callable[[], list[str]] | None = None, drift: Callable[[str], object] | None = None,
                 launch: Callable[[str, str], object] | None = None,
                 look: Callable[[str], str | None] | None = None):
        self.settings = settings
        self.clock = clock
        self._endpoints = endpoints or self._deployed
        self._drift = drift or self._drift_report
        self._launch = launch or self._start_retrain
        self._look = look or self._look_at_canary
        self.last_drift: dict[str, float] = {}
        self.next_look: dict[str, float] = {}
        self.launched: dict[str, Launched] = {}
        self._no_monitoring = False

    def tick(self) -> dict[str, list[str]]:
        """One pass over the deployed endpoints; returns what it did, by endpoint."""
        from aimass.retraining import due

        s, now, done = self.settings, self.clock(), {}
        try:  # canaries first: a decision must not wait behind an hour-long drift report
            for endpoint, decision in self._canaries(now).items():
                done.setdefault(endpoint, []).append(f"experiment:{decision}")
        except Exception:
            log.exception("checking the running experiments failed")
        endpoints = self._endpoints()
        for endpoint in endpoints:
            did = done.setdefault(endpoint, [])
            if s.monitor_interval_s and now - self.last_drift.get(endpoint, float("-inf")) >= s.monitor_interval_s:
                self.last_drift[endpoint] = now
                if self._report(endpoint):
                    did.append("drift-report")
            if self._running(endpoint):
                continue  # one retrain at a time per endpoint
            started = self.launched[endpoint].started if endpoint in self.launched else None
            try:
                reason = due(endpoint, settings=s, now=now)
            except Exception:
                log.exception("cannot tell whether %s is due for retraining", endpoint)
                continue
            if reason and (started is None or now - started >= RETRY_S or self._recorded_since(endpoint, started)):
                log.info("retraining %s (%s)", endpoint, reason)
                try:  # one endpoint's launch failing must not keep the endpoints after it waiting
                    self.launched[endpoint] = Launched(now, self._launch(endpoint, reason), reason)
                except Exception as e:
                    log.exception("the retrain of %s did not start", endpoint)
                    self.launched[endpoint] = Launched(now, None, reason)
                    self._record_failure(endpoint, now, reason, f"the retrain process did not start: {error_line(e)}")
                    continue
                did.append(f"retrain:{reason}")
        # A retrain outlives its endpoint's deletion or stop: it is still looked at, so that one which dies is
        # reported, and forgotten once it ended.
        for endpoint in [e for e in self.launched if e not in endpoints]:
            if not self._running(endpoint):
                del self.launched[endpoint]
        return done

    def _running(self, endpoint: str) -> bool:
        """Whether the endpoint's launched retrain still runs. One that ended without writing its record (killed
        by the OOM killer, a segfault: the record is written on the way out) gets a `failed` one here, so that
        the triggers wait `retrain_retry_s` and the history shows it."""
        run = self.launched.get(endpoint)
        if run is None or run.proc is None:
            return False
        code = run.proc.poll()
        if code is None:
            return True
        self.launched[endpoint] = run._replace(proc=None)  # looked at once, not at every tick
        try:
            recorded = self._recorded_since(endpoint, run.started)
        except Exception:
            log.exception("cannot read the retrain records of %s", endpoint)
            recorded = False
        if not recorded and code in (ConflictError.exit_code, NotFoundError.exit_code):
            # refused before it started (another retrain holds the endpoint, the endpoint went): not an attempt
            log.info("the retrain of %s (%s) was refused (exit code %d): see %s", endpoint, run.reason, code,
                     self.log_path(endpoint))
        elif not recorded:
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
            why = f"the retrain process {how} without writing its record; its log: {self.log_path(endpoint)}"
            log.error("the retrain of %s (%s) failed: %s", endpoint, run.reason, why)
            self._record_failure(endpoint, run.started, run.reason, why)
        return False

    def _record_failure(self, endpoint: str, started: float, reason: str, error: str) -> None:
        from aimass.retraining import RetrainResult, _records

        ended = self.clock()
        try:
            _records.write(self.settings, RetrainResult(
                endpoint=endpoint, reason=reason, status="failed", error=error,
                started_at=datetime.fromtimestamp(started, UTC), finished_at=datetime.fromtimestamp(ended, UTC),
                seconds=round(max(ended - started, 0.0), 1)))
        except Exception:  # the attempt is in the log above; without its record only RETRY_S spaces the next
            log.exception("the failed retrain of %s was not recorded", endpoint)

    def log_path(self, endpoint: str) -> Path:
        """Where a retrain process of `endpoint` writes its output."""
        return self.settings.home / "logs" / f"retrain-{endpoint}.log"

    def _report(self, endpoint: str) -> bool:
        try:
            self._drift(endpoint)
            return True
        except AimassError as e:  # no traffic in the window, nothing served yet: nothing to report on
            log.info("no drift report for %s: %s", endpoint, e)
        except Exception:
            log.exception("the drift report of %s failed", endpoint)
        return False

    def _recorded_since(self, endpoint: str, started: float) -> bool:
        from aimass.retraining import history

        last = history(endpoint, limit=1, settings=self.settings)
        # rounded to the microsecond as a record's own start is (the one _record_failure writes for this start)
        return bool(last) and last[0].started_at >= datetime.fromtimestamp(started, UTC)

    # --- the real collaborators ----------------------------------------------------------------------------
    def _deployed(self) -> list[str]:
        from aimass import serving

        # a deployment is kept, NOT_RUNNING, after its cluster stops: a new cluster's scheduler must leave it be
        return [d.endpoint for d in serving.deployments(settings=self.settings)
                if d.status == "RUNNING" and not d.ranker]

    def _canaries(self, now: float) -> dict[str, str]:
        """One look at each running canary whose last look's cost allows it now (LOOK_SHARE): the decisions
        made, by endpoint."""
        from aimass import experiments

        out = {}
        listed = experiments.auto_endpoints(settings=self.settings)
        for gone in set(self.next_look) - set(listed):  # ended: a later canary there starts with no wait
            del self.next_look[gone]
        for endpoint in listed:
            if now < self.next_look.get(endpoint, float("-inf")):
                continue
            started = self.clock()
            try:
                decision = self._look(endpoint)
            except Exception:  # one endpoint's failing look must not keep the others waiting
                log.exception("checking the experiment on %s failed", endpoint)
                decision = None
            self.next_look[endpoint] = started + (self.clock() - started) / LOOK_SHARE
            if decision:  # its time went on the decision (a promotion's gate), not on looking
                out[endpoint] = decision
                del self.next_look[endpoint]
        return out

    def _look_at_canary(self, endpoint: str) -> str | None:
        from aimass import experiments

        return experiments.check(endpoint, settings=self.settings)

    def _drift_report(self, endpoint: str) -> object:
        if self._no_monitoring:
            return None
        try:
            from aimass import monitoring
        except ImportError:  # an install without it: triggers by schedule and volume still work
            self._no_monitoring = True
            log.warning("aimass.monitoring is not available: no drift reports")
            return None
        return monitoring.drift(endpoint, window_s=self.settings.monitor_window_s, settings=self.settings)

    def _start_retrain(self, endpoint: str, reason: str) -> subprocess.Popen:
        path = self.log_path(endpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-c", "from aimass.cli import main; main()", "retrain", endpoint, "--reason",
                 reason, "--json"], env=child_env(self.settings), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.settings.home, start_new_session=True)


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a retrain process: this one's (PATH, HOME, the cluster owner mark, so that
    stopping the serving cluster stops it too) without its AIMASS_* (the settings say it all) and without
    what Ray set for this worker (its cluster, its thread cap), so that training starts its own Ray."""
    from aimass.serving import CLUSTER_OWNER_ENV as OWNER

    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("AIMASS_") and (not k.startswith("RAY_") or k == OWNER) and k != "OMP_NUM_THREADS"}
    return {**keep, **settings.as_env(), "HF_HUB_OFFLINE": "1"}


class _Actor:
    """The scheduler inside the serving cluster: ticks on a thread; `update` swaps in new settings."""

    def __init__(self, settings: dict, tick_s: float):
        self.scheduler = Scheduler(Settings(**settings))
        self.tick_s = tick_s
        self.ticks = 0
        threading.Thread(target=self._loop, name=ACTOR, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                self.scheduler.tick()
            except Exception:  # the loop outlives any one failure
                log.exception("scheduler tick failed")
            self.ticks += 1
            time.sleep(self.tick_s)

    def update(self, settings: dict) -> None:
        self.scheduler.settings = Settings(**settings)

    def status(self) -> dict:
        # a copy first: the ticking thread adds and drops entries meanwhile
        launched = list(self.scheduler.launched.items())
        return {"ticks": self.ticks, "launched": {e: run.started for e, run in launched},
                "last_drift": dict(self.scheduler.last_drift)}


def start_in_cluster(settings: Settings | None = None, tick_s: float = TICK_S) -> dict:
    """Start the scheduler in the serving cluster (`aimass.serving.connect`) as the detached actor
    `aimass-scheduler`, or give the running one these settings. Idempotent; returns its status."""
    import ray

    from aimass.serving import WORKER_SETUP_HOOK as HOOK
    from aimass.serving import connect

    settings = settings or default_settings()
    connect(settings)
    # the actor's arguments stay in Ray's control store: credentials travel in the secrets file there too
    data = settings.dump(secrets_to=settings.secrets_dir)
    actor = ray.remote(_Actor).options(
        name=ACTOR, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
        # what the serving replicas get: the loopback hook, and the settings for whatever reads the environment
        runtime_env={"env_vars": {**settings.as_env(secrets_to=settings.secrets_dir), "HF_HUB_OFFLINE": "1"},
                     "worker_process_setup_hook": HOOK},
    ).remote(data, tick_s)
    ray.get(actor.update.remote(data))
    return {"actor": ACTOR, "namespace": NAMESPACE, **ray.get(actor.status.remote())}

"""The loop that runs drift reports and retrain triggers for every deployed endpoint. It lives inside the
serving cluster as a detached actor (`start_in_cluster`), so it runs as long as the endpoints do and stops
with them. A retrain runs as its own `aimass retrain E --reason R` process: hours of training must not block
the loop, and a crash of either must not take the other down."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from aimass.errors import AimassError
from aimass.settings import Settings, default_settings

log = logging.getLogger(__name__)
ACTOR = "aimass-scheduler"
NAMESPACE = "aimass"  # serving's (aimass.serving._cluster.connect)
TICK_S = 30.0
RETRY_S = 300.0  # a retrain process that ended without a record (it could not start) is retried this late


class Scheduler:
    """`tick()` does what is due now. The callables default to the real ones; tests pass fakes."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 endpoints: Callable[[], list[str]] | None = None, drift: Callable[[str], object] | None = None,
                 launch: Callable[[str, str], object] | None = None,
                 experiments: Callable[[], dict[str, str]] | None = None):
        self.settings = settings
        self.clock = clock
        self._endpoints = endpoints or self._deployed
        self._drift = drift or self._drift_report
        self._launch = launch or self._start_retrain
        self._experiments = experiments or self._check_experiments
        self.last_drift: dict[str, float] = {}
        self.launched: dict[str, tuple[float, object]] = {}  # endpoint -> (when, process with poll())
        self._no_monitoring = False

    def tick(self) -> dict[str, list[str]]:
        """One pass over the deployed endpoints; returns what it did, by endpoint."""
        from aimass.retraining import due

        s, now, done = self.settings, self.clock(), {}
        try:  # canaries first: a decision must not wait behind an hour-long drift report
            for endpoint, decision in self._experiments().items():
                done.setdefault(endpoint, []).append(f"experiment:{decision}")
        except Exception:
            log.exception("checking the running experiments failed")
        for endpoint in self._endpoints():
            did = done.setdefault(endpoint, [])
            if s.monitor_interval_s and now - self.last_drift.get(endpoint, float("-inf")) >= s.monitor_interval_s:
                self.last_drift[endpoint] = now
                if self._report(endpoint):
                    did.append("drift-report")
            started, proc = self.launched.get(endpoint, (None, None))
            if proc is not None and proc.poll() is None:
                continue  # one retrain at a time per endpoint
            try:
                reason = due(endpoint, settings=s, now=now)
            except Exception:
                log.exception("cannot tell whether %s is due for retraining", endpoint)
                continue
            if reason and (started is None or now - started >= RETRY_S or self._recorded_since(endpoint, started)):
                log.info("retraining %s (%s)", endpoint, reason)
                try:  # one endpoint's launch failing must not keep the endpoints after it waiting
                    self.launched[endpoint] = (now, self._launch(endpoint, reason))
                except Exception:
                    log.exception("the retrain of %s did not start", endpoint)
                    self.launched[endpoint] = (now, None)  # tried again after RETRY_S, not every tick
                    continue
                did.append(f"retrain:{reason}")
        return done

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
        return bool(last) and last[0].started_at.timestamp() >= started

    # --- the real collaborators ----------------------------------------------------------------------------
    def _deployed(self) -> list[str]:
        from aimass import serving

        return [d.endpoint for d in serving.deployments(settings=self.settings) if not d.ranker]

    def _check_experiments(self) -> dict[str, str]:
        from aimass import experiments

        return experiments.check_all(settings=self.settings)

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
        logs = self.settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"retrain-{endpoint}.log", "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-c", "from aimass.cli import main; main()", "retrain", endpoint, "--reason",
                 reason, "--json"], env=child_env(self.settings), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.settings.home, start_new_session=True)


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
        return {"ticks": self.ticks, "launched": {e: w for e, (w, _) in self.scheduler.launched.items()},
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

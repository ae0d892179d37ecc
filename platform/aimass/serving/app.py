"""The Ray Serve application of a deployment. `build(args)` is the application builder that both
`aimass deploy` and `serve deploy <home>/serve/serve-config.yaml` (import_path aimass.serving.app:build)
call, so the written config reproduces the deployment.

The ingress mounts the Bento's ASGI app (bentoml.ray is broken with Ray 2.60, ../shared/STACK.md): the
class defines `__serve_build_asgi_app__`, which Serve calls in the replica after the constructor and whose
ASGI start-up builds the BentoML service instance. A multi-stage application adds one deployment per stage
and hands their handles to the ingress."""
from __future__ import annotations

import warnings

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from aimass.serving._cluster import HOOK
from aimass.serving._pipeline import Stages, StageServer
from aimass.settings import LogLevel

_stages: Stages | None = None


def stage_handles() -> Stages | None:
    """The stage handles of this replica's application (None outside a multi-stage Serve app)."""
    return _stages


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str = Field(description="Service class: a model family, or 'pipeline'")
    env: dict[str, str] = Field(description="AIMASS_* variables of the replicas (what to load, where)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    num_cpus: float = Field(0.5, gt=0)
    # Ray's own defaults (30 s up, 600 s down, metrics every 10 s averaged over 30 s) make a replica change take
    # minutes to appear: too slow to see, or to trust, on a small cluster.
    upscale_delay_s: float = Field(10.0, ge=0, description="How long the autoscaler must want more replicas "
                                   "before it adds them (Ray's default: 30 s)")
    downscale_delay_s: float = Field(60.0, ge=0, description="How long the autoscaler must want fewer replicas "
                                     "before it removes them (Ray's default: 600 s)")
    metrics_interval_s: float = Field(2.0, gt=0, description="How often each replica reports its ongoing "
                                      "requests to the autoscaler (Ray's default: 10 s)")
    look_back_period_s: float = Field(10.0, gt=0, description="The window the autoscaler averages ongoing "
                                      "requests over (Ray's default: 30 s); must exceed metrics_interval_s")

    log_level: LogLevel = Field("WARNING", description="Level of Serve's own logger in the replicas")

    def autoscaling_config(self) -> dict:
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests, "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s, "metrics_interval_s": self.metrics_interval_s,
                "look_back_period_s": self.look_back_period_s}

    @model_validator(mode="after")
    def _servable(self) -> AppArgs:
        # a hand-edited serve config: refused here, naming what is wrong, not in every replica after the deploy
        from aimass.serving.services import servable

        if self.family not in servable():
            raise ValueError(f"unknown family {self.family!r}; servable: {', '.join(servable())}")
        need = ["AIMASS_SERVE_MODEL"] + (["AIMASS_SERVE_RANKER"] if self.family == "pipeline" else [])
        missing = [k for k in need if not self.env.get(k)]
        if missing:
            raise ValueError(f"env lacks {', '.join(missing)} (the model version(s) the replicas load, NAME/VERSION)")
        return self

    @model_validator(mode="after")
    def _window_spans_reports(self) -> AppArgs:
        # A window no longer than the report interval averages over one report or none (Ray only warns).
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(f"look_back_period_s ({self.look_back_period_s}) must exceed metrics_interval_s "
                             f"({self.metrics_interval_s})")
        return self


@serve.deployment
@serve.ingress()
class BentoIngress:
    def __init__(self, family: str, retrieval=None, ranking=None):
        global _stages
        self.family = family
        if retrieval is not None:
            _stages = Stages(retrieval, ranking, handles=True)

    def __serve_build_asgi_app__(self):
        from aimass.serving.services import service

        return service(self.family).to_asgi()


StageDeployment = serve.deployment(StageServer)


def build(args: dict):
    a = AppArgs.model_validate(args)
    opts = {
        "autoscaling_config": a.autoscaling_config(),
        "max_ongoing_requests": max(32, int(4 * a.target_ongoing_requests)),
        # Serve's per-request access log line: the served-answer log and /metrics already account for each
        # request. Off alone, it still builds a record per request that a filter then drops; below INFO it
        # is not built at all.
        "logging_config": {"enable_access_log": False, "log_level": a.log_level},
        "ray_actor_options": {"num_cpus": a.num_cpus,
                              "runtime_env": {"env_vars": a.env, "worker_process_setup_hook": HOOK}},
    }
    with warnings.catch_warnings():
        # Ray 2.60 marks metrics_interval_s deprecated in favour of environment variables it does not read yet
        # (the replicas still push at autoscaling_config.metrics_interval_s): the field is the only lever.
        warnings.filterwarnings("ignore", message=".*metrics_interval_s.*", category=DeprecationWarning)
        if a.family != "pipeline":
            return BentoIngress.options(name="ingress", **opts).bind(a.family)
        retrieval = StageDeployment.options(name="retrieval", **opts).bind(a.env["AIMASS_SERVE_MODEL"])
        ranking = StageDeployment.options(name="ranking", **opts).bind(a.env["AIMASS_SERVE_RANKER"])
        return BentoIngress.options(name="ingress", **opts).bind("pipeline", retrieval, ranking)

"""The Ray Serve application of a deployment. `build(args)` is the application builder that both
`aimass deploy` and `serve deploy <home>/serve/serve-config.yaml` (import_path aimass.serving.app:build)
call, so the written config reproduces the deployment.

The ingress mounts the Bento's ASGI app (bentoml.ray is broken with Ray 2.60, ../shared/STACK.md): the
class defines `__serve_build_asgi_app__`, which Serve calls in the replica after the constructor and whose
ASGI start-up builds the BentoML service instance. A multi-stage application adds one deployment per stage
and hands their handles to the ingress."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from aimass.serving._cluster import HOOK
from aimass.serving._pipeline import Stages, StageServer

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
        "autoscaling_config": {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                               "target_ongoing_requests": a.target_ongoing_requests},
        "max_ongoing_requests": max(32, int(4 * a.target_ongoing_requests)),
        "ray_actor_options": {"num_cpus": a.num_cpus,
                              "runtime_env": {"env_vars": a.env, "worker_process_setup_hook": HOOK}},
    }
    if a.family != "pipeline":
        return BentoIngress.options(name="ingress", **opts).bind(a.family)
    retrieval = StageDeployment.options(name="retrieval", **opts).bind(a.env["AIMASS_SERVE_MODEL"])
    ranking = StageDeployment.options(name="ranking", **opts).bind(a.env["AIMASS_SERVE_RANKER"])
    return BentoIngress.options(name="ingress", **opts).bind("pipeline", retrieval, ranking)

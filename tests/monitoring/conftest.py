"""One trained home for the monitoring tests: a small demo dataset and an item-kNN model registered as
`recs/1`. Answers are written to the served-answer log exactly as a replica writes them (no Ray Serve): the
windows are chosen users' and histories' real answers from the model."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

import aimass
from aimass import registry
from aimass.settings import Settings


class Home:
    def __init__(self, settings: Settings):
        from aimass.events import ServedLog
        from aimass.serving import Engine

        self.settings = settings
        self.engine = Engine("recs/1", settings)
        self.log = ServedLog(settings)
        self.users = np.array(sorted(self.engine.histories))
        self.activity = np.array([len(self.engine.histories[u]) for u in self.users])

    def serve(self, endpoint: str, requests: list[tuple[int | None, list[int] | None]]) -> list[str]:
        """Answer (user_id, history) requests with the model and log each answer; returns the request ids."""
        ids = []
        for user, history in requests:
            out = self.engine.recommend(user_id=user, history=history, k=10)
            rid = uuid.uuid4().hex  # as services.py logs it: the history's tail, and its whole length
            self.log.record(endpoint, rid, "recommend", "recs", 1, user, out["history_tail"], out["items"],
                            out["scores"], out["strategy"], history_length=out["history_length"])
            ids.append(rid)
        self.log.flush()
        return ids


@pytest.fixture(scope="package")
def home(tmp_path_factory) -> Home:
    import ray

    s = Settings(home=tmp_path_factory.mktemp("monitoring") / "home")
    inter, items = aimass.datasets.generate_demo(s.home.parent / "demo",
                                                 aimass.datasets.DemoConfig(users=600, tracks=300, seed=4))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    run = aimass.train("itemknn", "demo@v1", workers=0, progress=False, settings=s).run_id
    ray.shutdown()
    registry.register(run, "recs", settings=s)
    return Home(s)

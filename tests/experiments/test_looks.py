"""Looks stored by processes at once, against a real SQLite catalog: each keeps what the others stored."""
from __future__ import annotations

import threading
from types import SimpleNamespace

from aimass.catalog import Experiment, ExperimentPublic, session
from aimass.experiments import _store_look


def _look(arm: str, p: float, winner: str | None) -> SimpleNamespace:  # the fields a stored look reads
    return SimpleNamespace(treatment=SimpleNamespace(name=arm), min_p=p, winner=winner)


def test_simultaneous_looks_lose_no_arms_minimum_or_winner(settings):
    """Each thread looks at its own treatment arm, over and over: without the write lock taken before the row is
    read, one look's read-modify-write overwrote another's (SQLite ignores SELECT ... FOR UPDATE)."""
    arms = [f"t{i}" for i in range(4)]
    with session(settings) as db:
        row = Experiment(endpoint="recs", experiment_id="exp-1", metric="play_rate",
                         arms=[{"ref": "control", "weight": 0.5}] + [{"ref": a, "weight": 0.1} for a in arms])
        db.add(row)
        db.commit()
        e = ExperimentPublic.model_validate(row)
    start = threading.Barrier(len(arms))

    def looks(arm: str) -> None:
        start.wait()
        for k in range(6):
            _store_look(settings, e, [_look(arm, 1.0 / (k + 2), arm if k == 2 else None)])

    threads = [threading.Thread(target=looks, args=(a,)) for a in arms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session(settings) as db:
        stored = db.get(Experiment, e.id)
        assert stored.min_p == {a: 1.0 / 7 for a in arms}
        assert stored.winners == {a: a for a in arms}

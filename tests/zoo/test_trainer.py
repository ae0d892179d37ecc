"""The one training loop (aimass.zoo.trainer.EpochLoop): limits, best epoch, and what a diverged model does."""
from __future__ import annotations

import numpy as np

from aimass.zoo.trainer import STOP_METRIC, EpochLoop, Limits, validation_metrics


def test_a_diverged_epoch_is_never_the_best_and_patience_stops_it():
    """Epoch 3's model scores NaN: validation reports NaN (not an exception), the best stays epoch 2."""
    quality = {1: 0.1, 2: 0.3, 3: None, 4: None}
    epoch = {"n": 0}

    def score(histories):
        q = quality[epoch["n"]]
        s = np.zeros((len(histories), 6), dtype=np.float32)
        if q is None:
            s[:] = np.nan
        else:
            s[:, 2] = q  # the target, item 2, ranks first
        s[:, 0] = -np.inf
        return s

    def validate():
        epoch["n"] += 1
        return validation_metrics(score, [np.array([1])] * 4, np.full(4, 2), 5)

    kept = []
    st = EpochLoop(Limits(epochs=10, patience=2), lambda batch, step, progress: 1.0, validate=validate,
                   keep_best=lambda: kept.append(epoch["n"])).run([(np.zeros(2),)])
    assert np.isnan(st.history[2][STOP_METRIC]) and st.history[1][STOP_METRIC] == 1.0
    assert (st.best_epoch, kept, st.epoch) == (1, [1], 3)  # ties don't count as better: epoch 2 equals 1


def test_max_steps_and_the_schedule_progress():
    seen = []
    st = EpochLoop(Limits(epochs=100, max_steps=7), lambda b, step, progress: seen.append(progress) or 0.0
                   ).run([(np.zeros(1),)] * 3)
    assert st.step == 7 and st.epoch == 3 and seen[0] == 0.0 and seen == sorted(seen) and seen[-1] < 1.0
    st = EpochLoop(Limits(epochs=5, max_steps=0), lambda *a: 0.0).run([(np.zeros(1),)])
    assert (st.step, st.epoch) == (0, 0)  # zero steps: no epoch ran, nothing to validate


def test_a_time_budget_is_spent_not_cut_short_by_early_stopping():
    """With a budget and the family's default patience, validation that never improves does not end the job
    early: the budget is the user's. A patience the user set explicitly still applies."""
    import time

    from aimass.zoo.sasrec import SASRecConfig

    def run(limits):
        scores = iter(np.linspace(0.5, 0.0, 10_000))  # worse every epoch after the first
        return EpochLoop(limits, lambda *a: time.sleep(0.01) or 0.0,
                         validate=lambda: {STOP_METRIC: float(next(scores))}).run([(np.zeros(1),)] * 2)

    cfg = SASRecConfig(epochs=3, patience=2)
    budgeted = Limits.of(cfg, time_budget_s=0.5)
    assert budgeted.patience is None and budgeted.epochs > 1000
    st = run(budgeted)
    assert st.stop_reason == "time budget" and st.epoch > 3 and st.best_epoch == 1
    st = run(Limits.of(cfg, time_budget_s=0.5, explicit={"patience": 2, "epochs": 3}))
    assert (st.stop_reason, st.epoch) == ("patience", 3)
    assert run(Limits.of(cfg)).stop_reason == "patience"  # no budget: the family's early stopping
    assert run(Limits(epochs=2)).stop_reason == "epochs"

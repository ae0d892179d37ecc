"""The one training loop (aimass.zoo.trainer.EpochLoop): limits, best epoch, and what a diverged model does."""
from __future__ import annotations

import numpy as np

from aimass.zoo.trainer import STOP_METRIC, EpochLoop, Limits, LoopState, budget_note, validation_metrics


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


def test_a_validation_that_runs_past_the_budget_ends_the_job():
    """The epoch's steps end inside the budget and its validation ends outside it: the job stops there, rather
    than train one more step and pay a second validation and checkpoint past the user's budget."""
    import time

    validations = []

    def validate():
        validations.append(1)
        time.sleep(0.3)  # a validation longer than the whole budget
        return {STOP_METRIC: 0.1}

    st = EpochLoop(Limits(epochs=100, time_budget_s=0.2), lambda *a: 0.0, validate=validate
                   ).run([(np.zeros(1),)] * 3)
    assert (st.stop_reason, st.epoch, st.step, len(validations)) == ("time budget", 1, 3, 1)


def test_a_budget_that_bought_nothing_after_an_early_peak_is_said():
    """The loop spends the whole budget, but a job whose best epoch came in the first half of it says so,
    with the epoch and the minutes; one that improved late, or stopped for another reason, says nothing."""
    import time

    def run(scores):
        it = iter(scores)
        return EpochLoop(Limits(epochs=10_000, time_budget_s=0.6), lambda *a: time.sleep(0.02) or 0.0,
                         validate=lambda: {STOP_METRIC: float(next(it))}).run([(np.zeros(1),)] * 2)

    early = run(np.linspace(0.5, 0.0, 10_000))  # best at epoch 1, worse ever after
    assert early.stop_reason == "time budget" and early.best_epoch == 1 and early.epoch > 4
    assert 0 < early.best_at_s < 0.3 < early.train_time_s
    note = budget_note(early, 0.6)
    assert note.startswith(f"validation peaked at epoch 1 of {early.epoch},") and "did not improve it" in note
    assert budget_note(early, None) == ""  # no budget, nothing to say about one
    late = run(np.linspace(0.0, 0.5, 10_000))  # better every epoch
    assert late.best_epoch == late.epoch and late.best_at_s >= 0.6 and budget_note(late, 0.6) == ""
    stopped = LoopState(epoch=5, best_epoch=1, best_at_s=0.1, train_time_s=0.5, stop_reason="patience")
    assert budget_note(stopped, 10.0) == ""  # early stopping the user asked for already says why
    # a first epoch longer than the budget (a large catalogue): the model saw part of the data, which is said
    part = EpochLoop(Limits(epochs=10, time_budget_s=0.2), lambda *a: time.sleep(0.02) or 0.0,
                     validate=lambda: {STOP_METRIC: 0.1}).run([(np.zeros(1),)] * 1000)
    assert (part.stop_reason, part.epoch, part.steps_per_epoch) == ("time budget", 1, 1000) and part.step < 1000
    assert budget_note(part, 0.2) == (f"the budget ended within the first epoch ({part.step:,} of 1,000 steps): the "
                                      "model saw part of the data once; a longer --time-budget trains on the rest")



class _Recorder:
    """A family whose step only records what it draws from the step's generator and torch's global stream
    (where dropout draws)."""

    family = "recorder"

    def __init__(self):
        self.draws = []

    def training_data(self, sequences, cfg):
        import torch

        return torch.utils.data.TensorDataset(torch.arange(4.0))

    def make_optimizer(self, module, cfg):
        import torch

        return torch.optim.SGD(module.parameters(), lr=0.1)

    def train_step(self, wrapped, batch, cfg, optimizer, i, progress, generator=None):
        import torch

        self.draws.append((int(torch.randint(0, 2**30, (1,), generator=generator)), float(torch.rand(1))))
        return 0.0


def test_a_resumed_job_draws_fresh_random_streams_not_a_replay_of_its_first_epochs():
    import types

    import torch

    from aimass.zoo.trainer import Trainer

    def draws(state):
        torch.manual_seed(0)  # as a job's process starts (a resumed one too)
        est = _Recorder()
        Trainer(est, types.SimpleNamespace(batch_size=2), 5, Limits(epochs=(state.epoch if state else 0) + 1),
                seed=3).fit(torch.nn.Linear(1, 1), [[1, 2]], state=state)
        return est.draws

    first = draws(None)
    resumed = draws(LoopState(epoch=1, step=len(first)))
    assert len(first) == len(resumed) == 2
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(first, resumed, strict=True)), (first, resumed)
    assert draws(LoopState(epoch=1, step=2)) == resumed and draws(None) == first  # still seeded

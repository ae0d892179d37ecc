"""Can SASRec turn more budget into quality on short histories? On ml1m-short (each ml1m user's last 5-12
items, as benchmarks/robustness.py builds it: the 8-9 interactions per user of Amazon-style reviews) SASRec
peaks in its first minutes and a 45-minute budget buys nothing more. This tries what could use the rest:
more regularisation, a lower learning rate, an average of the weights, annealing from the best epoch again,
blending with EASE, and an ensemble of seeds (what SASRec's ``members`` now does inside one job), each on
validation (every user) and test, full ranking. Every variant is one network (``members=1``) but
``members``, the family's own default for the budget.

    .venv/bin/python benchmarks/short_history.py                    # 3 minutes per variant (~18 min in all)
    .venv/bin/python benchmarks/short_history.py --budget 1 --variants default anneal
    .venv/bin/python benchmarks/short_history.py --budget 1.5 --variants ensemble --members 4

Single process, 2 threads (SASRec's own `fit`, the loop a Ray Train worker runs); leave-one-out over every
user: train on all but the last two items, validate on the second last, test on the last.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from aimass.evaluation import evaluate
from aimass.zoo.ease import EASE
from aimass.zoo.sasrec import SASRec, sasrec_train_step
from aimass.zoo.trainer import BUDGET_EPOCHS, STOP_METRIC, Limits, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from robustness import DATA, ml1m_short  # noqa: E402  (the robustness benchmark's ml1m-short)

VARIANTS = ["default", "weight_decay=0.1", "lr=1e-3", "dropout=0.6", "ema", "anneal", "blend-ease", "ensemble",
            "members"]


def ml1m_short_sequences() -> tuple[list, int]:
    seqs = ml1m_short(DATA)  # robustness.py's draw
    ids = {i: k + 1 for k, i in enumerate(sorted({i for s in seqs for i in s}))}
    return [np.array([ids[i] for i in s], dtype=np.int64) for s in seqs], len(ids)


class EMASASRec(SASRec):
    """SASRec validated on an exponential moving average of its weights (decay 0.99 a step)."""

    @staticmethod
    def train_step(module, batch, cfg, optimizer, step=0, progress=0.0, generator=None):
        loss = sasrec_train_step(module, batch, cfg, optimizer, step, progress, generator)
        inner = getattr(module, "module", module)
        now = {k: v.detach().clone() for k, v in inner.state_dict().items()}
        if not hasattr(inner, "ema_"):
            inner.ema_ = now
        for k, v in now.items():
            if v.is_floating_point():
                inner.ema_[k].mul_(0.99).add_(v, alpha=0.01)
        return loss

    @staticmethod
    def score_module(module, histories, cfg, batch_size=256):
        inner = getattr(module, "module", module)
        if not hasattr(inner, "ema_"):
            return SASRec.score_module(inner, histories, cfg, batch_size)
        current = copy.deepcopy(inner.state_dict())
        inner.load_state_dict(inner.ema_)
        try:
            return SASRec.score_module(inner, histories, cfg, batch_size)
        finally:
            inner.load_state_dict(current)


def zscore(s: np.ndarray) -> np.ndarray:
    s = np.where(np.isfinite(s), s, np.nan)
    z = (s - np.nanmean(s, 1, keepdims=True)) / (np.nanstd(s, 1, keepdims=True) + 1e-9)
    return np.nan_to_num(z, nan=-1e9)


def log_softmax(s: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.where(np.isfinite(s), s, -1e9).astype(np.float32))
    return torch.log_softmax(t, dim=1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=3.0, help="minutes per SASRec variant")
    ap.add_argument("--members", type=int, default=4, help="seeds in the ensemble variant")
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    a = ap.parse_args()
    torch.set_num_threads(2)
    seqs, n = ml1m_short_sequences()
    train = [s[:-2] for s in seqs]
    val = ([s[:-2] for s in seqs], np.array([s[-2] for s in seqs]))
    test = ([s[:-1] for s in seqs], np.array([s[-1] for s in seqs]))
    rows, base = [], None

    def ndcg(score, split):
        return round(evaluate(score, split[0], split[1], n, ks=(10,))["ndcg@10"], 4)

    def report(name, val_ndcg, test_ndcg, best_epoch, epochs):
        row = {"variant": name, "val_ndcg@10": round(val_ndcg, 4), "test_ndcg@10": test_ndcg,
               "best_epoch": best_epoch, "epochs": epochs}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for v in a.variants:
        if v == "ensemble":  # K seeds of one network, each the whole budget; their scores averaged three ways
            members = []
            for seed in range(a.members):
                members.append(SASRec(time_budget_s=a.budget * 60, seed=seed, members=1).fit(train, n, valid=val))

                for how, f in (("z-scored", zscore), ("raw", lambda s: s), ("log-softmax", log_softmax)):
                    def mean(h, ms=tuple(members), f=f):
                        return sum(f(m.score(h)) for m in ms) / len(ms)
                    report(f"ensemble of {len(members)}, {how}", ndcg(mean, val), ndcg(mean, test), None, None)
            continue
        if v in ("anneal", "blend-ease"):
            if base is None:
                base = SASRec(time_budget_s=a.budget * 60, members=1).fit(train, n, valid=val)
            if v == "anneal":  # the best epoch's weights again, a quarter of the budget at lr 1e-3 down to 0
                est, module = SASRec(), copy.deepcopy(base.module_)
                cfg = base.config_.model_copy(update={"lr": 1e-3, "warmup_steps": 0})
                limits = Limits(epochs=BUDGET_EPOCHS, time_budget_s=a.budget * 15)
                module, st = Trainer(est, cfg, n, limits, valid=val).fit(module, train)
                est.adopt(module, cfg, n)
                report(v, st.best, ndcg(est.score, test), st.best_epoch, st.epoch)
            else:
                ease = EASE().fit(train, n)
                for w in (0.1, 0.2, 0.3, 0.5):
                    def blend(h, w=w, sasrec=base, ease=ease):
                        return (1 - w) * zscore(sasrec.score(h)) + w * zscore(ease.score(h))
                    report(f"blend-ease w={w}", ndcg(blend, val), ndcg(blend, test), None, None)
            continue
        cls = EMASASRec if v == "ema" else SASRec
        params = {} if v == "members" else {"members": 1}  # "members": the family's default for the budget
        if "=" in v:
            key, value = v.split("=")
            params[key] = float(value)
        est = cls(time_budget_s=a.budget * 60, **params).fit(train, n, valid=val)
        if v == "default":
            base = est
        best = max(h[STOP_METRIC] for h in est.history_)
        # the EMA's best epoch is kept as raw weights, so its test figure would not be the EMA's
        report(v, best, None if v == "ema" else ndcg(est.score, test), est.best_epoch_, len(est.history_))
    print("\n| variant | val NDCG@10 | test NDCG@10 | best epoch of |")
    print("|---|---|---|---|")
    for r in rows:
        tested = "" if r["test_ndcg@10"] is None else f"{r['test_ndcg@10']:.4f}"
        print(f"| {r['variant']} | {r['val_ndcg@10']:.4f} | {tested} | {r['best_epoch'] or ''} / {r['epochs'] or ''} |")


if __name__ == "__main__":
    main()

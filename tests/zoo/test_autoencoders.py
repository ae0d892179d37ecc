"""The autoencoder families, EASE (zoo/ease.py) and Mult-VAE (zoo/mult_vae.py), on synthetic data made here:
both learn which items go together, EASE's weights never point an item to itself, and a catalogue beyond a
family's size limit is refused before any work, naming the limit."""
from __future__ import annotations

import numpy as np
import pytest

from aimass.errors import InvalidInputError
from aimass.evaluation import evaluate
from aimass.zoo.ease import EASE
from aimass.zoo.mult_vae import MultVAE
from aimass.zoo.popularity import Popularity

N_ITEMS, GROUPS = 300, 30


def grouped(n_users: int, seed: int) -> list[np.ndarray]:
    """Each user plays 6 distinct items of one group (id % GROUPS): co-occurrence is the whole signal."""
    rng = np.random.default_rng(seed)
    return [g + GROUPS * rng.choice(N_ITEMS // GROUPS, 6, replace=False) + 1 for g in rng.integers(0, GROUPS, n_users)]


def test_both_learn_what_goes_together_and_beat_popularity():
    train, held = grouped(600, 0), grouped(200, 1)
    hist, target = [h[:-1] for h in held], np.array([h[-1] for h in held])
    ndcg = {}
    vae = MultVAE(hidden=64, latent=16, epochs=40, batch_size=64, anneal_steps=200, patience=None)
    for est in (Popularity(), EASE(), vae):
        est.fit(train, N_ITEMS)
        ndcg[est.family] = evaluate(est.score, hist, target, N_ITEMS, ks=(10,))["ndcg@10"]
    assert min(ndcg["ease"], ndcg["mult-vae"]) > 3 * ndcg["popularity"], ndcg
    assert min(ndcg["ease"], ndcg["mult-vae"]) > 0.3, ndcg


def test_ease_weights_and_its_regulariser():
    train = grouped(600, 0)
    est = EASE().fit(train, N_ITEMS)
    assert np.all(np.diag(est.weights_) == 0) and est.l2_ == pytest.approx(600 * 6 / N_ITEMS)
    assert EASE(l2=7.0).fit(train, N_ITEMS).l2_ == 7.0


def test_a_catalogue_beyond_the_limit_is_refused_naming_it():
    with pytest.raises(InvalidInputError, match=r"limit is max_items=100.*itemknn or two-tower"):
        EASE(max_items=100).fit(grouped(10, 0), N_ITEMS)
    with pytest.raises(InvalidInputError, match=r"limit is max_items=100.*two-tower"):
        MultVAE(max_items=100).fit(grouped(10, 0), N_ITEMS)



@pytest.mark.parametrize("n,users,per_user", [(600, 200, 300), (1500, 2000, 5)])
def test_the_memory_ease_says_it_needs_covers_its_peak(n, users, per_user):
    """The job's memory check (aimass.training) refuses what this machine cannot hold from `memory_bytes`: an
    estimate below the real peak lets a job be killed mid-run. On dense data (every user plays half the
    catalogue: a Gram matrix with every pair) EASE peaked at over 3 times its old estimate of 5 n^2 bytes; on
    sparse data a copy of the dense matrix (LAPACK given the wrong memory order) would double it."""
    import tracemalloc

    rng = np.random.default_rng(0)
    train = [rng.choice(n, per_user, replace=False) + 1 for _ in range(users)]
    lengths = [len(s) for s in train]
    est = EASE()
    cfg = est.resolve_config(n, lengths)
    tracemalloc.start()
    try:
        est.adopt_stats(est.sufficient_stats(train, cfg, n), cfg, n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    need = est.memory_bytes(cfg, n, lengths)
    assert 4 * (n + 1) ** 2 < peak <= need, (peak, need)

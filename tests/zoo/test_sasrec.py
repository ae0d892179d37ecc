"""SASRec family: fast tests on a tiny synthetic catalogue where item i is followed by item i + 1."""
from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from aimass.evaluation import evaluate
from aimass.zoo import _losses
from aimass.zoo.sasrec import (
    MAX_MEMBERS,
    SASRec,
    SASRecBatchSampler,
    SASRecConfig,
    SASRecEnsemble,
    SASRecModule,
    SASRecTrainingData,
    sasrec_loss,
    sasrec_optimizer,
    sasrec_token_weight,
    sasrec_train_step,
    sasrec_trim,
)
from aimass.zoo.trainer import STOP_METRIC

N_ITEMS = 40
TINY = dict(dim=16, n_blocks=1, max_len=12, batch_size=32, epochs=25, lr=5e-3, warmup_steps=5,
            dropout=0.1, patience=None)


def successor_sequences(n_users: int, seed: int = 0) -> list[np.ndarray]:
    """item i is always followed by i + 1 (wrapping), so the next item is trivially learnable."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        start, length = rng.integers(1, N_ITEMS + 1), rng.integers(4, 16)
        out.append((start - 1 + np.arange(length)) % N_ITEMS + 1)
    return out


@pytest.fixture(scope="module")
def fitted() -> tuple[SASRec, list[np.ndarray]]:
    torch.set_num_threads(2)
    train = successor_sequences(300)
    return SASRec(**TINY).fit(train, N_ITEMS, progress=False), train


def ndcg_hr(model, histories, targets) -> tuple[float, float]:
    m = evaluate(model.score, histories, targets, N_ITEMS)
    return m["ndcg@10"], m["recall@10"]


def held_out():
    seqs = successor_sequences(100, seed=1)
    return [s[:-1] for s in seqs], np.array([s[-1] for s in seqs])


def test_fit_returns_self_and_learns_the_successor(fitted):
    model, _ = fitted
    assert isinstance(model, SASRec) and isinstance(model.module_, SASRecModule)
    assert model.n_items_ == N_ITEMS and model.config_.loss == "ce" and len(model.history_) == TINY["epochs"]
    assert model.history_[-1]["loss"] < model.history_[0]["loss"]
    histories, targets = held_out()
    ndcg, hr = ndcg_hr(model, histories, targets)
    assert ndcg > 0.6 and hr > 0.8  # random ranking: NDCG@10 ~0.1


def test_score_shape_and_batch_invariance(fitted):
    model, _ = fitted
    histories, _ = held_out()
    batch = model.score(histories[:17])
    assert batch.shape == (17, N_ITEMS + 1) and batch.dtype == np.float32 and np.isneginf(batch[:, 0]).all()
    for i in (0, 5, 16):
        alone = model.score([histories[i]])
        np.testing.assert_allclose(alone[0, 1:], batch[i, 1:], atol=1e-5, rtol=0)


def test_save_load_round_trip(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "weights.safetensors"]
    loaded = SASRec.load(tmp_path / "m")
    histories, _ = held_out()
    np.testing.assert_array_equal(loaded.score(histories), model.score(histories))
    assert loaded.config_ == model.config_ and loaded.best_epoch_ == model.best_epoch_

    from aimass.zoo import load_estimator  # the registry finds the family from config.json

    np.testing.assert_array_equal(load_estimator(tmp_path / "m").score(histories), model.score(histories))


def test_seeded_determinism():
    train = successor_sequences(60)
    params = dict(TINY, epochs=2, crop="random", max_len=6)
    a = SASRec(**params, seed=3).fit(train, N_ITEMS, progress=False).module_.state_dict()
    b = SASRec(**params, seed=3).fit(train, N_ITEMS, progress=False).module_.state_dict()
    c = SASRec(**params, seed=4).fit(train, N_ITEMS, progress=False).module_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_restores_best_epoch():
    train = successor_sequences(60)
    histories, targets = held_out()
    model = SASRec(**dict(TINY, epochs=6, patience=2)).fit(train, N_ITEMS, valid=(histories, targets),
                                                           progress=False)
    best = max(r[STOP_METRIC] for r in model.history_)
    assert model.history_[model.best_epoch_ - 1][STOP_METRIC] == best
    assert ndcg_hr(model, histories, targets)[0] == pytest.approx(best, abs=1e-6)


def test_validation_counts_a_repeated_target_as_the_platform_does():
    """Repeat plays: half the validation targets are also in their history. Fit's best-epoch figure is the
    platform's own metric (aimass.evaluation counts such a target a miss, as a served answer leaves it out)."""
    train = successor_sequences(60)
    histories, targets = held_out()
    histories = [np.append(h, t) if i % 2 else h for i, (h, t) in enumerate(zip(histories, targets, strict=True))]
    model = SASRec(**dict(TINY, epochs=3)).fit(train, N_ITEMS, valid=(histories, targets), progress=False)
    reported = model.history_[model.best_epoch_ - 1][STOP_METRIC]
    assert reported == pytest.approx(ndcg_hr(model, histories, targets)[0], abs=1e-6)
    unseen = [i for i in range(len(targets)) if i % 2 == 0]
    fresh = ndcg_hr(model, [histories[i] for i in unseen], targets[unseen])[0]
    assert fresh > 0 and reported == pytest.approx(fresh / 2, abs=1e-6)  # the other half: misses


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "gbce", "bce"])
def test_every_loss_trains(loss):
    cfg = SASRecConfig(**dict(TINY, loss=loss, n_negatives=16)).resolve(N_ITEMS, [10])
    module = SASRecModule(N_ITEMS, cfg)
    data = SASRecTrainingData(successor_sequences(32), cfg)
    inputs, targets = next(iter(torch.utils.data.DataLoader(data, batch_size=32)))
    assert inputs.shape == targets.shape == (32, 12)
    value = sasrec_loss(module, (inputs, targets), cfg, torch.Generator().manual_seed(0))
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and module.item_emb.weight.grad.abs().sum() > 0


def test_resolve_derives_max_len_and_affordable_loss():
    cfg = SASRecConfig().resolve(3416, np.full(100, 300))
    assert cfg.max_len == 200 and cfg.loss == "ce"
    assert SASRecConfig().resolve(1_000_000, np.full(100, 30)).loss == "sampled_softmax"
    # a sparse log's short histories keep a batch's logits small, but past 32,768 items every step's full
    # softmax costs 32x the sampled one's (135,000 items: 30 steps in 3 minutes, NDCG@10 0.0000)
    assert SASRecConfig().resolve(32_768, np.full(100, 7)).loss == "ce"
    assert SASRecConfig().resolve(40_000, np.full(100, 7)).loss == "sampled_softmax"
    assert SASRecConfig().resolve(100, [5, 6, 7]).max_len == 8
    assert SASRecConfig(max_len=50, loss="bce").resolve(10, [3]).max_len == 50


def test_resolve_counts_only_the_users_training_keeps():
    """800 one-item users (no training sample: SASRecTrainingData drops them) and 200 of 9 items: a batch holds
    64 users of 8 targets, so 2.5M items is far beyond full CE's budget, and each token weighs 1 / 8."""
    lengths = [1] * 800 + [9] * 200
    cfg = SASRecConfig().resolve(2_500_000, lengths)
    assert cfg.loss == "sampled_softmax" and cfg.tokens_per_seq == 8.0
    kept = SASRecTrainingData([np.arange(1, n + 1) for n in lengths], cfg)
    assert len(kept) == 200 and all(len(s) - 1 == cfg.tokens_per_seq for s in kept.seqs)
    assert SASRecConfig().resolve(100, [1, 1]).tokens_per_seq == 1.0  # nobody kept: the neutral weight


def test_width_and_dropout_adapt_to_interactions_per_item():
    dense = SASRecConfig().resolve(100, np.full(100, 300))  # 300 training interactions per item
    sparse = SASRecConfig().resolve(10_000, np.full(2000, 9))  # ~2 per item, Amazon-review-like
    assert (dense.dim, dense.dropout) == (128, 0.3) and (sparse.dim, sparse.dropout) == (64, 0.5)
    mine = SASRecConfig(dim=32, dropout=0.1).resolve(10_000, np.full(2000, 9))
    assert (mine.dim, mine.dropout) == (32, 0.1)  # what the user set is kept
    with pytest.raises(ValueError, match="dim=64 is not divisible by n_heads=3"):
        SASRecConfig(n_heads=3).resolve(10_000, np.full(2000, 9))


def test_config_validation():
    with pytest.raises(pydantic.ValidationError):
        SASRecConfig(lr=-1e-3)
    with pytest.raises(pydantic.ValidationError):
        SASRecConfig(dropout=1.0)
    with pytest.raises(pydantic.ValidationError):
        SASRecConfig(loss="hinge")
    with pytest.raises(pydantic.ValidationError):
        SASRecConfig(not_a_param=1)
    SASRec(not_a_param=1)  # the constructor only stores, as in scikit-learn ...
    with pytest.raises(pydantic.ValidationError):  # ... fit validates
        SASRec(not_a_param=1).fit(successor_sequences(4), N_ITEMS, progress=False)


def test_time_budget_stops_gracefully_and_keeps_best():
    histories, targets = held_out()
    model = SASRec(**dict(TINY, epochs=50, time_budget_s=0.05)).fit(
        successor_sequences(60), N_ITEMS, valid=(histories, targets), progress=False)
    assert len(model.history_) < 50 and model.best_epoch_ >= 1
    assert model.score(histories[:2]).shape == (2, N_ITEMS + 1)


def test_length_batches_cover_every_user_once_and_split_evenly_over_workers():
    lengths = np.random.default_rng(0).integers(2, 300, size=1001)
    one = SASRecBatchSampler(lengths, batch_size=64, seed=5, chunk=4)
    one.set_epoch(3)
    global_batches = list(one)
    users = np.concatenate(global_batches)
    assert len(users) == len(set(users.tolist())) == 1001  # every user once, none padded in
    # batches hold users of similar length: far less spread than random batches of the same size
    spread = np.mean([np.ptp(lengths[b]) for b in global_batches])
    assert spread < 0.5 * np.mean([np.ptp(lengths[b]) for b in np.array_split(np.arange(1001), 16)])
    ranks = []
    for rank in range(2):
        sampler = SASRecBatchSampler(lengths, batch_size=64, world=2, rank=rank, seed=5, chunk=4)
        sampler.set_epoch(3)
        ranks.append(list(sampler))
    assert len(ranks[0]) == len(ranks[1]) == len(global_batches)  # DDP: the same number of steps each
    for g, a, b in zip(global_batches, *ranks, strict=True):
        assert sorted(a + b) == sorted(g)  # two workers step on the same global batches as one
    one.set_epoch(4)
    assert global_batches != list(one)  # reshuffled each epoch


def test_trimming_padding_is_exact():
    cfg = SASRecConfig(**TINY, bf16=False).resolve(N_ITEMS, [10])
    module = SASRecModule(N_ITEMS, cfg).eval()
    data = SASRecTrainingData([s[:6] for s in successor_sequences(8)], cfg)
    inputs, targets = next(iter(torch.utils.data.DataLoader(data, batch_size=8)))
    short_in, short_t = sasrec_trim(inputs, targets)
    assert short_in.shape[1] == 5 < inputs.shape[1] and (short_t != 0).sum() == (targets != 0).sum()
    with torch.no_grad():
        assert torch.allclose(module(inputs)[:, -5:], module(short_in), atol=1e-5)
        # the loss (which trims) against the same loss computed on the untrimmed, padded forward
        keep = targets != 0
        untrimmed = _losses.full_softmax_ce(module(inputs)[keep], targets[keep], module.item_emb.weight)
        weight = sasrec_token_weight(int(keep.sum()), len(inputs), cfg)
        assert torch.allclose(sasrec_loss(module, (inputs, targets), cfg), untrimmed * weight, atol=1e-6)


@pytest.mark.parametrize("members,n_blocks", [(1, 1), (1, 2), (2, 2)])
def test_the_last_position_alone_is_the_full_forward_s_last_position(members, n_blocks):
    """Scoring (validation, test, serving) runs only the last block's last position: 1.5x faster on a length
    of 200, the same vector."""
    torch.manual_seed(0)
    cfg = SASRecConfig(**dict(TINY, n_blocks=n_blocks, members=members, dropout=0.0), bf16=False).resolve(N_ITEMS, [10])
    module = (SASRecEnsemble if members > 1 else SASRecModule)(N_ITEMS, cfg).eval()
    seq = torch.randint(1, N_ITEMS + 1, (6, cfg.max_len))
    seq[1, :7] = 0  # padded
    seq[2, :-1] = 0  # one item
    seq[3] = 0  # no history at all
    with torch.no_grad():
        full, last = module(seq), module(seq, last_only=True)
    assert last.shape == (6, 1, full.shape[-1])
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(last[0, 0], last[1, 0])  # padding changes the vector: not a constant


def test_a_budget_on_sparse_data_buys_members_and_dense_data_or_no_budget_keeps_one():
    short = np.full(6040, 8)  # ml1m-short's shape: 8 items a user, 3.4k items (sparse)
    assert SASRecConfig().resolve(3400, short).members == 1  # no budget: one network, as before
    assert SASRecConfig().resolve(3400, short, 45 * 60).members == MAX_MEMBERS
    assert SASRecConfig(time_budget_s=45 * 60).resolve(3400, short).members == MAX_MEMBERS
    by_budget = [SASRecConfig().resolve(3400, short, m * 60).members for m in (0.5, 3, 5, 10, 45)]
    assert by_budget == sorted(by_budget) and by_budget[0] == 1 < by_budget[-1]
    assert SASRecConfig().resolve(3400, np.full(6040, 200), 45 * 60).members == 1  # dense: one network
    # a large sparse catalogue: each epoch is long, so one network gets the whole budget
    assert SASRecConfig().resolve(50_000, np.full(20_000, 9), 45 * 60).members == 1
    assert SASRecConfig(members=2).resolve(3400, np.full(6040, 200)).members == 2  # the user's choice stands


def test_an_ensemble_scores_the_mean_of_its_members_as_one_product():
    seqs = successor_sequences(80)
    est = SASRec(**dict(TINY, epochs=3, members=3)).fit(seqs, N_ITEMS, progress=False)
    assert isinstance(est.module_, SASRecEnsemble) and len(est.module_.members) == 3
    histories = [s[:-1] for s in seqs[:10]]
    scores = est.score(histories)
    with torch.no_grad():
        seq = est._sequences(histories)
        each = [m.scores(seq).numpy() for m in est.module_.members]
    np.testing.assert_allclose(scores[:, 1:], np.mean(each, axis=0)[:, 1:], rtol=1e-5, atol=1e-5)
    assert not np.allclose(each[0][:, 1:], each[1][:, 1:])  # members start apart and stay apart
    # what an ANN index or the quantised scan serves: user vectors against the item table, the same scores
    vectors = est.user_vectors(histories) @ est.item_table().T
    np.testing.assert_allclose(vectors[:, 1:], scores[:, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce", "bce"])
def test_a_sampled_loss_reads_its_rows_sparsely_and_is_the_loss_over_the_whole_table(loss):
    """A sampled loss looks its targets' and negatives' rows up once (renumbered), which gives the item table a
    sparse gradient: the loss is the one over the whole table, and a step moves only the rows the batch read."""
    seqs = successor_sequences(32)
    cfg = SASRecConfig(**dict(TINY, loss=loss, n_negatives=6, dropout=0.0, bf16=False)).resolve(N_ITEMS, [10])
    torch.manual_seed(0)
    module = SASRecModule(N_ITEMS, cfg)
    data = SASRecTrainingData(seqs, cfg)
    batch = tuple(torch.stack(t) for t in zip(*(data[i] for i in range(8)), strict=True))
    inputs, targets = sasrec_trim(*batch)
    keep = targets != 0
    h, t = module(inputs)[keep], targets[keep]
    neg = _losses.uniform_negatives(len(t) if loss == "bce" else 6, N_ITEMS, "cpu", torch.Generator().manual_seed(0))
    w = module.item_emb.weight
    whole = {"sampled_softmax": lambda: _losses.sampled_softmax(h, t, w, neg),
             "gbce": lambda: _losses.gbce(h, t, w, neg, N_ITEMS, cfg.gbce_t),
             "bce": lambda: _losses.bce_one_negative(h, t, w, neg)}[loss]()
    got = sasrec_loss(module, batch, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, whole * sasrec_token_weight(len(t), len(inputs), cfg))
    opt = sasrec_optimizer(module, cfg)
    before = w.detach().clone()
    sasrec_train_step(module, batch, cfg, opt, generator=torch.Generator().manual_seed(0))
    assert w.grad.is_sparse
    moved = set(torch.nonzero((w != before).any(1)).flatten().tolist())
    read = set(inputs.flatten().tolist()) | set(t.tolist()) | set(neg.tolist())
    assert set(t.tolist()) <= moved <= read - {0}


@pytest.mark.parametrize("clip", [5.0, 0.01])
@pytest.mark.parametrize("loss", ["auto", "sampled_softmax"])
def test_each_member_learns_as_it_would_alone(clip, loss, monkeypatch):
    """The ensemble's loss is the sum of its members' and each is clipped on its own: member 0 takes exactly
    the steps a lone SASRec with its weights takes, also when the clip binds (0.01: far below these gradients'
    norms, so a clip over the whole ensemble would scale member 0 by member 1's gradients too)."""
    import aimass.zoo.sasrec as sasrec

    monkeypatch.setattr(sasrec, "CLIP_NORM", clip)
    seqs = successor_sequences(64)
    cfg = SASRecConfig(**dict(TINY, dropout=0.0, bf16=False, members=2, loss=loss, n_negatives=8)
                       ).resolve(N_ITEMS, [len(x) for x in seqs])
    torch.manual_seed(0)
    ensemble = SASRecEnsemble(N_ITEMS, cfg)
    alone = SASRecModule(N_ITEMS, cfg.model_copy(update={"members": 1}))
    alone.load_state_dict(ensemble.members[0].state_dict())
    data = SASRecTrainingData(seqs, cfg)
    batch = tuple(torch.stack(t) for t in zip(*(data[i] for i in range(32)), strict=True))
    opt_e, opt_a = sasrec_optimizer(ensemble, cfg), sasrec_optimizer(alone, cfg)
    for step in range(3):
        # a sampled loss: member 0 draws first, so it gets the negatives the lone network gets
        loss_e = sasrec_train_step(ensemble, batch, cfg, opt_e, step, generator=torch.Generator().manual_seed(step))
        loss_a = sasrec_train_step(alone, batch, cfg, opt_a, step, generator=torch.Generator().manual_seed(step))
    for k, v in alone.state_dict().items():
        torch.testing.assert_close(ensemble.members[0].state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert loss_e != pytest.approx(loss_a)  # the reported loss is the members' mean, and member 1 differs

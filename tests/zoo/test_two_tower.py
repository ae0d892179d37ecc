"""Two-tower retrieval on synthetic data made here (fast: a few seconds on 2 CPU cores)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from aimass.evaluation import rank_metrics
from aimass.zoo.two_tower import TwoTower, TwoTowerConfig, TwoTowerModule, TwoTowerTrainingData

N_ITEMS = 40
FAST = dict(dim=32, epochs=8, batch_size=64, lr=5e-3, warmup_steps=0, patience=None, max_len=8)


def cyclic(n_users: int, seed: int, n_items: int = N_ITEMS, length: int = 12) -> list[np.ndarray]:
    """Next item = last item + 1 (wrapping around): learnable from the most recent item alone."""
    starts = np.random.default_rng(seed).integers(0, n_items, n_users)
    return [(s + np.arange(length)) % n_items + 1 for s in starts]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread; on a busy 2-core machine two threads ran 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    train = cyclic(200, seed=0)
    held = cyclic(100, seed=1, length=9)
    return train, [s[:-1] for s in held], np.array([s[-1] for s in held])


@pytest.fixture(scope="module")
def fitted(data):
    train, vh, vt = data
    return TwoTower(**FAST).fit(train, N_ITEMS, valid=(vh, vt), progress=False)


def test_learns_a_sequential_pattern(fitted, data):
    _, vh, vt = data
    scores = fitted.score(vh)
    assert scores.shape == (len(vh), N_ITEMS + 1) and scores.dtype == np.float32
    assert np.isneginf(scores[:, 0]).all()
    ndcg = rank_metrics(scores, vt, vh)["ndcg@10"]
    assert ndcg > 0.8, ndcg  # random ranking gives ~0.1 with 40 items
    assert fitted.config_.loss == "ce"  # "auto" on a small catalogue
    assert 1 <= fitted.best_epoch_ <= FAST["epochs"] and len(fitted.history_) == FAST["epochs"]


@pytest.mark.parametrize("loss", ["bpr", "sampled_softmax"])
def test_sampled_losses_learn(data, loss):
    train, vh, vt = data
    est = TwoTower(**{**FAST, "loss": loss, "n_negatives": 16}).fit(train, N_ITEMS, progress=False)
    assert rank_metrics(est.score(vh), vt, vh)["ndcg@10"] > 0.5


def test_a_sampled_step_moves_only_the_rows_it_read_and_its_optimizer_state_round_trips(tmp_path):
    """Sampled losses train the item table with sparse gradients: a step moves the rows of the batch's histories,
    targets and negatives and no other, and the optimizer's state survives a checkpoint (torch.save, then
    torch.load with weights_only, as the training loop does)."""
    from aimass.zoo import _losses

    cfg = TwoTowerConfig(**{**FAST, "loss": "sampled_softmax", "n_negatives": 8}).resolve(N_ITEMS, [12])
    torch.manual_seed(0)
    module = TwoTower.build_module(cfg, N_ITEMS)
    opt = TwoTower.make_optimizer(module, cfg)
    batch = (torch.tensor([[0, 1, 2], [0, 3, 4]]), torch.tensor([5, 6]))
    before = module.item_emb.weight.detach().clone()
    TwoTower.train_step(module, batch, cfg, opt, generator=torch.Generator().manual_seed(0))
    negatives = _losses.uniform_negatives(8, N_ITEMS, "cpu", torch.Generator().manual_seed(0)).tolist()
    moved = set(torch.nonzero((module.item_emb.weight != before).any(1)).flatten().tolist())
    assert module.item_emb.weight.grad.is_sparse
    assert {1, 2, 3, 4, 5, 6} <= moved <= {1, 2, 3, 4, 5, 6, *negatives} and len(moved) < N_ITEMS // 2
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    twin = TwoTower.build_module(cfg, N_ITEMS)
    twin.load_state_dict(module.state_dict())
    twin_opt = TwoTower.make_optimizer(twin, cfg)
    twin_opt.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    for m, o in ((module, opt), (twin, twin_opt)):  # the same second step from the same state
        torch.manual_seed(1)
        TwoTower.train_step(m, batch, cfg, o, step=1, generator=torch.Generator().manual_seed(1))
    for (name, a), b in zip(module.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_an_optimizer_state_of_the_single_adamw_of_before_still_loads():
    cfg = TwoTowerConfig(**FAST).resolve(N_ITEMS, [12])  # ce: every table dense
    module = TwoTower.build_module(cfg, N_ITEMS)
    old = TwoTower.make_optimizer(module, cfg).dense  # with every table dense, what make_optimizer returned before
    TwoTower.make_optimizer(module, cfg).load_state_dict(old.state_dict())
    sampled = cfg.model_copy(update={"loss": "sampled_softmax"})
    with pytest.raises(ValueError, match="dense item table"):
        TwoTower.make_optimizer(TwoTower.build_module(sampled, N_ITEMS), sampled).load_state_dict(old.state_dict())


def test_save_load_round_trip(fitted, data, tmp_path):
    _, vh, _ = data
    fitted.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "weights.safetensors"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["family"] == TwoTower.family == "two-tower"  # aimass.zoo.load_estimator dispatches on it
    loaded = TwoTower.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score(vh), fitted.score(vh))
    assert loaded.config_ == fitted.config_ and loaded.best_epoch_ == fitted.best_epoch_


def test_seeded_determinism(data):
    train, vh, _ = data
    params = {**FAST, "epochs": 2, "seed": 3}
    a = TwoTower(**params).fit(train, N_ITEMS, progress=False).score(vh)
    b = TwoTower(**params).fit(train, N_ITEMS, progress=False).score(vh)
    c = TwoTower(**{**params, "seed": 4}).fit(train, N_ITEMS, progress=False).score(vh)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batch_invariance(fitted, data):
    _, vh, _ = data
    histories = [*vh[:7], np.array([], dtype=np.int64), np.arange(1, 30)]  # empty and over-long histories
    whole = fitted.score(histories, batch_size=256)
    assert np.isfinite(whole[:, 1:]).all()
    # same padded shape for every row; BLAS may pick another kernel for another batch size (1e-6 noise)
    alone = np.concatenate([fitted.score([h], batch_size=1) for h in histories])
    np.testing.assert_allclose(alone[:, 1:], whole[:, 1:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(fitted.score(histories, batch_size=3)[:, 1:], whole[:, 1:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(fitted.score(histories[::-1])[::-1], whole, atol=1e-5, rtol=0)  # row order


def test_config_validation():
    with pytest.raises(ValidationError):
        TwoTowerConfig(lr=-1.0)
    with pytest.raises(ValidationError):
        TwoTower(lr=-1.0).fit(cyclic(5, 0), N_ITEMS, progress=False)
    with pytest.raises(ValidationError, match="no_such_param"):
        TwoTower(no_such_param=1).fit(cyclic(5, 0), N_ITEMS, progress=False)
    assert TwoTower(lr=-1.0).get_params() == {"lr": -1.0}  # __init__ only stores
    cfg = TwoTowerConfig().resolve(N_ITEMS, [12] * 10)
    assert cfg.max_len is not None and cfg.loss == "ce" and cfg.resolve(N_ITEMS, [12]) == cfg
    assert TwoTowerConfig().resolve(10**6, [12]).loss == "sampled_softmax"
    with pytest.raises(ValueError, match="item_features"):
        TwoTowerModule(N_ITEMS, cfg, item_features=np.zeros((N_ITEMS, 4)))


def test_item_features_give_cold_items_a_vector(data, tmp_path):
    train, vh, _ = data
    cold = N_ITEMS  # never in a training sequence
    train = [s[s != cold] for s in train]
    feats = np.random.default_rng(0).normal(size=(N_ITEMS + 1, 16)).astype(np.float32)
    est = TwoTower(**{**FAST, "epochs": 3}).fit(train, N_ITEMS, item_features=feats, progress=False)
    scores = est.score(vh)
    assert np.isfinite(scores[:, 1:]).all()
    assert scores[:, cold].std() > 1e-4  # depends on the user, not a constant
    module = est.module_
    with torch.no_grad():
        content = module.feat_proj(module.item_features[cold])
    assert content.abs().sum() > 0  # the cold item's vector carries its features' projection
    est.save(tmp_path / "f")  # the features travel inside the safetensors file
    np.testing.assert_array_equal(TwoTower.load(tmp_path / "f").score(vh), scores)


def test_uniform_hooks_drive_training(data):
    """What a distributed loop does: hooks only, a DDP-like wrapper, then adopt()."""
    train, vh, vt = data

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel (.module + forward)
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    est = TwoTower(**FAST)
    cfg = est.resolve_config(N_ITEMS, [len(s) for s in train])
    torch.manual_seed(0)
    module = Wrapper(est.build_module(cfg, N_ITEMS))
    ds = est.training_data(train, cfg)
    assert isinstance(ds, TwoTowerTrainingData) and len(ds) == 200 * 11  # 11 targets per 12-item user
    opt = est.make_optimizer(module, cfg)
    step = 0
    for epoch in range(cfg.epochs):
        ds.set_epoch(epoch)
        for batch in torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True):
            loss = est.train_step(module, batch, cfg, opt, step, step / 200)
            assert np.isfinite(loss)
            step += 1
    assert est.adopt(module, cfg, N_ITEMS) is est and est.module_ is module.module
    scores = est.score_module(module, vh, cfg)
    np.testing.assert_array_equal(scores, est.score(vh))
    assert rank_metrics(scores, vt, vh)["ndcg@10"] > 0.8


def test_training_data_is_fixed_size_and_seeded():
    seqs = [np.arange(1, 101), np.array([5, 6]), np.array([7])]  # the 1-item user has no target
    cfg = TwoTowerConfig(positions_per_user=10, max_len=6).resolve(N_ITEMS * 3, [100, 2, 1])
    ds = TwoTowerTrainingData(seqs, cfg)
    assert len(ds) == 11
    hist, target = ds[0]
    assert hist.shape == (6,) and hist.dtype == torch.int64 and target.shape == ()
    targets = [int(ds[i][1]) for i in range(10)]
    assert len(set(targets)) == 10  # one per stratum: distinct positions
    ds.set_epoch(1)
    assert [int(ds[i][1]) for i in range(10)] != targets
    ds.set_epoch(0)
    assert [int(ds[i][1]) for i in range(10)] == targets
    hist, target = ds[10]
    assert hist.tolist() == [0, 0, 0, 0, 0, 5] and int(target) == 6


def test_mean_pool_has_no_unused_parameters(data):
    train, vh, _ = data
    est = TwoTower(**{**FAST, "epochs": 1, "pool": "mean"}).fit(train, N_ITEMS, progress=False)
    assert np.isfinite(est.score(vh)[:, 1:]).all()
    assert not any("q" in name for name, _ in est.module_.named_parameters())  # DDP needs every grad

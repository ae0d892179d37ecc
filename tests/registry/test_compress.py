"""Compression of registered versions: every method makes a registered child version of a real trained
SASRec, with metrics, lineage and one loader; bad requests change nothing."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import aimass
from aimass import models, registry
from aimass.errors import InvalidInputError
from aimass.registry import _codecs, _compress
from aimass.settings import Settings
from tests.registry._state import snapshot as _snapshot

pytestmark = pytest.mark.integration

FAST = {"latency_n": 10}
OPTIONS = {
    "int8": {},
    "fp16": {},
    "bf16": {},
    "prune": {"kind": "unstructured", "sparsity": 0.5, "steps": 8},
    "prune-structured": {"kind": "structured", "sparsity": 0.5, "steps": 8},
    "distill": {"dim": 8, "steps": 8},
    "onnx": {},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    s = Settings(home=tmp_path_factory.mktemp("compress") / "home")
    cfg = aimass.datasets.DemoConfig(users=60, tracks=120, seed=2)
    inter, items = aimass.datasets.generate_demo(s.home.parent / "demo", cfg)
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    params = {"dim": 16, "n_blocks": 1, "n_heads": 1, "max_len": 20, "epochs": 2, "batch_size": 32}
    sas = aimass.train("sasrec", "demo", params, workers=0, progress=False, settings=s)
    pop = aimass.train("popularity", "demo", workers=0, progress=False, settings=s)
    registry.register(sas.run_id, "rec", settings=s)
    registry.register(pop.run_id, "pop", settings=s)
    yield s
    import ray

    ray.shutdown()


@pytest.mark.parametrize("label", list(OPTIONS))
def test_each_method_registers_a_child_that_loads_and_ranks(env, label):
    s = env
    method = label.split("-")[0]
    v = models.compress("rec", 1, method, settings=s, **FAST, **OPTIONS[label])
    assert (v.name, v.parent_version, v.method) == ("rec", 1, method)
    assert (v.family, v.dataset) == ("sasrec", "demo@v1")
    assert v.version > 1 and v.dataset_hash == registry.get("rec/1", settings=s).dataset_hash
    for k in ("test_ndcg_at_10", "test_recall_at_10", "size_bytes", "size_ratio", "latency_b1_p50_ms",
              "latency_b1_p99_ms", "latency_b64_p50_ms", "latency_b64_p99_ms"):
        assert np.isfinite(v.metrics[k]), k
    run = registry._client(s).get_run(v.run_id)
    assert run.data.tags["aimass.parent_model"] == "rec/1" and run.data.tags["aimass.method"] == method
    assert run.data.tags["aimass.dataset_ref"] == "demo@v1"
    for k in ("delta_test_ndcg_at_10_rel", "speedup_b1", "size_ratio", "parent_test_ndcg_at_10"):
        assert k in run.data.metrics, k

    scorer = registry.load(v.ref, settings=s)  # the one loader, through the compressed pyfunc
    assert scorer.info.method == method and scorer.estimator.method == method
    hist = [int(x) for x in scorer.item_ids[:5]]
    out = scorer.recommend(pd.DataFrame({"history": [hist, []], "k": [5, 3]}))
    assert [len(x) for x in out["items"]] == [5, 3] and not set(out["items"][0]) & set(hist)
    scores = scorer.estimator.score([np.arange(1, 6), np.arange(0)])
    assert scores.dtype == np.float32 and scores.shape == (2, len(scorer.item_ids) + 1)
    assert np.isneginf(scores[:, 0]).all() and np.isfinite(scores[:, 1:]).all()
    if method == "int8":
        assert v.metrics["size_ratio"] >= 3.0  # int8 folder vs the parent's fp32 folder
        # its quality as served (a user at a time: int8's activations take one scale a batch), not as 256 at once
        from aimass.evaluation import evaluate, make_splits

        splits = make_splits(aimass.datasets.load("demo@v1", settings=s).interactions)
        served = evaluate(lambda h: scorer.estimator.score(h, batch_size=1), list(splits.test_histories),
                          np.asarray(splits.test_targets), splits.n_items, ks=(10,))
        assert v.metrics["test_ndcg_at_10"] == pytest.approx(served["ndcg@10"], abs=1e-9)
    if method in ("fp16", "bf16"):
        assert v.metrics["size_ratio"] > 1.6
    if method == "onnx":
        assert run.data.metrics["onnx_top10_same_set"] == 1.0
    if method == "distill":  # validated every epoch; the version keeps its best epoch, the curve is charted
        curve = registry._client(s).get_metric_history(v.run_id, "distill_val_ndcg_at_10")
        brief = json.loads(run.data.tags["aimass.compress_meta"])["distill"]
        assert len(curve) >= 2 and [m.step for m in curve] == sorted(m.step for m in curve)
        best = max(curve, key=lambda m: m.value)
        assert brief["best_epoch"] == 1 + [m.step for m in curve].index(best.step) and "history" not in brief
    if method in ("int8", "fp16", "onnx"):
        assert run.data.metrics["top10_overlap_vs_parent"] >= 0.9


@pytest.mark.parametrize("family,method,options", [
    ("ease", "int8", {}), ("ease", "fp16", {}), ("ease", "prune", {"sparsity": 0.9}), ("mult-vae", "int8", {}),
    ("mult-vae", "bf16", {})])
def test_the_autoencoders_compress_like_the_others(env, family, method, options):
    """EASE's one item-item matrix (int8 rows, fp16, or a sparse EASE) and Mult-VAE's layers: a registered
    child that loads through the one loader, ranks, and keeps the parent's top 10 where the method is exact
    enough to."""
    s = env
    name = f"ae-{family}"
    if not registry._client(s).search_registered_models(f"name = '{name}'"):
        params = {"hidden": 32, "latent": 8, "epochs": 2} if family == "mult-vae" else {}
        registry.register(aimass.train(family, "demo", params, workers=0, progress=False, settings=s).run_id, name,
                          settings=s)
    v = models.compress(name, 1, method, settings=s, **FAST, **options)
    assert (v.parent_version, v.method, v.family) == (1, method, family)
    scorer = registry.load(v.ref, settings=s)
    hist = [int(x) for x in scorer.item_ids[:5]]
    out = scorer.recommend(pd.DataFrame({"history": [hist, []], "k": [5, 3]}))
    assert [len(x) for x in out["items"]] == [5, 3] and not set(out["items"][0]) & set(hist)
    if method == "int8":
        assert v.metrics["size_ratio"] >= 3.0
    if method == "prune":  # 10% of the weights kept as CSR (8 bytes each) instead of all of them in 4
        assert v.metrics["size_ratio"] > 1.5
    if (family, method) != ("ease", "prune"):
        assert v.metrics["top10_overlap_vs_parent"] >= 0.9


def test_a_parent_tested_on_a_sample_is_compressed_and_measured_on_that_sample(env):
    """A large catalogue's job tests a seeded sample (max_test_users): compression measures parent and child on
    the same sample, not on every test user (hours, twice), and the parent's figure is the one it recorded."""
    s = env
    params = {"dim": 16, "n_blocks": 1, "n_heads": 1, "max_len": 20, "epochs": 2, "batch_size": 32}
    r = aimass.train("sasrec", "demo", params, workers=0, max_test_users=12, progress=False, settings=s)
    parent = registry.register(r.run_id, "sampled", settings=s)
    v = models.compress("sampled", parent.version, "int8", settings=s, **FAST)
    assert v.metrics["test_users"] == v.metrics["parent_test_users"] == parent.metrics["test_users"] == 12
    assert v.metrics["parent_test_ndcg_at_10"] == pytest.approx(parent.metrics["test_ndcg_at_10"])


def test_bad_requests_raise_before_anything_is_written(env):
    s = env
    before = _snapshot(s)
    runs_before = len(registry._client(s).search_runs([registry._client(s).get_experiment_by_name("aimass")
                                                       .experiment_id]))
    for call, match in [
        (lambda: models.compress("rec", 1, "zip", settings=s), "unknown compression method 'zip'"),
        (lambda: models.compress("pop", 1, "int8", settings=s),
         "'int8' does not apply to family 'popularity'"),
        (lambda: models.compress("rec", 1, "prune", sparsity=1.5, settings=s), "sparsity must be in"),
        (lambda: models.compress("rec", 1, "prune", kind="diagonal", settings=s), "kind='diagonal'"),
        (lambda: models.compress("rec", 1, "int8", colour="red", settings=s), "unknown option 'colour'"),
        (lambda: models.compress("rec", 1, "distill", n_blocks=1, dim=16, settings=s), "must be smaller"),
        (lambda: models.compress("rec", 1, "distill", dim=12, ffn_mult=40, settings=s),
         r"ffn_mult=40\) has [\d,]+ parameters, the teacher [\d,]+: it must be smaller"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            call()
    with pytest.raises(InvalidInputError, match="'distill' does not apply to family 'two-tower'"):
        _compress.check("distill", "two-tower", {})
    with pytest.raises(InvalidInputError, match="does not apply to family 'itemknn'"):
        _compress.check("onnx", "itemknn", {})
    with pytest.raises(InvalidInputError, match=r"'bf16' does not apply to family 'ease' \(its methods: int8"):
        _compress.check("bf16", "ease", {})
    with pytest.raises(InvalidInputError, match="unknown option 'kind' for method 'prune'"):
        _compress.check("prune", "ease", {"kind": "structured"})
    with pytest.raises(InvalidInputError, match="feed-forward units, which mult-vae has none of"):
        _compress.check("prune", "mult-vae", {"kind": "structured"})
    # the version itself, checked before the work too (the CLI printed its stage line, then this refusal)
    child = registry.get("rec/1", settings=s).model_copy(update={"method": "int8"})
    with pytest.raises(InvalidInputError, match=r"rec/1 is already compressed \(int8\)"):
        registry.check_compression(child.family, "prune", parent=child)
    assert _snapshot(s) == before
    assert len(registry._client(s).search_runs([registry._client(s).get_experiment_by_name("aimass")
                                                .experiment_id])) == runs_before


@pytest.mark.parametrize("option,value", [
    ("lr", float("nan")), ("lr", float("inf")), ("time_budget_s", float("-inf")), ("sparsity", "nan"),
    ("steps", True), ("latency_n", False), ("steps", 2.9), ("seed", 0.5), ("steps", float("inf")),
])
def test_compress_options_that_are_not_finite_or_not_whole_are_refused(option, value):
    """NaN and infinity pass float() and every `<= 0` check; int(2.9) and int(True) pass as 2 and 1: each is
    refused before any work, not run as a number the user did not give."""
    with pytest.raises(InvalidInputError, match=rf"option {option}=.* must be a (whole|finite) number"):
        _compress.check("prune", "sasrec", {option: value})


def test_compress_refuses_a_negative_seed_and_takes_seed_zero():
    with pytest.raises(InvalidInputError, match="option seed=-1 must be 0 or more"):
        _compress.check("int8", "sasrec", {"seed": -1})
    assert _compress.check("int8", "sasrec", {"seed": 0}) == {"seed": 0}


def test_compress_whole_floats_for_int_options_are_accepted_as_ints():
    out = _compress.check("prune", "sasrec", {"steps": 3.0, "latency_n": "5", "sparsity": 0.25, "lr": 1})
    assert out == {"steps": 3, "latency_n": 5, "sparsity": 0.25, "lr": 1.0}
    assert type(out["steps"]) is int and type(out["lr"]) is float


def test_inference_restructuring_matches_the_family_forward():
    """Trimmed padding + last-query-only last block give the family's own scores (fp32, no compression),
    for empty, short, full and over-long histories, in any batch."""
    from aimass.zoo.sasrec import SASRecConfig, SASRecModule

    torch.manual_seed(0)
    cfg = SASRecConfig(dim=16, n_blocks=2, n_heads=2, max_len=12, dropout=0.0).resolve(50, [10])
    module = SASRecModule(50, cfg).eval()
    infer = _codecs.SASRecInfer(module).eval()
    rng = np.random.default_rng(0)
    hist = [rng.integers(1, 51, n) for n in (0, 1, 5, 12, 30)]
    with torch.no_grad():
        ref = module.scores(torch.from_numpy(np.stack([_codecs._left_pad(h, 12) for h in hist]))).numpy()
        for n in (12, 30):  # the batch's longest history, capped at max_len, sets the width
            got = infer(torch.from_numpy(np.stack([_codecs._left_pad(h, min(n, 12)) for h in hist]))).numpy()
            np.testing.assert_allclose(got[:, 1:], ref[:, 1:], rtol=1e-4, atol=1e-5)
        one = infer(torch.from_numpy(_codecs._left_pad(hist[2], 5)[None])).numpy()  # batch 1, no padding
        np.testing.assert_allclose(one[0, 1:], ref[2, 1:], rtol=1e-4, atol=1e-5)


def test_int8_codec_restores_the_quantised_weights_exactly():
    from aimass.zoo.sasrec import SASRecConfig, SASRecModule

    torch.manual_seed(0)
    cfg = SASRecConfig(dim=16, n_blocks=1, max_len=8).resolve(30, [5])
    module = SASRecModule(30, cfg).eval()
    for per_channel in (False, True):
        blobs, _ = _codecs.encode_int8(module, per_channel=per_channel)
        assert set(blobs) == {"int8", "fp32"} and blobs["int8"].dtype == torch.int8
        state, qlin, qrows = _codecs.decode_int8(SASRecModule(30, cfg), blobs, per_channel)
        q, scale = qrows["item_emb.weight"]
        w = module.item_emb.weight.detach()
        assert (state["item_emb.weight"] - w).abs().max() <= scale.max() / 2 + 1e-6  # half a step per row
        assert set(qlin) == {"blocks.0.qkv.weight", "blocks.0.out.weight", "blocks.0.ffn.0.weight",
                             "blocks.0.ffn.3.weight"}
        torch.testing.assert_close(state["blocks.0.ln1.weight"], module.blocks[0].ln1.weight.detach())


def test_narrower_student_starts_from_the_teachers_best_low_rank_item_table():
    """A student of smaller dimension starts from the teacher's item table on its top right singular vectors:
    its item-item dot products are as close to the teacher's as any table of that width can be."""
    from types import SimpleNamespace

    from aimass.zoo.sasrec import SASRec, SASRecConfig, SASRecModule

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 41, 12) for _ in range(20)]
    cfg = SASRecConfig(dim=16, n_blocks=1, max_len=10, bf16=False).resolve(40, [len(x) for x in seqs])
    teacher = SASRec().adopt(SASRecModule(40, cfg), cfg, 40)
    splits = SimpleNamespace(train_sequences=seqs, val_histories=[], val_targets=np.array([], dtype=np.int64))
    student, scfg, details = _compress._distill(teacher, splits,
                                                {"dim": 4, "steps": 0}, False)
    assert (scfg.dim, details["init_from_teacher"], details["steps"]) == (4, "projected", 0)
    assert scfg.ffn_mult == 2 * cfg.ffn_mult  # by default twice as wide where the student stays smaller
    t = teacher.module_.item_emb.weight[1:].detach()

    def gram_error(w: torch.Tensor) -> float:
        return float(torch.linalg.matrix_norm(t @ t.T - w[1:] @ w[1:].T))

    got = gram_error(student.item_emb.weight.detach())
    assert got == pytest.approx(float((torch.linalg.svdvals(t)[4:] ** 4).sum().sqrt()), rel=1e-4)  # Eckart-Young
    random_basis = torch.linalg.qr(torch.randn(16, 4)).Q
    assert got < gram_error(teacher.module_.item_emb.weight.detach() @ random_basis)
    assert float(student.item_emb.weight[0].abs().max()) == 0.0  # padding row stays zero


def test_distillation_keeps_its_best_validation_epoch():
    from types import SimpleNamespace

    from aimass.evaluation import evaluate
    from aimass.zoo.sasrec import SASRec, SASRecConfig, SASRecModule
    from aimass.zoo.trainer import STOP_METRIC

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    seqs = [np.concatenate([np.arange(s, s + 6) % 30 + 1, rng.integers(1, 31, 4)]) for s in rng.integers(0, 30, 40)]
    hist, targets = [x[:-1] for x in seqs[:20]], np.array([x[-1] for x in seqs[:20]])
    # a teacher of a sampled loss (its item table sparse): the student still learns the whole catalogue's loss
    cfg = SASRecConfig(dim=16, n_blocks=1, max_len=12, bf16=False, batch_size=8, loss="sampled_softmax",
                       n_negatives=8).resolve(30, [len(x) for x in seqs])
    teacher = SASRec().adopt(SASRecModule(30, cfg), cfg, 30)
    splits = SimpleNamespace(train_sequences=seqs, val_histories=hist, val_targets=targets)
    # a learning rate far too high: the validation curve goes up and down, so the last epoch is not the best
    student, scfg, details = _compress._distill(teacher, splits, {"dim": 8, "steps": 40, "lr": 1.0}, False)
    curve = [r[STOP_METRIC] for r in details["history"]]
    assert scfg.loss == "ce" and not student.item_emb.sparse
    assert len(curve) == 8 and details["best_epoch"] == 1 + curve.index(max(curve))
    assert curve.index(max(curve)) != len(curve) - 1  # the test means something only if the last is worse
    got = evaluate(lambda h: SASRec.score_module(student, h, scfg), hist, targets, 30)["ndcg@10"]
    assert got == pytest.approx(max(curve), abs=1e-9)


@pytest.mark.parametrize("ffn_mult", [1, 3])
def test_student_block_starts_as_the_teachers_block_whatever_its_ffn_width(ffn_mult):
    from aimass.zoo.sasrec import SASRecConfig, SASRecModule

    torch.manual_seed(0)
    tcfg = SASRecConfig(dim=16, n_blocks=2, max_len=10, bf16=False, dropout=0.0).resolve(40, [12])
    teacher = SASRecModule(40, tcfg).eval()
    student = SASRecModule(40, tcfg.model_copy(update={"n_blocks": 1, "ffn_mult": ffn_mult})).eval()
    with torch.no_grad():
        _compress._copy_block(teacher.blocks[1], student.blocks[0])
    x, mask = torch.randn(3, 10, 16), torch.ones(10, 10, dtype=torch.bool).tril()
    torch.testing.assert_close(student.blocks[0](x, mask), teacher.blocks[1](x, mask))
    assert student.blocks[0].ffn[0].weight.shape[0] == 16 * ffn_mult


@pytest.mark.parametrize("method", ["int8", "bf16", "prune", "onnx", "distill"])
def test_an_ensemble_compresses_and_its_scorer_ranks_like_it(method, tmp_path):
    """A budgeted SASRec on sparse data is an ensemble: every method applies to it. The compressed scorer
    scores through the members' mean (not the single-network restructuring); distillation teaches one network
    the ensemble's mean scores."""
    from types import SimpleNamespace

    from aimass.zoo.sasrec import SASRec, SASRecEnsemble

    rng = np.random.default_rng(0)
    seqs = [np.arange(s, s + 8) % 30 + 1 for s in rng.integers(0, 30, 60)]
    est = SASRec(dim=16, n_blocks=2, max_len=10, epochs=3, batch_size=16, members=2, bf16=False).fit(seqs, 30)
    assert isinstance(est.module_, SASRecEnsemble)
    hist, targets = [x[:-1] for x in seqs[:20]], np.array([x[-1] for x in seqs[:20]])
    splits = SimpleNamespace(train_sequences=seqs, val_histories=hist, val_targets=targets)
    opts = {"steps": 4} if method in ("prune", "distill") else {}
    meta = _compress.build(method, est, "sasrec", splits, tmp_path, opts)
    scorer = _codecs.load_compressed(tmp_path)
    got, ref = scorer.score(hist), est.score(hist)
    assert got.shape == ref.shape and np.isneginf(got[:, 0]).all()
    if method == "distill":
        assert meta["config"]["members"] == 1 and meta["distill"]["init_from_teacher"] == "blocks"
    else:
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in
                           zip(_codecs.top10(got, hist), _codecs.top10(ref, hist), strict=True)])
        assert overlap >= (0.99 if method == "onnx" else 0.7), overlap
        # the members' mean, not one member: closer to the ensemble's scores than to its first member's
        with torch.no_grad():
            first = est.module_.members[0].scores(est._sequences(hist)).numpy()
        assert np.abs(got[:, 1:] - ref[:, 1:]).mean() < np.abs(got[:, 1:] - first[:, 1:]).mean()

"""The fused, chunked losses against their plain autograd definitions: value and both gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aimass.zoo import _losses


def _inputs(seed=0, n=37, n_items=50, dim=8, t_dim=12):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, dim, generator=g, requires_grad=True)
    w = torch.randn(n_items + 1, dim, generator=g, requires_grad=True)
    ht, wt = torch.randn(n, t_dim, generator=g) * 2, torch.randn(n_items + 1, t_dim, generator=g)
    t = torch.randint(1, n_items + 1, (n,), generator=g)
    return h, w, t, ht, wt


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


def test_chunked_ce_matches_cross_entropy():
    h, w, t, _, _ = _inputs()
    fused = _losses.full_softmax_ce(h, t, w, chunk=8)
    ref = F.cross_entropy(h @ w[1:].T, t - 1)
    assert torch.allclose(fused, ref, atol=1e-5)
    for a, b in zip(_grads(fused * 3, h, w), _grads(ref * 3, h, w), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("temperature,alpha", [(2.0, 0.7), (1.0, 1.0), (4.0, 0.0), (0.5, 0.3)])
def test_fused_distillation_matches_kl_div_plus_cross_entropy(temperature, alpha):
    h, w, t, ht, wt = _inputs(seed=int(temperature * 10 + alpha * 100))
    fused = _losses.distill_ce(h, t, w, ht, wt, temperature, alpha, chunk=8)
    z, zt = h @ w[1:].T, ht @ wt[1:].T
    kl = F.kl_div(torch.log_softmax(z / temperature, -1), torch.log_softmax(zt / temperature, -1),
                  log_target=True, reduction="batchmean") * temperature ** 2
    ref = alpha * kl + (1 - alpha) * F.cross_entropy(z, t - 1)
    assert torch.allclose(fused, ref, atol=1e-4), (fused, ref)
    for a, b in zip(_grads(fused * 2, h, w), _grads(ref * 2, h, w), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_fused_distillation_is_zero_kl_when_student_is_teacher():
    h, w, t, _, _ = _inputs(t_dim=8)
    same = _losses.distill_ce(h, t, w, h.detach(), w.detach(), 2.0, 1.0, chunk=5)
    assert abs(float(same)) < 1e-5
    bf16 = _losses.distill_ce(h, t, w, h.detach() * 1.5, w.detach(), 2.0, 0.7, chunk=5,
                              matmul_dtype=torch.bfloat16)
    fp32 = _losses.distill_ce(h, t, w, h.detach() * 1.5, w.detach(), 2.0, 0.7, chunk=5)
    assert float(bf16) == pytest.approx(float(fp32), rel=0.05)
    # bf16 products, fp32 softmax and accumulators: the gradients point the same way
    for a, b in zip(_grads(bf16, h, w), _grads(fp32, h, w), strict=True):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_bce_adds_no_term_for_a_negative_drawn_equal_to_its_target():
    """The one uniform negative per position can be the target itself: its term would push down the very score
    the model got right, so it counts for nothing."""
    torch.manual_seed(0)
    h, w = torch.randn(6, 4), torch.randn(10, 4)
    t = torch.tensor([1, 2, 3, 4, 5, 6])
    pos = (h * w[t]).sum(-1)
    assert torch.allclose(_losses.bce_one_negative(h, t, w, t.clone()), F.softplus(-pos).mean())
    other = torch.tensor([2, 3, 4, 5, 6, 7])
    neg = (h * w[other]).sum(-1)
    assert torch.allclose(_losses.bce_one_negative(h, t, w, other), (F.softplus(-pos) + F.softplus(neg)).mean())


def test_the_distillation_chunk_keeps_its_tensors_bounded_on_any_catalogue():
    from aimass.zoo.sasrec import distill_chunk

    assert distill_chunk(3_417) == 512 and distill_chunk(1_000_001) * 1_000_001 <= 1 << 24
    assert distill_chunk(50_000_000) == 1


def test_the_ce_chunk_holds_at_most_2_26_logits_whatever_the_catalogue(monkeypatch):
    """1024 rows of a 1M-item catalogue were 4 GB of fp32 logits per chunk (twice over in bf16 mode)."""
    seen = []
    apply = _losses._ChunkedSoftmaxCE.apply

    def spy(h, w, t, chunk, matmul_dtype):
        seen.append((chunk, w.shape[0]))
        return apply(h, w, t, chunk, matmul_dtype)

    monkeypatch.setattr(_losses._ChunkedSoftmaxCE, "apply", spy)
    for n_items in (50, 65_536, 2**20):
        h, t = torch.randn(3, 4), torch.randint(1, n_items + 1, (3,))
        _losses.full_softmax_ce(h, t, torch.randn(n_items + 1, 4))
    assert seen == [(1024, 50), (1024, 65_536), (64, 2**20)]  # today's chunk up to 65k items
    assert all(chunk * n <= 2**26 for chunk, n in seen[1:])

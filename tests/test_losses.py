"""Losses against per-pair loops, hand-worked values, pytorch-metric-learning and autograd."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import losses as L

B, D = 40, 16


def _unit(x):
    return F.normalize(x, dim=1)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x1 = _unit(torch.randn(B, D, generator=g, dtype=torch.float64))
    x2 = _unit(torch.randn(B, D, generator=g, dtype=torch.float64))
    # make half of the positives close, so the double margin has active and inactive positives
    x2[::4] = _unit(x1[::4] + 0.2 * torch.randn(len(x1[::4]), D, generator=g, dtype=torch.float64))
    y = (torch.rand(B, generator=g) < 0.5).long()
    y[:2] = torch.tensor([0, 1])  # both kinds present
    return x1, x2, y


def _loop_pair_loss(x1, x2, y, term):
    """Reference: one pair at a time, d from the textbook norm formula."""
    out = []
    for i in range(len(x1)):
        d = torch.sqrt(((x1[i] - x2[i]) ** 2).sum())
        out.append(term(d, int(y[i])))
    return torch.stack(out)


def _single_term(margin):
    return lambda d, y: 0.5 * d**2 if y == 1 else 0.5 * torch.clamp(margin - d, min=0) ** 2


def _double_term(m1, m2):
    return lambda d, y: (0.5 * torch.clamp(d - m1, min=0) ** 2 if y == 1
                         else 0.5 * torch.clamp(m2 - d, min=0) ** 2)


def _values_and_grads(fn, *tensors):
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("kind", ["single", "double"])
def test_pair_losses_match_loop_values_and_gradients(batch, kind):
    x1, x2, y = batch
    if kind == "single":
        ours = lambda a, b: L.contrastive_loss(a, b, y, margin=1.2, reduction="none")  # noqa: E731
        ref = lambda a, b: _loop_pair_loss(a, b, y, _single_term(1.2))  # noqa: E731
    else:
        ours = lambda a, b: L.double_margin_contrastive_loss(a, b, y, 0.8, 1.2, reduction="none")  # noqa: E731
        ref = lambda a, b: _loop_pair_loss(a, b, y, _double_term(0.8, 1.2))  # noqa: E731
    value, grads = _values_and_grads(ours, x1, x2)
    ref_value, ref_grads = _values_and_grads(ref, x1, x2)
    assert value.shape == (B,)
    torch.testing.assert_close(value, ref_value)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg)
    # the batch really exercises both sides of every hinge
    assert (value > 0).any() and (value == 0).any()


@pytest.mark.parametrize("squared", [False, True])
def test_triplet_matches_loop_values_and_gradients(batch, squared):
    x1, x2, _ = batch
    g = torch.Generator().manual_seed(1)
    neg = _unit(torch.randn(B, D, generator=g, dtype=torch.float64))
    margin = 0.3

    def ref(a, p, n):
        out = []
        for i in range(len(a)):
            dp = torch.sqrt(((a[i] - p[i]) ** 2).sum())
            dn = torch.sqrt(((a[i] - n[i]) ** 2).sum())
            if squared:
                dp, dn = dp**2, dn**2
            out.append(torch.clamp(dp - dn + margin, min=0))
        return torch.stack(out)

    ours = lambda a, p, n: L.triplet_loss(a, p, n, margin=margin, reduction="none", squared=squared)  # noqa: E731
    value, grads = _values_and_grads(ours, x1, x2, neg)
    ref_value, ref_grads = _values_and_grads(ref, x1, x2, neg)
    torch.testing.assert_close(value, ref_value)
    for gr, rg in zip(grads, ref_grads):
        torch.testing.assert_close(gr, rg)
    assert (value > 0).any() and (value == 0).any()


def test_plain_triplet_agrees_with_torch_triplet_margin_loss(batch):
    x1, x2, _ = batch
    neg = x2.roll(1, dims=0)
    ours = L.triplet_loss(x1, x2, neg, margin=0.5)
    # torch adds eps=1e-6 inside the norm, hence the tolerance
    ref = F.triplet_margin_loss(x1, x2, neg, margin=0.5, p=2)
    assert abs(float(ours) - float(ref)) < 1e-5


def test_reductions(batch):
    x1, x2, y = batch
    for fn in (lambda r: L.contrastive_loss(x1, x2, y, reduction=r),
               lambda r: L.double_margin_contrastive_loss(x1, x2, y, reduction=r),
               lambda r: L.triplet_loss(x1, x2, x2.flip(0), reduction=r)):
        per_pair = fn("none")
        assert per_pair.shape == (B,)
        torch.testing.assert_close(fn("sum"), per_pair.sum())
        # mean over ALL pairs, including those contributing zero
        torch.testing.assert_close(fn("mean"), per_pair.sum() / B)


def test_hand_computed_values_on_1d_points():
    # 1-D points, so d is exactly |x2 - x1|: d = 0.5, 1.0 (positive), 0.5, 1.5 (negative)
    x1 = torch.zeros(4, 1, dtype=torch.float64)
    x2 = torch.tensor([[0.5], [1.0], [0.5], [1.5]], dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 0])
    single = L.contrastive_loss(x1, x2, y, margin=1.0, reduction="none")
    # positives: d^2/2 = 0.125, 0.5; negatives: max(0, 1 - d)^2/2 = 0.25/2 = 0.125, 0
    torch.testing.assert_close(single, torch.tensor([0.125, 0.5, 0.125, 0.0], dtype=torch.float64))
    double = L.double_margin_contrastive_loss(x1, x2, y, pos_margin=0.8, neg_margin=1.2, reduction="none")
    # positives: max(0, d - 0.8)^2/2 = 0, 0.2^2/2 = 0.02; negatives: max(0, 1.2 - d)^2/2 = 0.49/2, 0
    torch.testing.assert_close(double, torch.tensor([0.0, 0.02, 0.245, 0.0], dtype=torch.float64))
    # mean over all 4 pairs: (0.02 + 0.245) / 4
    assert math.isclose(float(L.double_margin_contrastive_loss(x1, x2, y)), 0.265 / 4)
    # triplet: anchor 0, positive at 0.5, negatives at 0.6 and 1.0, margin 0.4
    a = torch.zeros(2, 1, dtype=torch.float64)
    p = torch.full((2, 1), 0.5, dtype=torch.float64)
    n = torch.tensor([[0.6], [1.0]], dtype=torch.float64)
    # plain: max(0, 0.5 - 0.6 + 0.4) = 0.3, max(0, 0.5 - 1.0 + 0.4) = 0
    torch.testing.assert_close(L.triplet_loss(a, p, n, margin=0.4, reduction="none"),
                               torch.tensor([0.3, 0.0], dtype=torch.float64))
    # squared: max(0, 0.25 - 0.36 + 0.4) = 0.29, max(0, 0.25 - 1 + 0.4) = 0
    torch.testing.assert_close(L.triplet_loss(a, p, n, margin=0.4, reduction="none", squared=True),
                               torch.tensor([0.29, 0.0], dtype=torch.float64))


def test_pair_distance_is_exact_and_its_gradient_finite_at_zero():
    x1 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.3, 0.4]], requires_grad=True)
    x2 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    d = L.pair_distance(x1, x2)
    torch.testing.assert_close(d[1:], torch.tensor([1.0, 0.5]))
    assert float(d[0].detach()) < 1e-5
    d.sum().backward()
    assert torch.isfinite(x1.grad).all()


@pytest.mark.parametrize("make_loss", [
    lambda a, b, y: L.contrastive_loss(a, b, y, margin=1.0),
    lambda a, b, y: L.double_margin_contrastive_loss(a, b, y, 0.8, 1.2),
    lambda a, b, y: L.double_margin_contrastive_loss(a, b, y, 0.0, 1.2),
    lambda a, b, y: L.triplet_loss(a, b, b, margin=0.2),
    lambda a, b, y: L.triplet_loss(a, b, b, margin=0.2, squared=True),
])
def test_gradient_finite_for_identical_embeddings(make_loss):
    # identical images give d = 0 exactly, for a positive and a negative pair
    x = _unit(torch.randn(2, 8))
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    loss = make_loss(a, b, torch.tensor([1, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_label_dtypes_agree(batch):
    x1, x2, y = batch
    ref = L.double_margin_contrastive_loss(x1, x2, y)
    for cast in (y.bool(), y.float(), y.int(), y.to(torch.uint8)):
        torch.testing.assert_close(L.double_margin_contrastive_loss(x1, x2, cast), ref)


def test_double_margin_with_zero_positive_margin_is_single_margin(batch):
    x1, x2, y = batch
    torch.testing.assert_close(L.double_margin_contrastive_loss(x1, x2, y, 0.0, 1.1, reduction="none"),
                               L.contrastive_loss(x1, x2, y, margin=1.1, reduction="none"))


def test_split_pair_loss_parts(batch):
    x1, x2, y = batch
    per_pair = L.double_margin_contrastive_loss(x1, x2, y, reduction="none")
    parts = L.split_pair_loss(per_pair, y)
    torch.testing.assert_close(parts["pos_loss"] + parts["neg_loss"], parts["loss"])
    torch.testing.assert_close(parts["loss"], L.double_margin_contrastive_loss(x1, x2, y))
    pos = [float(t) for t, lab in zip(per_pair, y) if lab == 1]
    neg = [float(t) for t, lab in zip(per_pair, y) if lab == 0]
    assert math.isclose(float(parts["pos_loss"]), sum(pos) / B)
    assert math.isclose(float(parts["neg_loss"]), sum(neg) / B)
    assert math.isclose(float(parts["active_frac"]), sum(t > 0 for t in pos + neg) / B)
    assert math.isclose(float(parts["pos_active_frac"]), sum(t > 0 for t in pos) / len(pos))
    assert math.isclose(float(parts["neg_active_frac"]), sum(t > 0 for t in neg) / len(neg))


def test_split_pair_loss_hand_worked_and_missing_kind():
    per_pair = torch.tensor([0.5, 0.0, 0.3, 0.0])
    parts = L.split_pair_loss(per_pair, torch.tensor([1, 1, 0, 0]))
    assert math.isclose(float(parts["pos_loss"]), 0.5 / 4)
    assert math.isclose(float(parts["neg_loss"]), 0.3 / 4, rel_tol=1e-6)
    assert float(parts["pos_active_frac"]) == 0.5 and float(parts["neg_active_frac"]) == 0.5
    only_pos = L.split_pair_loss(per_pair, torch.ones(4))
    assert float(only_pos["neg_loss"]) == 0.0 and math.isnan(float(only_pos["neg_active_frac"]))


def test_split_pair_loss_keeps_graph(batch):
    x1, x2, y = batch
    x1 = x1.clone().requires_grad_(True)
    parts = L.split_pair_loss(L.contrastive_loss(x1, x2, y, reduction="none"), y)
    parts["loss"].backward()
    assert x1.grad is not None and torch.isfinite(x1.grad).all()


def test_double_margin_matches_pytorch_metric_learning(batch):
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.reducers import DoNothingReducer

    x1, x2, y = batch
    m1, m2 = 0.8, 1.2
    # PML's ContrastiveLoss is unsquared: pos relu(d - m1), neg relu(m2 - d). With no reduction its
    # per-pair terms t relate to ours by ours == t**2 / 2.
    pml = pml_losses.ContrastiveLoss(pos_margin=m1, neg_margin=m2,
                                     distance=LpDistance(normalize_embeddings=False),
                                     reducer=DoNothingReducer())
    idx = torch.arange(B)
    pos, neg = idx[y == 1], idx[y == 0]
    emb = torch.cat([x1, x2]).clone().requires_grad_(True)
    out = pml(emb, indices_tuple=(pos, pos + B, neg, neg + B))
    pml_pos, pml_neg = out["pos_loss"]["losses"], out["neg_loss"]["losses"]

    ours = L.double_margin_contrastive_loss(emb[:B], emb[B:], y, m1, m2, reduction="none")
    torch.testing.assert_close(ours[pos], 0.5 * pml_pos**2)
    torch.testing.assert_close(ours[neg], 0.5 * pml_neg**2)

    # and the gradients of the summed losses agree
    (grad_ours,) = torch.autograd.grad(ours.sum(), emb, retain_graph=True)
    (grad_pml,) = torch.autograd.grad(0.5 * (pml_pos**2).sum() + 0.5 * (pml_neg**2).sum(), emb)
    torch.testing.assert_close(grad_ours, grad_pml)


@pytest.mark.parametrize("curves, margins, torch_loss", [
    (L.contrastive_curves, {"margin": 1.1},
     lambda x1, x2, y: L.contrastive_loss(x1, x2, y, margin=1.1, reduction="none")),
    (L.double_margin_curves, {"pos_margin": 0.7, "neg_margin": 1.3},
     lambda x1, x2, y: L.double_margin_contrastive_loss(x1, x2, y, 0.7, 1.3, reduction="none")),
])
def test_loss_curves_match_autograd(curves, margins, torch_loss):
    # distances avoiding the kinks at the margins
    d = np.array([0.05, 0.3, 0.65, 0.9, 1.05, 1.25, 1.5, 1.9])
    for y in (0, 1):
        loss, grad = curves(d, y, **margins)
        # 1-D points: x1 = 0, x2 = d, so d(L)/d(x2) = dL/dd
        x2 = torch.tensor(d[:, None], requires_grad=True)
        ref = torch_loss(torch.zeros_like(x2), x2, torch.full((len(d),), y))
        ref.sum().backward()
        np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grad, x2.grad.numpy()[:, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("squared", [False, True])
def test_triplet_curves_match_autograd(squared):
    d = np.array([0.05, 0.3, 0.65, 0.9, 1.15, 1.5, 1.9])
    other, margin = 0.8, 0.3
    for y in (0, 1):
        loss, grad = L.triplet_curves(d, y, margin=margin, other_distance=other, squared=squared)
        moving = torch.tensor(d[:, None], requires_grad=True)
        fixed = torch.full_like(moving, other)
        p, n = (moving, fixed) if y == 1 else (fixed, moving)
        ref = L.triplet_loss(torch.zeros_like(moving), p, n, margin=margin, reduction="none",
                             squared=squared)
        ref.sum().backward()
        np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grad, moving.grad.numpy()[:, 0], rtol=1e-10, atol=1e-12)
        assert (loss > 0).any() and (loss == 0).any()


def test_loss_curves_reject_margins_of_another_loss():
    with pytest.raises(TypeError, match="pos_margin"):
        L.contrastive_curves([0.5], 1, pos_margin=1)


@pytest.mark.parametrize("call, message", [
    (lambda x, y: L.contrastive_loss(x, x[:, :3], y), "shapes must match"),
    (lambda x, y: L.contrastive_loss(x[0], x[0], y), "shape \\(batch, dim\\)"),
    (lambda x, y: L.contrastive_loss(x, x, y[:-1]), "y must have shape"),
    (lambda x, y: L.contrastive_loss(x, x, y * 2), "only 0"),
    (lambda x, y: L.contrastive_loss(x, x, y - 0.5), "only 0"),
    (lambda x, y: L.contrastive_loss(x, x, y, margin=0), "margin must be"),
    (lambda x, y: L.contrastive_loss(x, x, y, reduction="avg"), "reduction must be"),
    (lambda x, y: L.double_margin_contrastive_loss(x, x, y, 1.2, 0.8), "smaller than neg_margin"),
    (lambda x, y: L.double_margin_contrastive_loss(x, x, y, -0.1, 0.8), "pos_margin must be"),
    (lambda x, y: L.triplet_loss(x, x, x, margin=-1), "margin must be"),
    (lambda x, y: L.contrastive_loss(x[:0], x[:0], y[:0]), "empty"),
    (lambda x, y: L.split_pair_loss(torch.ones(4, 2), y), "1-D"),
    (lambda x, y: L.contrastive_curves([0.5], 2), "only 0 or 1"),
    (lambda x, y: L.double_margin_curves([0.5], 1, 1.2, 0.8), "smaller than neg_margin"),
    (lambda x, y: L.double_margin_contrastive_loss(x, x, y, 1.0, 1.0), "smaller than neg_margin"),
])
def test_argument_validation(call, message):
    x = torch.randn(4, 5)
    y = torch.tensor([1, 0, 1, 0])
    with pytest.raises(ValueError, match=message):
        call(x, y)

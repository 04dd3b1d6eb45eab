"""Tests of helpers.train, the learner's loop: the steps, the epoch, fit, the optimiser and each epoch's batches."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from helpers import losses, methods, models, train


class CountingNet(nn.Module):
    """A linear embedding that counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return models.l2_normalize(self.linear(x.flatten(1)))


# --------------------------------------------------------------------------- pieces

def test_class_weights_are_inverse_counts_with_mean_one():
    weights = train.class_weights([0, 0, 0, 1, 2, 2], n_classes=4)
    raw = np.array([1 / 3, 1, 1 / 2])
    expected = np.append(raw / raw.mean(), 0.0)  # class 3 is absent
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="n_classes=2"):
        train.class_weights([0, 5], n_classes=2)


def test_build_optimizer_follows_its_arguments_and_skips_frozen_parameters():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    net[0].requires_grad_(False)
    sgd = train.build_optimizer(net.parameters(), "sgd", lr=0.05, momentum=0.8, weight_decay=1e-3)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.8, 1e-3)
    assert {id(p) for p in group["params"]} == {id(p) for p in net[1].parameters()}
    adam = train.build_optimizer(net.parameters(), "adam", lr=3e-4, weight_decay=0.0)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 3e-4
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        train.build_optimizer(net.parameters(), "rmsprop", lr=0.1)
    with pytest.raises(ValueError, match="positive number"):
        train.build_optimizer(net.parameters(), "sgd", lr=0.0)
    with pytest.raises(ValueError, match="nothing to train"):
        train.build_optimizer(net[0].parameters(), "sgd", lr=0.1)


def test_tuple_budget_gives_every_loss_about_the_same_images():
    pairs = train.tuple_budget(methods.get("double"), 16, 64)
    triplets = train.tuple_budget(methods.get("triplet"), 16, 64)
    assert pairs == (16, 64)
    assert triplets == (11, 43)                   # round(16 * 2 / 3), round(64 * 2 / 3)
    assert abs(triplets[0] * 3 - pairs[0] * 2) <= 1 and abs(triplets[1] * 3 - pairs[1] * 2) <= 1


def test_tuple_dataset_returns_the_indexed_items():
    base = torch.utils.data.TensorDataset(torch.arange(10.0).view(10, 1), torch.zeros(10))
    pairs = train.TupleDataset(base, ([3, 7], [1, 1]), targets=[1, 0])
    x1, x2, y = pairs[1]
    assert (x1.item(), x2.item(), y.item()) == (7.0, 1.0, 0.0)
    assert len(pairs) == 2 and len(train.TupleDataset(base, ([1], [2], [3]))[0]) == 3
    with pytest.raises(ValueError, match="one length"):
        train.TupleDataset(base, ([1, 2], [3]))


def test_epoch_batches_cover_every_item_once_and_depend_on_seed_and_epoch_only():
    batches = train.epoch_batches(10, 4, seed=1, epoch=2)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert batches == train.epoch_batches(10, 4, seed=1, epoch=2)
    assert batches != train.epoch_batches(10, 4, seed=1, epoch=3)
    assert batches != train.epoch_batches(10, 4, seed=2, epoch=2)
    loader = train.epoch_loader(torch.utils.data.TensorDataset(torch.arange(10)), 4, seed=1, epoch=2)
    assert [b[0].tolist() for b in loader] == batches


def test_training_tuples_are_seeded_and_redrawn_on_schedule():
    labels = np.repeat(np.arange(4), 5)
    pairs = train.training_tuples(methods.get("double"), labels, per_category=4, regenerate_every=2, seed=0)
    (i1, j1), y1 = pairs(1)
    (i2, j2), _ = pairs(2)
    (i3, j3), _ = pairs(3)
    assert np.array_equal(i1, i2) and not np.array_equal(i1, i3)   # epochs 1 and 2 share their pairs
    assert np.array_equal(labels[i1] == labels[j1], y1.astype(bool))
    triplets = train.training_tuples(methods.get("triplet"), labels, per_category=3, regenerate_every=1, seed=0)
    (a, p, n), target = triplets(1)
    assert target is None and (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()


# --------------------------------------------------------------------------- one batch

def test_pair_step_uses_one_forward_pass_and_matches_a_loop():
    torch.manual_seed(0)
    net = CountingNet()
    x1, x2 = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([1.0, 0, 0, 1, 1, 0])
    per_pair = partial(losses.double_margin_contrastive_loss, pos_margin=0.1, neg_margin=1.2, reduction="none")

    loss, stats = train.pair_step(net, (x1, x2, y), loss=per_pair)
    assert net.calls == 1
    with torch.no_grad():
        e1, e2 = net(x1), net(x2)
    d = [float((e1[k] - e2[k]).norm()) for k in range(6)]
    terms = [0.5 * max(0, d[k] - 0.1) ** 2 if y[k] else 0.5 * max(0, 1.2 - d[k]) ** 2 for k in range(6)]
    assert loss.item() == pytest.approx(sum(terms) / 6, rel=1e-5)
    assert stats["pos_loss"].item() == pytest.approx(sum(t for t, v in zip(terms, y) if v) / 6, rel=1e-5)
    assert stats["pos_dist"].item() == pytest.approx(np.mean([d[k] for k in (0, 3, 4)]), rel=1e-5)
    assert stats["neg_dist"].item() == pytest.approx(np.mean([d[k] for k in (1, 2, 5)]), rel=1e-5)
    assert stats["active_frac"].item() == pytest.approx(np.mean([t > 0 for t in terms]))
    # how hard each pair pulls: |dL/dd| = the hinge (d - m1 or m2 - d, at least 0), and d moves with e1 and e2
    # along opposite unit vectors, so the gradient over both has norm sqrt(2) |dL/dd|
    pull = [np.sqrt(2) * (max(0, d[k] - 0.1) if y[k] else max(0, 1.2 - d[k])) for k in range(6)]
    assert stats["pos_grad"].item() == pytest.approx(sum(pull[k] for k in (0, 3, 4)) / 6, rel=1e-4)
    assert stats["neg_grad"].item() == pytest.approx(sum(pull[k] for k in (1, 2, 5)) / 6, rel=1e-4)
    loss.backward()                                   # the graph is still there for the training step
    assert all(p.grad is not None for p in net.parameters())


def test_pair_gradient_norms_are_zero_for_pairs_without_loss():
    e1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    e2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    # a negative pair already beyond the margin, and a positive pair at distance 0: neither pulls
    per_pair = losses.double_margin_contrastive_loss(e1, e2, torch.tensor([0.0, 1.0]), pos_margin=0.1,
                                                     neg_margin=1.2, reduction="none")
    assert train.pair_gradient_norms(per_pair, e1, e2).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_triplet_step_uses_one_forward_pass():
    torch.manual_seed(0)
    net = CountingNet()
    a, p, n = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    loss, stats = train.triplet_step(net, (a, p, n), loss=methods.get("triplet").per_item_loss({"margin": 0.4}))
    assert net.calls == 1
    with torch.no_grad():
        ea, ep, en = net(a), net(p), net(n)
    d_ap, d_an = (ea - ep).norm(dim=1), (ea - en).norm(dim=1)
    assert loss.item() == pytest.approx(torch.relu(d_ap - d_an + 0.4).mean().item(), rel=1e-5)
    assert stats["pos_dist"].item() == pytest.approx(d_ap.mean().item(), rel=1e-5)
    assert math.isnan(stats["pos_loss"].item()) and math.isnan(stats["neg_loss"].item())


def test_classifier_step_is_weighted_cross_entropy():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 2, 1])
    weights = torch.tensor([1.0, 2.0, 0.5])
    loss, stats = train.classifier_step(net, (x, labels), weights=weights)
    logits = net(x).detach()
    log_p = logits.log_softmax(dim=1)[torch.arange(5), labels]
    expected = -(weights[labels] * log_p).sum() / weights[labels].sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["accuracy"].item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())


# --------------------------------------------------------------------------- the loops

def _regression(seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)

    def step(model, batch):
        inputs, targets = batch
        return nn.functional.mse_loss(model(inputs), targets), {}
    return loader, step


def test_train_epoch_is_forward_loss_backward_step():
    loader, step = _regression()
    model = nn.Linear(3, 1)
    reference = nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    rows = train.train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), step)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    losses_by_hand = []
    for inputs, targets in loader:             # the same epoch written out
        loss = ((reference(inputs) - targets) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses_by_hand.append(loss.item())
    assert [row["loss"] for row in rows] == pytest.approx(losses_by_hand, rel=1e-6)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("patience, trained, best", [(2, [1, 2, 3], 1), (None, [1, 2, 3, 4, 5], 5), (1, [1], 0)])
def test_fit_keeps_the_weights_of_the_best_epoch(patience, trained, best):
    scores = {2: [0.1, 0.3, 0.2, 0.25, 0.2, 0.5], None: [0.1, 0.3, 0.2, 0.25, 0.2, 0.5],
              1: [0.4, 0.3, 0.9]}[patience]
    loader, step = _regression()
    calls = iter(scores)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    snapshots, seen = {0: {k: v.clone() for k, v in model.state_dict().items()}}, []

    def remember(history):
        epoch = history.epochs[-1]["epoch"]
        seen.append(epoch)
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    history = train.fit(model, optimizer, scheduler, lambda epoch: loader, step, lambda m: next(calls), epochs=5,
                        patience=patience, progress=False, on_epoch_end=remember)
    assert seen == trained and history.best_epoch == best
    assert [row["epoch"] for row in history.epochs] == [0, *trained]
    assert [row["val"] for row in history.epochs] == scores[:len(trained) + 1]
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[best][name])
    assert not torch.equal(snapshots[trained[-1]]["weight"], snapshots[0]["weight"])  # it did train
    assert [row["iteration"] for row in history.iterations] == list(range(1, 4 * len(trained) + 1))


def test_fit_steps_the_learning_rate_and_records_it():
    loader, step = _regression()
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    history = train.fit(model, optimizer, scheduler, lambda epoch: loader, step, lambda m: 0.0, epochs=2,
                        progress=False)
    by_epoch = {row["epoch"]: row["lr"] for row in history.iterations}
    assert by_epoch[1] == pytest.approx(0.1) and by_epoch[2] == pytest.approx(0.01)


def test_a_loss_that_is_not_finite_stops_fit_naming_where():
    loader, _ = _regression()

    def broken(model, batch):
        inputs, targets = batch
        return (model(inputs) * float("nan")).mean(), {}

    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, iteration 1 \(lr=0\.25\)"):
        train.fit(model, optimizer, scheduler, lambda epoch: loader, broken, lambda m: 0.0, epochs=1, progress=False)

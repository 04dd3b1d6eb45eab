"""Check cells for the exercises: the reader writes a loss or a training step, and a check compares it with ``helpers``.

Each check runs the reader's function on small fixed inputs (seeded, the same
at every profile), compares the result with the library's, prints one line
that says whether they agree and, when they do not, which common slip the
result matches (a missing ½, a sum for a mean, squared distances, swapped
labels, a missing ``zero_grad`` or ``step``...). It returns ``True`` when the
function agrees. A function that still raises ``NotImplementedError`` is
reported as not written yet, with the path of its worked solution.

The worked solutions live in ``notebooks/solutions/``; the tests run every
check on them.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F

from . import losses

SOLUTIONS = "notebooks/solutions"
"""Where the worked solutions are, from the repository root."""
TOLERANCE = 1e-5


def _embeddings(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` non-negative unit vectors, as after ReLU6, MAC pooling and L2 normalisation (distances up to sqrt(2))."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, dim, generator=generator, dtype=torch.float64) ** 3
    return F.normalize(raw, dim=1)


def pair_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eight fixed pairs ``(e1, e2, y)``: four positive, four negative, at distances spread over [0, sqrt(2)]."""
    e1, e2 = _embeddings(8, seed=1), _embeddings(8, seed=2)
    y = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0], dtype=torch.float64)
    return e1, e2, y


def triplet_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six fixed triplets ``(anchor, positive, negative)`` of non-negative unit vectors."""
    return _embeddings(6, seed=3), _embeddings(6, seed=4), _embeddings(6, seed=5)


def _called(candidate: Callable, *args, **kwargs):
    """``candidate(...)`` as a float tensor, or a one-line complaint (not written yet, raised, not a number)."""
    try:
        value = candidate(*args, **kwargs)
    except NotImplementedError:
        return None, f"not written yet: the worked solution is in {SOLUTIONS}/"
    except Exception as error:  # the reader's code: say what it raised, in one line
        return None, f"it raised {type(error).__name__}: {error}".splitlines()[0]
    if not isinstance(value, torch.Tensor):
        return None, f"it returned a {type(value).__name__}; return a torch tensor (one number, the batch mean)"
    if value.numel() != 1:
        return None, f"it returned shape {tuple(value.shape)}; return one number, the mean over the batch"
    return value.reshape(()), None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.isclose(a.detach().double(), b.detach().double(), rtol=TOLERANCE, atol=1e-9))


def _report(name: str, value: torch.Tensor | None, problem: str | None, reference: torch.Tensor,
            slips: dict[str, torch.Tensor]) -> bool:
    if problem is not None:
        print(f"✗ {name}: {problem}")
        return False
    if _close(value, reference):
        if not value.requires_grad:
            print(f"✗ {name}: the value is right ({float(value.detach()):.6f}) but carries no gradient; "
                  "build it from the embeddings with torch operations")
            return False
        print(f"✓ {name}: {float(value.detach()):.6f}, the same as helpers.losses on the fixed test inputs")
        return True
    for slip, wrong in slips.items():
        if _close(value, wrong):
            print(f"✗ {name}: {float(value.detach()):.6f} instead of {float(reference.detach()):.6f}; it matches {slip}")
            return False
    print(f"✗ {name}: {float(value.detach()):.6f} instead of {float(reference.detach()):.6f}; "
          "compare your formula term by term with the one above")
    return False


def _hinge(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0)


def check_single_margin(candidate: Callable, margin: float = 1.0) -> bool:
    """Check ``candidate(e1, e2, y, margin)``: the mean of ½·y·d² + ½·(1−y)·max(0, m − d)²."""
    e1, e2, y = (t.clone().requires_grad_(i < 2) for i, t in enumerate(pair_inputs()))
    reference = losses.contrastive_loss(e1, e2, y, margin=margin)
    d = (e1 - e2).norm(dim=1)
    terms = lambda pos, neg: y * pos + (1 - y) * neg  # noqa: E731
    slips = {
        "the terms without the factor ½": 2 * reference,
        "the SUM over pairs instead of the mean": reference * len(y),
        "the squared distance d² in the hinge (max(0, m − d²)²)": terms(0.5 * d ** 2, 0.5 * _hinge(margin - d ** 2) ** 2).mean(),
        "a hinge that is not squared (max(0, m − d))": terms(0.5 * d ** 2, 0.5 * _hinge(margin - d)).mean(),
        "swapped labels (y = 1 treated as a negative pair)": terms(0.5 * _hinge(margin - d) ** 2, 0.5 * d ** 2).mean(),
    }
    value, problem = _called(candidate, e1, e2, y, margin)
    return _report("single margin", value, problem, reference, slips)


def check_double_margin(candidate: Callable, pos_margin: float = 0.8, neg_margin: float = 1.2) -> bool:
    """Check ``candidate(e1, e2, y, pos_margin, neg_margin)``: ½·y·max(0, d − m1)² + ½·(1−y)·max(0, m2 − d)², mean."""
    e1, e2, y = (t.clone().requires_grad_(i < 2) for i, t in enumerate(pair_inputs()))
    reference = losses.double_margin_contrastive_loss(e1, e2, y, pos_margin=pos_margin, neg_margin=neg_margin)
    d = (e1 - e2).norm(dim=1)
    pos, neg = 0.5 * _hinge(d - pos_margin) ** 2, 0.5 * _hinge(neg_margin - d) ** 2
    slips = {
        "the terms without the factor ½": 2 * reference,
        "the SUM over pairs instead of the mean": reference * len(y),
        "the mean over the ACTIVE pairs only (the paper averages over all pairs)":
            (y * pos + (1 - y) * neg).sum() / ((y * pos + (1 - y) * neg) > 0).sum().clamp_min(1),
        "the single margin's positive term ½·d² (m1 ignored)": (y * 0.5 * d ** 2 + (1 - y) * neg).mean(),
        "the margins swapped": (y * 0.5 * _hinge(d - neg_margin) ** 2
                                + (1 - y) * 0.5 * _hinge(pos_margin - d) ** 2).mean(),
        "swapped labels (y = 1 treated as a negative pair)": ((1 - y) * pos + y * neg).mean(),
    }
    value, problem = _called(candidate, e1, e2, y, pos_margin, neg_margin)
    return _report("double margin", value, problem, reference, slips)


def check_triplet(candidate: Callable, margin: float = 0.4) -> bool:
    """Check ``candidate(anchor, positive, negative, margin)``: the mean of max(0, d(a, p) − d(a, n) + m)."""
    a, p, n = (t.clone().requires_grad_() for t in triplet_inputs())
    reference = losses.triplet_loss(a, p, n, margin=margin)
    d_ap, d_an = (a - p).norm(dim=1), (a - n).norm(dim=1)
    slips = {
        "the SUM over triplets instead of the mean": reference * len(a),
        "squared distances (max(0, d(a,p)² − d(a,n)² + m))": _hinge(d_ap ** 2 - d_an ** 2 + margin).mean(),
        "no hinge (d(a,p) − d(a,n) + m, negative terms kept)": (d_ap - d_an + margin).mean(),
        "positive and negative swapped": _hinge(d_an - d_ap + margin).mean(),
    }
    value, problem = _called(candidate, a, p, n, margin)
    return _report("triplet", value, problem, reference, slips)


# --------------------------------------------------------------------------- one training step

def _tiny_model(seed: int = 0) -> torch.nn.Module:
    """A small embedding network (linear, ReLU, L2 normalisation) with seeded weights (the global seed is left alone)."""
    generator = torch.Generator().manual_seed(seed)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(6, 4)
            with torch.no_grad():
                self.linear.weight.copy_(torch.randn(4, 6, generator=generator))
                self.linear.bias.copy_(torch.randn(4, generator=generator))

        def forward(self, x):
            return F.normalize(torch.relu(self.linear(x)) + 1e-3, dim=1)

    with torch.random.fork_rng(devices=[]):  # nn.Linear's own initialisation draws from the global generator
        return Tiny()


def _step_batch():
    generator = torch.Generator().manual_seed(7)
    x1, x2 = torch.randn(8, 6, generator=generator), torch.randn(8, 6, generator=generator)
    return x1, x2, torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])


def _reference_step(model, batch, loss_fn, optimizer) -> float:
    x1, x2, y = batch
    optimizer.zero_grad()
    e1, e2 = model(torch.cat([x1, x2])).split(len(x1))
    loss = loss_fn(e1, e2, y)
    loss.backward()
    optimizer.step()
    return loss.item()


def check_training_step(candidate: Callable) -> bool:
    """Check ``candidate(model, batch, loss_fn, optimizer) -> float`` against one step written the library's way.

    ``batch`` is ``(x1, x2, y)``; the step must embed both images of every
    pair, compute ``loss_fn(e1, e2, y)`` (the batch mean), clear the old
    gradients, back-propagate, update the weights and return the loss as a
    number. The check starts both copies of a tiny network with stale
    gradients in place, so a step that forgets ``zero_grad`` shows.
    """
    loss_fn = lambda e1, e2, y: losses.double_margin_contrastive_loss(e1, e2, y, pos_margin=0.3, neg_margin=1.0)  # noqa: E731
    models_, optimizers = [], []
    for _ in range(2):
        model = _tiny_model()  # the same weights twice
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for parameter in model.parameters():
            parameter.grad = torch.ones_like(parameter)  # stale gradients from an earlier batch
        models_.append(model)
        optimizers.append(optimizer)
    before = copy.deepcopy(models_[0].state_dict())
    want = _reference_step(models_[1], _step_batch(), loss_fn, optimizers[1])
    try:
        got = candidate(models_[0], _step_batch(), loss_fn, optimizers[0])
    except NotImplementedError:
        print(f"✗ training step: not written yet: the worked solution is in {SOLUTIONS}/")
        return False
    except Exception as error:
        print(f"✗ training step: it raised {type(error).__name__}: {error}".splitlines()[0])
        return False
    after, wanted = models_[0].state_dict(), models_[1].state_dict()
    unchanged = all(torch.equal(after[k], before[k]) for k in after)
    same = all(torch.allclose(after[k], wanted[k], atol=1e-6) for k in after)
    if not isinstance(got, (float, int)) or isinstance(got, bool):
        print(f"✗ training step: it returned {type(got).__name__}; return the loss as a Python float (loss.item())")
        return False
    if abs(got - want) > 1e-5:
        print(f"✗ training step: it returned the loss {got:.6f} instead of {want:.6f}; check the forward pass")
        return False
    if unchanged:
        print("✗ training step: the weights did not move; call optimizer.step() after loss.backward()")
        return False
    if not same:
        print("✗ training step: the loss is right but the update is not; did you clear the old gradients "
              "(optimizer.zero_grad()) before loss.backward()?")
        return False
    print(f"✓ training step: loss {got:.6f} and the updated weights are the library's")
    return True

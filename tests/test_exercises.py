"""The exercise checks pass the worked solutions and name the common slips; a stub is "not written yet"."""
from __future__ import annotations

import runpy

import pytest
import torch

from helpers import config, exercises, losses

SOLUTIONS = config.REPO_ROOT / exercises.SOLUTIONS
LOSSES = runpy.run_path(str(SOLUTIONS / "02_losses.py"))
STEP = runpy.run_path(str(SOLUTIONS / "03_training_step.py"))


def test_the_worked_solutions_pass_their_checks(capsys):
    assert exercises.check_single_margin(LOSSES["single_margin_loss"])
    assert exercises.check_double_margin(LOSSES["double_margin_loss"])
    assert exercises.check_triplet(LOSSES["triplet_loss"])
    assert exercises.check_training_step(STEP["training_step"])
    assert capsys.readouterr().out.count("✓") == 4


def test_the_solutions_are_the_library_losses_on_other_inputs():
    torch.manual_seed(3)
    e1, e2 = torch.nn.functional.normalize(torch.rand(20, 5), dim=1), torch.nn.functional.normalize(torch.rand(20, 5), dim=1)
    y = (torch.rand(20) > 0.5).float()
    torch.testing.assert_close(LOSSES["single_margin_loss"](e1, e2, y, 0.7), losses.contrastive_loss(e1, e2, y, margin=0.7))
    torch.testing.assert_close(LOSSES["double_margin_loss"](e1, e2, y, 0.2, 0.9),
                               losses.double_margin_contrastive_loss(e1, e2, y, pos_margin=0.2, neg_margin=0.9))
    torch.testing.assert_close(LOSSES["triplet_loss"](e1, e2, e2.flip(0), 0.3),
                               losses.triplet_loss(e1, e2, e2.flip(0), margin=0.3))


def _not_written(*args):
    raise NotImplementedError


@pytest.mark.parametrize("check", [exercises.check_single_margin, exercises.check_double_margin,
                                   exercises.check_triplet, exercises.check_training_step])
def test_a_stub_is_not_written_yet(check, capsys):
    assert not check(_not_written)
    assert f"not written yet: the worked solution is in {exercises.SOLUTIONS}/" in capsys.readouterr().out


def test_the_checks_name_the_common_slips(capsys):
    single, double = LOSSES["single_margin_loss"], LOSSES["double_margin_loss"]
    assert not exercises.check_single_margin(lambda e1, e2, y, m: 2 * single(e1, e2, y, m))
    assert "it matches the terms without the factor ½" in capsys.readouterr().out
    assert not exercises.check_double_margin(lambda e1, e2, y, m1, m2: double(e1, e2, 1 - y, m1, m2))
    assert "swapped labels" in capsys.readouterr().out
    assert not exercises.check_double_margin(lambda e1, e2, y, m1, m2: 8 * double(e1, e2, y, m1, m2))
    assert "the SUM over pairs" in capsys.readouterr().out
    squared = lambda a, p, n, m: torch.clamp((a - p).norm(dim=1) ** 2 - (a - n).norm(dim=1) ** 2 + m, min=0).mean()  # noqa: E731
    assert not exercises.check_triplet(squared)
    assert "squared distances" in capsys.readouterr().out
    assert not exercises.check_single_margin(lambda e1, e2, y, m: single(e1, e2, y, m).detach())
    assert "carries no gradient" in capsys.readouterr().out


def _step_without(skip: str):
    def step(model, batch, loss_fn, optimizer):
        x1, x2, y = batch
        if skip != "zero_grad":
            optimizer.zero_grad()
        e1, e2 = model(torch.cat([x1, x2])).split(len(x1))
        loss = loss_fn(e1, e2, y)
        loss.backward()
        if skip != "step":
            optimizer.step()
        return loss if skip == "item" else loss.item()
    return step


@pytest.mark.parametrize("skip, said", [("zero_grad", "did you clear the old gradients"),
                                        ("step", "the weights did not move"),
                                        ("item", "return the loss as a Python float")])
def test_the_step_check_finds_what_is_missing(skip, said, capsys):
    assert not exercises.check_training_step(_step_without(skip))
    assert said in capsys.readouterr().out


def test_the_checks_leave_the_global_random_state_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    exercises.check_training_step(STEP["training_step"])
    exercises.check_single_margin(LOSSES["single_margin_loss"])
    torch.testing.assert_close(torch.rand(3), expected)

"""The written-out optimisers match torch.optim's and hand-computed steps; the proximity term."""

from __future__ import annotations

import math

import pytest
import torch

from napari_scribble_refine.core.optimiser import Adam, MomentumSGD, proximity


def _step_alongside(ours, ref, opt_ours, opt_ref, steps: int, loss) -> None:
    """Take ``steps`` steps of both optimisers, each on ``loss`` of its own parameter."""
    for _ in range(steps):
        for p, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            loss(p).backward()
            opt.step()


def test_adam_matches_torch_optim_adam():
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(5, 3))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt_ours, opt_ref = Adam([ours], lr=0.05), torch.optim.Adam([ref], lr=0.05)
    _step_alongside(ours, ref, opt_ours, opt_ref, 20, lambda p: (p**3).sum() + p.sum())
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours.detach(), torch.zeros(5, 3))


def test_adam_with_other_betas_and_eps_matches_torch_optim_adam():
    torch.manual_seed(1)
    ours = torch.nn.Parameter(torch.randn(4, 2))
    ref = torch.nn.Parameter(ours.detach().clone())
    kwargs = {"lr": 0.1, "betas": (0.5, 0.8), "eps": 0.3}  # eps large enough to matter
    opt_ours, opt_ref = Adam([ours], **kwargs), torch.optim.Adam([ref], **kwargs)
    weights = torch.arange(8.0).reshape(4, 2)
    _step_alongside(ours, ref, opt_ours, opt_ref, 6, lambda p: (p**2 * weights).sum())
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)


def test_adam_first_step_moves_by_lr_times_the_sign_of_the_gradient():
    # m / (1 - b1) = g and v / (1 - b2) = g^2 after one step: the update is lr * g / (|g| + eps)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    p.grad = torch.tensor([4.0, -0.5, 0.0])
    Adam([p], lr=0.25, eps=0.5).step()
    expected = torch.tensor([1.0 - 0.25 * 4 / 4.5, -2.0 + 0.25 * 0.5 / 1.0, 3.0])
    torch.testing.assert_close(p.detach(), expected)


def test_optimisers_skip_parameters_without_a_gradient_and_zero_grad_drops_them():
    # Adam's first step is lr * sign(g) = 0.1; SGD's is lr * g = 0.2
    for make, after in (
        (lambda ps: Adam(ps, lr=0.1), 0.9),
        (lambda ps: MomentumSGD(ps, lr=0.1, momentum=0.9), 0.8),
    ):
        idle = torch.nn.Parameter(torch.tensor([5.0]))
        moved = torch.nn.Parameter(torch.tensor([1.0]))
        opt = make([idle, moved])  # the parameter without a gradient comes first
        moved.grad = torch.tensor([2.0])
        opt.step()
        assert idle.item() == 5.0
        assert moved.item() == pytest.approx(after)
        opt.zero_grad()
        assert idle.grad is None and moved.grad is None


def test_momentum_sgd_steps_by_hand():
    # buffer b1 = g1, b2 = m * b1 + g2; p -= lr * b
    p = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    opt = MomentumSGD([p], lr=0.1, momentum=0.5)
    p.grad = torch.tensor([2.0, -1.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.8, 0.1]))
    p.grad = torch.tensor([4.0, 1.0])
    opt.step()  # b2 = (0.5 * 2 + 4, 0.5 * -1 + 1) = (5, 0.5)
    torch.testing.assert_close(p.detach(), torch.tensor([0.3, 0.05]))
    p.grad = torch.tensor([0.0, 0.0])
    opt.step()  # b3 = 0.5 * b2
    torch.testing.assert_close(p.detach(), torch.tensor([0.05, 0.025]))


def test_momentum_sgd_buffer_is_a_copy_of_the_first_gradient():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    opt = MomentumSGD([p], lr=1.0, momentum=0.5)
    grad = torch.tensor([1.0])
    p.grad = grad
    opt.step()  # p = -1
    grad.mul_(10.0)  # changing the gradient tensor afterwards must not change the buffer
    p.grad = torch.tensor([0.0])
    opt.step()  # b2 = 0.5
    assert p.item() == pytest.approx(-1.5)


def test_momentum_zero_is_plain_sgd():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = MomentumSGD([p], lr=0.5, momentum=0.0)
    for _ in range(3):
        p.grad = torch.tensor([1.0])
        opt.step()
    assert p.item() == pytest.approx(-0.5)  # 1 - 3 * 0.5: no accumulation


def test_momentum_sgd_matches_torch_optim_sgd():
    torch.manual_seed(2)
    ours = torch.nn.Parameter(torch.randn(3, 3))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt_ours = MomentumSGD([ours], lr=0.05, momentum=0.9)
    opt_ref = torch.optim.SGD([ref], lr=0.05, momentum=0.9)
    _step_alongside(ours, ref, opt_ours, opt_ref, 10, lambda p: (p**3).sum() + p.sum())
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)


def test_proximity_is_the_l2_distance_over_all_named_parameters():
    a = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    anchor = {"a": torch.zeros(2, 2), "b": torch.tensor([4.0])}
    value = proximity([("a", a), ("b", b)], anchor)
    assert value.shape == ()
    assert value.item() == pytest.approx(math.sqrt(1 + 4 + 9 + 16 + 9))
    value.backward()  # d||x|| / dx = x / ||x||
    torch.testing.assert_close(a.grad, torch.tensor([[1.0, 2.0], [3.0, 4.0]]) / math.sqrt(39))
    torch.testing.assert_close(b.grad, torch.tensor([-3.0]) / math.sqrt(39))


def test_proximity_is_finite_with_zero_gradient_at_the_anchor():
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    value = proximity([("w", w)], {"w": torch.tensor([0.5, -1.0])})
    assert 0 < value.item() < 1e-12  # sqrt(eps): smooth, not exactly zero
    value.backward()
    assert torch.equal(w.grad, torch.zeros(2))


def test_proximity_of_no_parameters_is_zero():
    value = proximity([], {})
    assert value.shape == () and value.item() == 0.0

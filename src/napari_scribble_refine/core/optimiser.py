"""The optimiser side of Algorithm 1: the proximity term and SGD with momentum."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .history import Anchor


def proximity(params: Iterable[tuple[str, nn.Parameter]], anchor: Anchor) -> torch.Tensor:
    """``||W - W_lambda||_2`` over the head's parameters, smooth at W_lambda = W.

    ``sqrt(sum of squares + eps)`` keeps the gradient finite (zero) where the norm is zero,
    which is exactly the first step of every refinement from the pre-trained weights.

    Parameters
    ----------
    params : iterable of (str, torch.nn.Parameter)
        The head's named parameters (W_lambda).
    anchor : Anchor
        The pre-trained values W, by name.

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    total: torch.Tensor | None = None
    for name, p in params:
        ref = anchor[name].to(p.device)
        term = (p - ref).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    eps = torch.finfo(total.dtype).tiny * 1e6
    return torch.sqrt(total + eps)


class MomentumSGD:
    """Plain SGD with momentum, identical to ``torch.optim.SGD(params, lr, momentum)``.

    Written out because constructing a ``torch.optim`` optimiser imports ``torch._dynamo``
    on first use, which costs seconds: more than a whole refinement.

    Parameters
    ----------
    params : list of torch.nn.Parameter
        Parameters to update (their ``.grad`` is read).
    lr : float
        Step size eta.
    momentum : float
        Momentum factor (0 = plain SGD).
    """

    def __init__(self, params: list[nn.Parameter], lr: float, momentum: float) -> None:
        self.params = list(params)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self._buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Drop the parameters' gradients."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d_p = p.grad
            if self.momentum:
                buf = self._buffers[i]
                if buf is None:
                    buf = d_p.detach().clone()
                    self._buffers[i] = buf
                else:
                    buf.mul_(self.momentum).add_(d_p)
                d_p = buf
            p.add_(d_p, alpha=-self.lr)

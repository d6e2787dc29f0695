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


class Adam:
    """Adam (Kingma & Ba 2015), identical to ``torch.optim.Adam(params, lr)``.

    Written out for the same reason as :class:`MomentumSGD`. Each parameter moves by about
    ``lr`` per step whatever the scale of its gradient, so a few scribbled pixels move the
    head as surely as many.

    Parameters
    ----------
    params : list of torch.nn.Parameter
        Parameters to update (their ``.grad`` is read).
    lr : float
        Step size.
    betas : tuple of float
        Decay of the running mean and of the running mean square of the gradient.
    eps : float
        Added to the root mean square.
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr = float(lr)
        self.betas = betas
        self.eps = float(eps)
        self._steps = 0
        self._m: list[torch.Tensor | None] = [None] * len(self.params)
        self._v: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Drop the parameters' gradients."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient."""
        self._steps += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self._steps
        c2 = 1 - b2**self._steps
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad
            if self._m[i] is None:
                self._m[i] = torch.zeros_like(p)
                self._v[i] = torch.zeros_like(p)
            m, v = self._m[i], self._v[i]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / c2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / c1)

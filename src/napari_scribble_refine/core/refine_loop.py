"""The pieces of Algorithm 1: what the head trains on, the loss, and one optimiser step.

Three ways to present scribbled pixels to the head, chosen by the adapter's geometry:

* point-wise head on cached features: the feature vectors of the scribbled pixels only,
  gathered into one row ``[1, F, 1, P]`` (a point-wise head treats every pixel alone, so
  any arrangement of pixels is a valid input, and a contiguous row is the fastest layout
  for 1x1 convolutions on the CPU); the cost grows with scribbled pixels, not image size;
* spatial head on cached features: square crops around the scribbles, each grown by the
  head's halo, with the loss counted only in each crop's core (so every pixel once);
* opaque model: each scribbled slice in full (a whole forward per step).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .history import Anchor
from .models.base import Features, SegmentationModel
from .tiling import crop_features, tile_ranges

IGNORE = -1
"""Target value of unscribbled pixels (the loss's ``ignore_index``)."""

CROP_CORE = 128
"""Side of the grid cells that spatial heads train on (each grown by the head's halo)."""

POINT_CHUNK = 262_144
"""Most scribbled pixels presented to a point-wise head at once."""


@dataclass
class Batch:
    """One forward's worth of training data.

    Attributes
    ----------
    features : Features
        Input to ``model.head``.
    target : torch.Tensor
        Long [N, h, w]: class index, or ``IGNORE``.
    """

    features: Features
    target: torch.Tensor


def scribble_targets(scribbles: np.ndarray) -> np.ndarray:
    """Scribble labels (0 = none, c + 1 = class c) to targets (IGNORE or c).

    Parameters
    ----------
    scribbles : numpy.ndarray
        Validated int32 scribbles.

    Returns
    -------
    numpy.ndarray
        int64 targets of the same shape.
    """
    return scribbles.astype(np.int64) - 1


def build_batches(model: SegmentationModel, features: Features, targets: np.ndarray) -> list[Batch]:
    """Cut the cached features into what the head trains on (see module docstring).

    Parameters
    ----------
    model : SegmentationModel
        The adapter (its ``head_is_pointwise``, ``head_halo`` and ``trunk_is_cached``).
    features : Features
        Cached [N, F, Y, X] tensors (N = 1 or the number of slices).
    targets : numpy.ndarray
        Targets of shape (N, Y, X), ``IGNORE`` where not scribbled.

    Returns
    -------
    list of Batch
        Tensors detached from any inference mode, on the features' device.
    """
    device = next(iter(features.values())).device
    batches: list[Batch] = []
    if model.trunk_is_cached and model.head_is_pointwise:
        z, y, x = np.nonzero(targets >= 0)
        labels = targets[z, y, x]
        for start in range(0, len(z), POINT_CHUNK):
            stop = start + POINT_CHUNK
            zi = torch.as_tensor(z[start:stop], device=device)
            yi = torch.as_tensor(y[start:stop], device=device)
            xi = torch.as_tensor(x[start:stop], device=device)
            gathered = {
                # [P, F] -> [1, F, 1, P]; indexing outside inference mode copies
                k: v[zi, :, yi, xi].t().contiguous()[None, :, None, :]
                for k, v in features.items()
            }
            target = torch.as_tensor(labels[start:stop], device=device)[None, None, :]
            batches.append(Batch(gathered, target))
        return batches

    if model.trunk_is_cached:
        halo = int(model.head_halo)
        height, width = targets.shape[1:]
        for index in range(targets.shape[0]):
            plane = targets[index]
            if not (plane >= 0).any():
                continue
            for y0, y1 in tile_ranges(height, CROP_CORE):
                for x0, x1 in tile_ranges(width, CROP_CORE):
                    core = plane[y0:y1, x0:x1]
                    if not (core >= 0).any():
                        continue
                    ya, yb = max(0, y0 - halo), min(height, y1 + halo)
                    xa, xb = max(0, x0 - halo), min(width, x1 + halo)
                    target = np.full((yb - ya, xb - xa), IGNORE, dtype=np.int64)
                    target[y0 - ya : y1 - ya, x0 - xa : x1 - xa] = core
                    crop = crop_features(features, index, slice(ya, yb), slice(xa, xb))
                    batches.append(
                        Batch(
                            {k: v.clone() for k, v in crop.items()},
                            torch.as_tensor(target, device=device)[None],
                        )
                    )
        return batches

    for index in range(targets.shape[0]):
        plane = targets[index]
        if not (plane >= 0).any():
            continue
        whole = {k: v[index : index + 1].clone() for k, v in features.items()}
        batches.append(Batch(whole, torch.as_tensor(plane, device=device)[None]))
    return batches


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


def loss_and_gradients(
    model: SegmentationModel, batches: list[Batch], n_scribbled: int
) -> tuple[float, int]:
    """Cross-entropy of the scribbled pixels, back-propagated into the head.

    Gradients accumulate over the batches (call ``zero_grad`` before).

    Parameters
    ----------
    model : SegmentationModel
        The adapter.
    batches : list of Batch
        From :func:`build_batches`.
    n_scribbled : int
        Total scribbled pixels (the mean's denominator).

    Returns
    -------
    loss : float
        Mean cross-entropy.
    violations : int
        Scribbled pixels whose argmax is not their class.
    """
    total = 0.0
    wrong = 0
    for batch in batches:
        logits = model.head(batch.features)
        ce = F.cross_entropy(logits, batch.target, ignore_index=IGNORE, reduction="sum")
        (ce / n_scribbled).backward()
        total += float(ce.detach())
        with torch.no_grad():
            scribbled = batch.target != IGNORE
            wrong += int(((logits.argmax(1) != batch.target) & scribbled).sum())
    return total / n_scribbled, wrong


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

"""An edge-aware CRF on the refined probabilities: decisions that follow the image's edges.

Mean-field inference of a Potts CRF (Krähenbühl & Koltun 2011) whose pairwise messages are
computed with a guided filter (He et al., TPAMI 2013) instead of a dense bilateral filter:
each class's probability map is averaged over a window of radius ``radius``, but not across
edges of the guide image stronger than about ``sqrt(eps)``. The filter costs a few box
filters per class (cumulative sums), so the whole CRF is linear in the pixels with any
radius, and runs on whatever device the tensors are on.

Scribbled pixels enter as near-certain unaries, as in the dense-CRF baseline: they hold
their class, and the uncertain pixels around them settle along the image's edges. (A small
stroke inside a region the unaries are confident about does not flood it: the Potts
messages there favour the region's class.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .config import RefineConfig

__all__ = ["CRF_MAX_PIXELS", "GuidedFilter", "box_mean", "crf_applies", "mean_field"]

CRF_MAX_PIXELS = 4096 * 4096
"""Larger images (slices) skip the edge-aware CRF: it holds several maps of the whole image."""


def _window_counts(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Pixels of a (2r + 1) window that fall inside an axis of length ``n``, per position."""
    i = torch.arange(n, device=device)
    return (torch.clamp(i + radius, max=n - 1) - torch.clamp(i - radius, min=0) + 1).float()


def _box_sum(t: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over a (2r + 1) window along ``dim``, clipped at the ends (cumulative sums)."""
    n = t.shape[dim]
    c = torch.cumsum(t, dim=dim)
    shape = list(t.shape)
    shape[dim] = radius + 1
    zeros = torch.zeros(shape, dtype=t.dtype, device=t.device)
    last = c.narrow(dim, n - 1, 1).expand(*[radius if d == dim else -1 for d in range(t.dim())])
    padded = torch.cat([zeros, c, last], dim=dim)  # padded[k] = sum of t[: k - r - 1] clipped
    return padded.narrow(dim, 2 * radius + 1, n) - padded.narrow(dim, 0, n)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r + 1)² window (clipped at the borders) of [C, Y, X] maps.

    Parameters
    ----------
    x : torch.Tensor
        [C, Y, X] float.
    radius : int
        Window radius r.

    Returns
    -------
    torch.Tensor
        [C, Y, X].
    """
    _, h, w = x.shape
    ry, rx = min(radius, h - 1), min(radius, w - 1)
    total = _box_sum(_box_sum(x, ry, 1), rx, 2)
    counts = _window_counts(h, ry, x.device)[:, None] * _window_counts(w, rx, x.device)[None]
    return total / counts


class GuidedFilter:
    """Edge-preserving smoothing of maps [C, Y, X] guided by a grey image [Y, X].

    The guide's statistics are computed once, so filtering many maps (every mean-field
    iteration) costs four box filters each.

    Parameters
    ----------
    guide : torch.Tensor
        [Y, X] float guide, roughly in [0, 1].
    radius : int
        Window radius.
    eps : float
        Regularisation: edges of contrast well above ``sqrt(eps)`` are kept.
    """

    def __init__(self, guide: torch.Tensor, radius: int, eps: float) -> None:
        self.i = guide[None].float()
        self.radius = int(radius)
        self.mean_i = box_mean(self.i, self.radius)
        self.denominator = box_mean(self.i * self.i, self.radius) - self.mean_i**2 + eps

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        """Filter maps ``p`` [C, Y, X]."""
        n = p.shape[0]
        means = box_mean(torch.cat([p, self.i * p]), self.radius)
        mean_p, mean_ip = means[:n], means[n:]
        a = (mean_ip - self.mean_i * mean_p) / self.denominator
        b = mean_p - a * self.mean_i
        ab = box_mean(torch.cat([a, b]), self.radius)
        return ab[:n] * self.i + ab[n:]


def mean_field(
    log_probs: torch.Tensor,
    guide: torch.Tensor,
    scribbles: np.ndarray | None = None,
    *,
    weight: float = 3.0,
    radius: int = 8,
    eps: float = 0.01,
    iterations: int = 5,
    pinned: float = 0.999,
) -> torch.Tensor:
    """Mean-field inference of the edge-aware Potts CRF.

    Parameters
    ----------
    log_probs : torch.Tensor
        [C, Y, X] unary log-probabilities (the refined head's output).
    guide : torch.Tensor
        [Y, X] grey image scaled to about [0, 1].
    scribbles : numpy.ndarray, optional
        (Y, X) scribbles (0 none, c + 1 class c): those pixels get probability ``pinned``.
    weight : float
        Strength of the pairwise term (0 returns the unaries' probabilities).
    radius, eps : float
        Guided-filter window radius (px) and edge regularisation.
    iterations : int
        Mean-field updates.
    pinned : float
        Unary probability of a scribbled pixel's class.

    Returns
    -------
    torch.Tensor
        [C, Y, X] probabilities.
    """
    unary = log_probs.float().clone()
    n = unary.shape[0]
    if scribbles is not None and np.any(scribbles):
        ys, xs = np.nonzero(scribbles)
        cls = torch.as_tensor(scribbles[ys, xs].astype(np.int64) - 1, device=unary.device)
        yi = torch.as_tensor(ys, device=unary.device)
        xi = torch.as_tensor(xs, device=unary.device)
        low = float(np.log((1.0 - pinned) / max(n - 1, 1)))
        unary[:, yi, xi] = low
        unary[cls, yi, xi] = float(np.log(pinned))
    q = unary.softmax(0)
    if weight <= 0:
        return q
    smooth = GuidedFilter(guide.to(unary.device), radius, eps)
    for _ in range(iterations):
        # the filter is linear and keeps constants: the last class's message is 1 - the rest
        part = smooth(q[:-1])
        message = torch.cat([part, 1.0 - part.sum(0, keepdim=True)])
        q = (unary + weight * message).softmax(0)
    return q


def crf_applies(settings: RefineConfig | None, spatial_shape: tuple[int, ...]) -> bool:
    """Whether the edge-aware CRF runs: on, and the image no larger than the CRF's limit.

    Parameters
    ----------
    settings : RefineConfig or None
        The settings the current head state was tuned with (None: not tuned).
    spatial_shape : tuple of int
        (Y, X) or (Z, Y, X) of the image.

    Returns
    -------
    bool
        True when ``settings`` turn the CRF on (for bright or dark nuclei) and a slice has
        at most :data:`CRF_MAX_PIXELS` pixels.
    """
    height, width = spatial_shape[-2:]
    if settings is None or max(settings.crf_weight, settings.crf_weight_bright) <= 0:
        return False
    return height * width <= CRF_MAX_PIXELS

"""What the head trains on and the loss of Algorithm 1 (loop: :mod:`.refine_loop`).

Three ways to present scribbled pixels to the head, chosen by the adapter's geometry:

* point-wise head on cached features: the feature vectors of the scribbled pixels only,
  gathered into one row ``[1, F, 1, P]`` (a point-wise head treats every pixel alone, so
  any arrangement of pixels is a valid input, and a contiguous row is the fastest layout
  for 1x1 convolutions on the CPU); the cost grows with scribbled pixels, not image size;
* spatial head on cached features: each scribbled pixel with the features its output
  depends on (its ``(2 halo + 1)²`` neighbourhood), as one item of a batch whose outputs
  count at the centres only; a head of plain convolutions then runs them without padding,
  so each item costs one output pixel (:func:`centre_logits`);
* opaque model: each scribbled slice in full (a whole forward per step).

The loss is a weighted cross-entropy over the scribbled pixels (see :func:`pixel_weights`):
with ``class_balanced`` each scribbled class counts equally (the mean of per-class means),
and pixels added by region growing count ``grown_weight`` times a stroke pixel. With
``class_balanced=False, grown_weight=1`` it is the paper's plain mean cross-entropy.

With ``keep_weight > 0`` a second term keeps the prediction of unscribbled pixels near the
pre-trained head's: the mean KL divergence from its probabilities, over a random sample of
the image's unscribbled pixels (each with its neighbourhood for spatial heads) or over the
unscribbled pixels of the scribbled slices (opaque models). It is a proximity in
function space next to the paper's proximity in weight space: without it, strokes of a single
class (the usual case for a robot or a user correcting one kind of error) are satisfied
fastest by shifting the head's bias, which flips the whole image to that class.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import RefineConfig
from .history import Anchor
from .models.base import Features, SegmentationModel

__all__ = [
    "IGNORE",
    "Batch",
    "build_batches",
    "keep_batch",
    "loss_and_gradients",
    "pixel_weights",
    "scribble_targets",
]

IGNORE = -1
"""Target value of unscribbled pixels (the loss's ``ignore_index``)."""

SPATIAL_KEEP_SAMPLES = 1024
"""Unscribbled pixels (each with its halo) sampled for a spatial head's keep term."""

PATCH_CHUNK = 4096
"""Most scribbled pixels presented to a spatial head at once (each with its halo)."""

POINT_CHUNK = 262_144
"""Most scribbled pixels presented to a point-wise head at once."""

KEEP_SAMPLES = 4096
"""Unscribbled pixels sampled for the keep term (see the module docstring)."""


@dataclass
class Batch:
    """One forward's worth of training data.

    Attributes
    ----------
    features : Features
        Input to ``model.head``.
    target : torch.Tensor
        Long [N, h, w]: class index, or ``IGNORE``.
    weight : torch.Tensor or None
        Float [N, h, w]: each pixel's share of the loss (0 where ``IGNORE``), or None for
        the plain mean (cross-entropy sum divided by the number of scribbled pixels).
    keep : torch.Tensor or None
        Reference log-probabilities [N, C, h, w] that the head's output should stay near
        (the keep term), or None.
    keep_share : torch.Tensor or None
        Float [N, h, w]: each pixel's share of the keep term (with ``keep``).
    centres : bool
        The features are :func:`pixel_patches` items: the head's output counts at their
        centres only (:func:`centre_logits`; targets and shares are [P, 1, 1]).
    """

    features: Features
    target: torch.Tensor
    weight: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    keep_share: torch.Tensor | None = None
    centres: bool = False


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


def pixel_weights(used: np.ndarray, strokes: np.ndarray, config: RefineConfig) -> np.ndarray:
    """Return each scribbled pixel's share of the loss (sum 1; 0 where not scribbled).

    A pixel of the user's own strokes weighs 1 and a pixel added by region growing weighs
    ``config.grown_weight``. With ``config.class_balanced`` the weights are then normalised
    within each scribbled class and the classes averaged, so 455 background pixels and 20
    nucleus pixels pull equally hard; otherwise they are normalised over all pixels (plain
    weighted mean; with ``grown_weight = 1`` the paper's mean cross-entropy).

    Parameters
    ----------
    used : numpy.ndarray
        The scribbles the loss runs over (0 none, c + 1 class c), grown or not.
    strokes : array_like
        The user's scribbles before growing, same shape (only ``!= 0`` is used).
    config : RefineConfig
        Its ``class_balanced`` and ``grown_weight``.

    Returns
    -------
    numpy.ndarray
        float32 of ``used``'s shape.
    """
    used = np.asarray(used)
    weights = np.where(np.asarray(strokes) != 0, 1.0, float(config.grown_weight))
    weights = np.where(used != 0, weights, 0.0)
    if config.class_balanced:
        classes = np.unique(used[used != 0])
        for value in classes:
            mask = used == value
            total = float(weights[mask].sum())
            if total > 0:
                weights[mask] /= total * len(classes)
    total = float(weights.sum())
    if total > 0:
        weights /= total  # exact normalisation (also when a class carries zero weight)
    return weights.astype(np.float32)


def build_batches(
    model: SegmentationModel,
    features: Features,
    targets: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    keep_weight: float = 0.0,
    seed: int = 0,
    anchor: Anchor | None = None,
) -> list[Batch]:
    """Cut the cached features into what the head trains on (see module docstring).

    Parameters
    ----------
    model : SegmentationModel
        The adapter (its ``head_is_pointwise``, ``head_halo`` and ``trunk_is_cached``).
    features : Features
        Cached [N, F, Y, X] tensors (N = 1 or the number of slices).
    targets : numpy.ndarray
        Targets of shape (N, Y, X), ``IGNORE`` where not scribbled.
    weights : numpy.ndarray, optional
        Per-pixel loss weights of the same shape (from :func:`pixel_weights`); None for the
        plain mean.
    keep_weight : float
        Weight of the keep term (0 = none).
    seed : int
        Seed of the keep term's pixel sample.
    anchor : Anchor, optional
        Head weights whose output the keep term holds on to (the pre-trained head, by
        parameter name); default: the head as it is now.

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
        shares = None if weights is None else weights[z, y, x]
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
            share = None
            if shares is not None:
                share = torch.as_tensor(shares[start:stop], device=device)[None, None, :]
            batches.append(Batch(gathered, target, share))
        if keep_weight > 0:
            keep = keep_batch(model, features, targets, keep_weight, seed, anchor)
            if keep is not None:
                batches.append(keep)
        return batches

    if model.trunk_is_cached:
        z, y, x = np.nonzero(targets >= 0)
        labels = targets[z, y, x]
        shares = None if weights is None else weights[z, y, x]
        for start in range(0, len(z), PATCH_CHUNK):
            part = slice(start, start + PATCH_CHUNK)
            patches = pixel_patches(features, z[part], y[part], x[part], int(model.head_halo))
            target = torch.as_tensor(labels[part], device=device)[:, None, None]
            share = None
            if shares is not None:
                share = torch.as_tensor(shares[part], device=device)[:, None, None]
            batches.append(Batch(patches, target, share, centres=True))
        if keep_weight > 0 and batches:
            keep = keep_batch(model, features, targets, keep_weight, seed, anchor)
            if keep is not None:
                batches.append(keep)
        return batches

    cores: list[np.ndarray] = []  # where each slice's keep term counts
    for index in range(targets.shape[0]):
        plane = targets[index]
        if not (plane >= 0).any():
            continue
        whole = {k: v[index : index + 1].clone() for k, v in features.items()}
        share = None
        if weights is not None:
            share = torch.as_tensor(np.ascontiguousarray(weights[index]), device=device)[None]
        batches.append(Batch(whole, torch.as_tensor(plane, device=device)[None], share))
        cores.append(np.ones((1, *plane.shape), dtype=bool))
    _attach_keep(model, batches, cores, keep_weight, anchor)
    return batches


class Anchored:
    """Context in which the head's parameters hold the anchor's values (restored after)."""

    def __init__(self, model: SegmentationModel, anchor: Anchor | None) -> None:
        self.model, self.anchor = model, anchor
        self.saved: dict[str, torch.Tensor] = {}

    def __enter__(self) -> None:
        if self.anchor is None:
            return
        with torch.no_grad():
            for name, p in self.model.head_module.named_parameters():
                ref = self.anchor.get(name)
                if ref is not None and ref.shape == p.shape:
                    self.saved[name] = p.detach().clone()
                    p.copy_(ref.to(p.device))

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            params = dict(self.model.head_module.named_parameters())
            for name, value in self.saved.items():
                params[name].copy_(value)


def _attach_keep(
    model: SegmentationModel,
    batches: list[Batch],
    cores: list[np.ndarray],
    keep_weight: float,
    anchor: Anchor | None,
) -> None:
    """Give dense batches the keep term over their unscribbled core pixels (in place)."""
    if keep_weight <= 0 or not batches:
        return
    masks = [
        core & (b.target.cpu().numpy() == IGNORE) for b, core in zip(batches, cores, strict=True)
    ]
    total = sum(int(m.sum()) for m in masks)
    if total == 0:
        return
    with torch.no_grad(), Anchored(model, anchor):
        for batch, mask in zip(batches, masks, strict=True):
            device = batch.target.device
            batch.keep = model.head(batch.features).float().log_softmax(1).detach()
            share = mask.astype(np.float32) * np.float32(keep_weight / total)
            batch.keep_share = torch.as_tensor(share, device=device)


def pixel_patches(
    features: Features, z: np.ndarray, y: np.ndarray, x: np.ndarray, halo: int
) -> Features:
    """Gather each pixel's ``(2 halo + 1)²`` neighbourhood of features, one item per pixel.

    Outside the image the features are 0, as the head's own zero padding makes them there,
    so a spatial head's output at an item's centre is its output at that pixel of the whole
    image.

    Parameters
    ----------
    features : Features
        Cached [N, F, Y, X] tensors.
    z, y, x : numpy.ndarray
        Slice and pixel coordinates of the P pixels.
    halo : int
        The head's halo.

    Returns
    -------
    Features
        [P, F, 2 halo + 1, 2 halo + 1] tensors (copies).
    """
    first = next(iter(features.values()))
    device, (height, width) = first.device, first.shape[-2:]
    offsets = torch.arange(-halo, halo + 1, device=device)
    zi = torch.as_tensor(z, device=device)[:, None, None]
    yi = torch.as_tensor(y, device=device)[:, None, None] + offsets[None, :, None]
    xi = torch.as_tensor(x, device=device)[:, None, None] + offsets[None, None, :]
    inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)  # [P, k, k]
    yi, xi = yi.clamp(0, height - 1), xi.clamp(0, width - 1)
    out = {}
    for k, v in features.items():
        gathered = v[zi, :, yi, xi]  # [P, k, k, F]
        gathered = gathered * inside[..., None].to(gathered.dtype)
        out[k] = gathered.permute(0, 3, 1, 2).contiguous()
    return out


@contextmanager
def _valid_convolutions(module: nn.Module) -> Iterator[None]:
    """Run a head's convolutions without padding inside the block, when all are stride-1, odd.

    A ``(2 halo + 1)²`` item then gives its centre's output alone ([P, C, 1, 1]) instead of
    ``(2 halo + 1)²`` outputs of which only the centre is used. Other heads are left alone.
    """
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not all(
        all(s == 1 for s in m.stride) and all(k % 2 == 1 for k in m.kernel_size) for m in convs
    ):
        yield
        return
    before = [m.padding for m in convs]
    for m in convs:
        m.padding = (0, 0)
        if m.groups == 1 and all(d == 1 for d in m.dilation):
            m.forward = partial(_as_product, m)  # an instance attribute: removed after
    try:
        yield
    finally:
        for m, padding in zip(convs, before, strict=True):
            m.padding = padding
            m.__dict__.pop("forward", None)


def _as_product(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Run an unpadded convolution, as a matrix product when it leaves one pixel per item.

    On ``[P, F, k, k]`` items a convolution of size k is one product of the flattened
    items with the flattened kernel, three to four times faster on the CPU than
    ``conv2d`` on so small an input.
    """
    if tuple(x.shape[-2:]) != tuple(conv.kernel_size):
        return conv._conv_forward(x, conv.weight, conv.bias)
    out = F.linear(x.flatten(1), conv.weight.flatten(1), conv.bias)
    return out[:, :, None, None]


def centre_logits(model: SegmentationModel, patches: Features) -> torch.Tensor:
    """Compute the head's logits [P, C, 1, 1] at the centres of :func:`pixel_patches` items.

    Parameters
    ----------
    model : SegmentationModel
        The adapter (spatial head on cached features).
    patches : Features
        [P, F, k, k] items.

    Returns
    -------
    torch.Tensor
        The centre logits.
    """
    with _valid_convolutions(model.head_module):
        logits = model.head(patches)
    if logits.shape[-1] > 1:  # a head that kept its padding: its centre output is the one
        c = logits.shape[-1] // 2
        logits = logits[..., c : c + 1, c : c + 1]
    return logits


def keep_batch(
    model: SegmentationModel,
    features: Features,
    targets: np.ndarray,
    keep_weight: float,
    seed: int,
    anchor: Anchor | None = None,
) -> Batch | None:
    """Sample unscribbled pixels and record the head's current output on them.

    A point-wise head gets ``KEEP_SAMPLES`` pixels' feature vectors in one row
    ``[1, F, 1, P]``; a spatial head ``SPATIAL_KEEP_SAMPLES`` pixels, each with its halo
    (:func:`pixel_patches`, counted at the centres).

    Parameters
    ----------
    model : SegmentationModel
        The adapter (a head on cached features).
    features : Features
        Cached [N, F, Y, X] tensors.
    targets : numpy.ndarray
        (N, Y, X) targets, ``IGNORE`` where not scribbled.
    keep_weight : float
        The keep term's total weight (shared equally by the sampled pixels).
    seed : int
        Seed of the sample.
    anchor : Anchor, optional
        Head weights (by parameter name) to compute the reference output with; default the
        current head.

    Returns
    -------
    Batch or None
        The pixels' features, all-``IGNORE`` targets, per-pixel weights and the starting
        log-probabilities; None when nothing is unscribbled.
    """
    free = np.flatnonzero(targets.reshape(-1) < 0)
    if free.size == 0:
        return None
    spatial = not model.head_is_pointwise
    size = min(SPATIAL_KEEP_SAMPLES if spatial else KEEP_SAMPLES, free.size)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(free, size=size, replace=False))
    z, y, x = np.unravel_index(chosen, targets.shape)
    device = next(iter(features.values())).device
    if spatial:
        items = pixel_patches(features, z, y, x, int(model.head_halo))
        shape: tuple[int, ...] = (size, 1, 1)
    else:
        zi, yi, xi = (torch.as_tensor(a, device=device) for a in (z, y, x))
        items = {
            k: v[zi, :, yi, xi].t().contiguous()[None, :, None, :] for k, v in features.items()
        }
        shape = (1, 1, size)
    with torch.no_grad(), Anchored(model, anchor):
        logits = centre_logits(model, items) if spatial else model.head(items)
        start = logits.float().log_softmax(1).detach()
    target = torch.full(shape, IGNORE, dtype=torch.long, device=device)
    share = torch.full(shape, float(keep_weight) / size, device=device)
    return Batch(items, target, None, start, share, centres=spatial)


def loss_and_gradients(
    model: SegmentationModel, batches: list[Batch], n_scribbled: int
) -> tuple[float, int]:
    """Cross-entropy of the scribbled pixels, back-propagated into the head.

    Gradients accumulate over the batches (call ``zero_grad`` before). Batches with
    ``weight`` use the weighted sum (the weights sum to 1 over all batches); the others the
    plain mean over ``n_scribbled``.

    Parameters
    ----------
    model : SegmentationModel
        The adapter.
    batches : list of Batch
        From :func:`build_batches`.
    n_scribbled : int
        Total scribbled pixels (the plain mean's denominator).

    Returns
    -------
    loss : float
        (Weighted) mean cross-entropy.
    violations : int
        Scribbled pixels whose argmax is not their class.
    """
    total = 0.0
    wrong = 0
    for batch in batches:
        logits = (
            centre_logits(model, batch.features) if batch.centres else model.head(batch.features)
        )
        scribbled = batch.target != IGNORE
        if batch.weight is None:
            loss = F.cross_entropy(logits, batch.target, ignore_index=IGNORE, reduction="sum")
            loss = loss / n_scribbled
        else:
            per_pixel = F.cross_entropy(logits, batch.target, ignore_index=IGNORE, reduction="none")
            loss = (per_pixel * batch.weight.to(per_pixel.dtype)).sum()
        if batch.keep is not None and batch.keep_share is not None:
            log_p = logits.float().log_softmax(1)
            kl = (batch.keep.exp() * (batch.keep - log_p)).sum(1)
            loss = loss + (kl * batch.keep_share).sum()
        loss.backward()
        total += float(loss.detach())
        with torch.no_grad():
            wrong += int(((model.class_map(logits) != batch.target) & scribbled).sum())
    return total, wrong

"""Type strokes teach a small classifier that retypes the nuclei that look like them.

A model trained on other tissue often has every nucleus of one kind in the wrong type; a
pathologist's few type strokes say what each kind looks like. Here a small network (one
hidden layer) learns, from multiscale image features (intensity, edges and blobs at
several scales, as ilastik's pixel classifier uses), the stroke pixels' types against the
network's own types of the unscribbled nuclei, which weigh little (``prior_weight``): a
nucleus that looks like a stroke takes its type, one that looks like none keeps its own.
One scribbled type is enough. Nuclei scribbled by the user keep their strokes' type,
background stays background. Everything is 2D; stacks are handled slice by slice by the
caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy import ndimage as ndi

__all__ = ["classify_types", "feature_image", "pixel_features"]

SIGMAS = (1.0, 2.0, 4.0, 8.0)
"""Scales (px) of the image features."""

TRAIN_PIXELS = 1024
"""At most this many pixels of the unscribbled nuclei, and as many of each scribbled type,
train the classifier (spread samples)."""


def _feature_maps(plane: np.ndarray) -> Iterator[np.ndarray]:
    """Yield the unstandardised feature maps (Y, X) of a 2D image, one at a time."""
    channels = plane[..., None] if plane.ndim == 2 else plane
    for c in range(channels.shape[-1]):
        x = np.asarray(channels[..., c], dtype=np.float32)
        for sigma in SIGMAS:
            yield ndi.gaussian_filter(x, sigma)
            yield ndi.gaussian_gradient_magnitude(x, sigma)
            yield ndi.gaussian_laplace(x, sigma) * sigma**2


def _standardised(feature: np.ndarray) -> np.ndarray:
    std = float(feature.std())
    return (feature - feature.mean()) / (std if std > 0 else 1.0)


def feature_image(plane: np.ndarray) -> np.ndarray:
    """Multiscale intensity, edge and blob features of a 2D image, standardised.

    Parameters
    ----------
    plane : numpy.ndarray
        (Y, X) or (Y, X, C) image scaled to about [0, 1].

    Returns
    -------
    numpy.ndarray
        (Y, X, F) float32: smoothed intensity, gradient magnitude and scale-normalised
        Laplacian of each channel at each of :data:`SIGMAS`, each feature with zero mean
        and unit variance over the image.
    """
    return np.stack([_standardised(f) for f in _feature_maps(plane)], axis=-1)


def pixel_features(plane: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`feature_image` at a mask's pixels, holding one feature map at a time.

    Parameters
    ----------
    plane : numpy.ndarray
        (Y, X) or (Y, X, C) image scaled to about [0, 1].
    mask : numpy.ndarray
        (Y, X) bool: the pixels wanted.

    Returns
    -------
    numpy.ndarray
        (k, F) float32 features of the mask's k pixels in row-major order, equal to
        ``feature_image(plane)[mask]``.
    """
    return np.stack([_standardised(f)[mask] for f in _feature_maps(plane)], axis=1)


def _fit(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, n_out: int, steps: int, hidden: int, seed: int
) -> torch.nn.Module:
    """Fit a one-hidden-layer classifier with per-sample weights (summing to 1)."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.1, 0.1, generator=gen)
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(weight)
    opt = torch.optim.Adam(net.parameters(), lr=0.03, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        per_pixel = torch.nn.functional.cross_entropy(net(xt), yt, reduction="none")
        (per_pixel * wt).sum().backward()
        opt.step()
    return net


def _spread_sample(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most :data:`TRAIN_PIXELS` of a mask's pixels, every n-th from a random start."""
    ys, xs = np.nonzero(mask)
    step = max(1, ys.size // TRAIN_PIXELS)
    start = int(rng.integers(step))
    out = np.zeros_like(mask)
    out[ys[start::step], xs[start::step]] = True
    return out


def classify_types(
    describe: Callable[[np.ndarray], np.ndarray],
    instances: np.ndarray,
    class_map: np.ndarray,
    scribbles: np.ndarray,
    *,
    prior_weight: float = 0.01,
    steps: int = 100,
    hidden: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Retype the unscribbled nuclei that look like a type stroke.

    Parameters
    ----------
    describe : callable
        ``describe(mask)`` returns the (k, F) pixel features of a (Y, X) mask's k pixels
        in row-major order (:func:`pixel_features` of the image, or an index into a
        cached :func:`feature_image`).
    instances : numpy.ndarray
        (Y, X) integer instance labels, 0 = background.
    class_map : numpy.ndarray
        (Y, X) integer classes, one foreground class per instance.
    scribbles : numpy.ndarray
        (Y, X) scribbles (0 none, c + 1 class c); foreground classes (c >= 1) train.
    prior_weight : float
        Weight of the network's types of the unscribbled nuclei against the strokes: each
        of their classes (the scribbled types, and one "keep" class for the others) counts
        this share of a scribbled type. Small: a nucleus that looks like a stroke moves.
    steps, hidden : int
        Optimiser steps and hidden units of the classifier.
    seed : int
        Seed of its initial weights and of the training sample.

    Returns
    -------
    numpy.ndarray
        A new class map (``class_map``'s dtype); unchanged unless a type is scribbled.
    """
    instances = np.asarray(instances)
    class_map = np.asarray(class_map)
    typed = np.asarray(scribbles).astype(np.int64) - 1
    out = class_map.copy()
    stroke = typed >= 1
    classes = np.unique(typed[stroke])
    nuclei = (instances > 0) & (class_map > 0)
    scribbled_ids = np.unique(instances[stroke & (instances > 0)])
    free = nuclei & ~stroke & ~np.isin(instances, scribbled_ids)
    if classes.size == 0 or not free.any():
        return out
    keep = classes.size  # the class of "keeps its own type"
    lut = np.full(max(int(class_map.max()), int(classes.max())) + 1, keep, dtype=np.int64)
    lut[classes] = np.arange(classes.size)
    rng = np.random.default_rng(seed)
    prior = _spread_sample(free, rng)
    taught = np.logical_or.reduce([_spread_sample(typed == c, rng) for c in classes])
    feats = describe(taught | free)  # stroke and free pixels do not overlap
    index = np.full(free.shape, -1, dtype=np.int64)
    index[taught | free] = np.arange(len(feats))
    y_stroke = lut[typed[taught]]
    y_prior = lut[class_map[prior]]
    counts = np.bincount(y_stroke, minlength=keep + 1), np.bincount(y_prior, minlength=keep + 1)
    weight = np.concatenate([1.0 / counts[0][y_stroke], prior_weight / counts[1][y_prior]]).astype(
        np.float32
    )
    x = np.concatenate([feats[index[taught]], feats[index[prior]]])
    net = _fit(
        x, np.concatenate([y_stroke, y_prior]), weight / weight.sum(), keep + 1, steps, hidden,
        seed,
    )  # fmt: skip
    with torch.no_grad():
        prob = net(torch.from_numpy(feats[index[free]])).softmax(1).numpy()
    ids, lab = np.unique(instances[free], return_inverse=True)
    votes = np.zeros((ids.size, keep + 1))
    np.add.at(votes, lab, prob)
    choice = votes.argmax(1)[lab]
    out[free] = np.where(choice < keep, np.append(classes, 0)[choice], class_map[free])
    return out

"""Type strokes teach a small classifier that retypes every nucleus of the image.

A model trained on other tissue often has every nucleus of one kind in the wrong type; a
pathologist's few type strokes say what each kind looks like. Here a small network (one
hidden layer) learns the stroke pixels' types from multiscale image features (smoothed
intensity, gradient magnitude and Laplacian of each channel at several scales, as
ilastik's pixel classifier uses), and every unscribbled nucleus whose class is one of the
scribbled types takes the scribbled type its pixels vote for. Nuclei scribbled by the user
keep their strokes' type, nuclei of a class never scribbled keep theirs, background stays
background. Everything is 2D; stacks are handled slice by slice by the caller.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

__all__ = ["classify_types", "pixel_features"]

SIGMAS = (1.0, 2.0, 4.0, 8.0)
"""Scales (px) of the image features."""


def pixel_features(plane: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Multiscale intensity, edge and blob features of a 2D image at a mask's pixels.

    Parameters
    ----------
    plane : numpy.ndarray
        (Y, X) or (Y, X, C) image scaled to about [0, 1].
    mask : numpy.ndarray
        (Y, X) bool: the pixels wanted.

    Returns
    -------
    numpy.ndarray
        (k, F) float32 features of the mask's k pixels (row-major order), F = 3 per channel
        and scale.
    """
    channels = plane[..., None] if plane.ndim == 2 else plane
    out = []
    for c in range(channels.shape[-1]):
        x = channels[..., c].astype(np.float32)
        for sigma in SIGMAS:
            smooth = ndi.gaussian_filter(x, sigma)
            out.append(smooth[mask])
            out.append(ndi.gaussian_gradient_magnitude(x, sigma)[mask])
            out.append(ndi.gaussian_laplace(x, sigma)[mask] * sigma**2)
    return np.stack(out, axis=1).astype(np.float32)


def _fit(
    x: np.ndarray, y: np.ndarray, n_out: int, steps: int, hidden: int, seed: int
) -> torch.nn.Module:
    """Fit a one-hidden-layer classifier with class-balanced cross-entropy."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.1, 0.1, generator=gen)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    counts = torch.bincount(yt, minlength=n_out).float()  # every class has pixels
    weight = counts.sum() / counts
    opt = torch.optim.Adam(net.parameters(), lr=0.03, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt, weight=weight)
        loss.backward()
        opt.step()
    return net


def classify_types(
    plane: np.ndarray,
    instances: np.ndarray,
    class_map: np.ndarray,
    scribbles: np.ndarray,
    *,
    steps: int = 100,
    hidden: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Retype the unscribbled nuclei by a classifier trained on the type strokes.

    Parameters
    ----------
    plane : numpy.ndarray
        (Y, X) or (Y, X, C) image scaled to about [0, 1].
    instances : numpy.ndarray
        (Y, X) integer instance labels, 0 = background.
    class_map : numpy.ndarray
        (Y, X) integer classes, one foreground class per instance.
    scribbles : numpy.ndarray
        (Y, X) scribbles (0 none, c + 1 class c); foreground classes (c >= 1) train.
    steps, hidden : int
        Optimiser steps and hidden units of the classifier.
    seed : int
        Seed of its initial weights.

    Returns
    -------
    numpy.ndarray
        A new class map (``class_map``'s dtype); unchanged unless at least two types are
        scribbled.
    """
    instances = np.asarray(instances)
    class_map = np.asarray(class_map)
    scribbles = np.asarray(scribbles)
    out = class_map.copy()
    typed = scribbles.astype(np.int64) - 1
    train = typed >= 1
    classes = np.unique(typed[train])
    if classes.size < 2:
        return out
    nuclei = (instances > 0) & (class_map > 0)
    wanted = train | nuclei
    feats = pixel_features(plane, wanted)
    mean, std = feats.mean(0), feats.std(0)
    std[std == 0] = 1.0
    feats = (feats - mean) / std
    index = np.full(instances.shape, -1, dtype=np.int64)
    index[wanted] = np.arange(int(wanted.sum()))
    lut = np.full(int(classes.max()) + 1, -1, dtype=np.int64)
    lut[classes] = np.arange(classes.size)
    net = _fit(feats[index[train]], lut[typed[train]], classes.size, steps, hidden, seed)
    with torch.no_grad():
        prob = net(torch.from_numpy(feats[index[nuclei]])).softmax(1).numpy()
    ids, lab = np.unique(instances[nuclei], return_inverse=True)
    votes = np.zeros((ids.size, classes.size))
    np.add.at(votes, lab, prob)
    own = class_map[nuclei]
    scribbled_ids = np.unique(instances[train & (instances > 0)])
    free = ~np.isin(ids, scribbled_ids)
    movable = free[lab] & np.isin(own, classes)
    out[nuclei] = np.where(movable, classes[votes.argmax(1)][lab], own)
    return out

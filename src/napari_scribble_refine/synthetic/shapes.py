"""Nucleus geometry for the synthetic data: placement, shapes and HoVer-Net targets.

Shapes are star-convex: an ellipse whose radius is modulated by a few low harmonics, so
nuclei can be round, oval, kidney-like or irregular. Placement is rejection sampling with a
per-scene overlap budget; clustered placement makes touching nuclei. Everything is drawn
from one :class:`numpy.random.Generator`, so a seed fixes the scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class NucleusShape:
    """One placed nucleus.

    Attributes
    ----------
    cy, cx : float
        Centre in pixels.
    radius : float
        Mean radius in pixels.
    aspect : float
        Minor/major axis ratio (1 = round).
    angle : float
        Orientation of the major axis in radians.
    harmonics : numpy.ndarray
        (K, 2) amplitude and phase of radial harmonics 2..K+1.
    kind : int
        Class id (1-based) of the nucleus.
    """

    cy: float
    cx: float
    radius: float
    aspect: float
    angle: float
    harmonics: np.ndarray
    kind: int = 1

    def bbox(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """Bounding box of the nucleus clipped to an image of ``shape``.

        Parameters
        ----------
        shape : tuple of int
            Image shape (Y, X).

        Returns
        -------
        tuple of slice
            Row and column slices (possibly empty).
        """
        amp = float(np.abs(self.harmonics[:, 0]).sum()) if len(self.harmonics) else 0.0
        r = self.radius * (1.0 + amp) / max(self.aspect, 1e-3) ** 0.5 + 2
        y0 = int(max(np.floor(self.cy - r), 0))
        y1 = int(min(np.ceil(self.cy + r) + 1, shape[0]))
        x0 = int(max(np.floor(self.cx - r), 0))
        x1 = int(min(np.ceil(self.cx + r) + 1, shape[1]))
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))

    def rho(self, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
        """Normalised radial coordinate inside the bounding box.

        Parameters
        ----------
        shape : tuple of int
            Image shape (Y, X).

        Returns
        -------
        box : tuple of slice
            The bounding box.
        rho : numpy.ndarray
            Float32 array over the box: 0 at the centre, 1 on the outline, > 1 outside.
        """
        box = self.bbox(shape)
        yy = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None] - self.cy
        xx = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :] - self.cx
        c, s = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        # Ellipse with area pi * radius**2: semi-axes radius / sqrt(aspect), radius * sqrt(aspect).
        a = np.float32(self.radius / np.sqrt(self.aspect))
        b = np.float32(self.radius * np.sqrt(self.aspect))
        u = (xx * c + yy * s) / a
        v = (yy * c - xx * s) / b
        dist = np.sqrt(u * u + v * v)
        # cos(k phi + p) = Re(z**k e^{ip}) with z = e^{i phi}: no trigonometry per pixel.
        z = (u + 1j * v) / np.maximum(dist, np.float32(1e-6))
        zk = z
        scale = np.ones(dist.shape, np.float32)
        for amp, phase in self.harmonics:
            zk = zk * z
            scale += np.float32(amp) * (zk * np.exp(1j * phase)).real.astype(np.float32)
        rho = dist / np.maximum(scale, np.float32(0.3))
        return box, rho.astype(np.float32)


def random_shape(
    rng: np.random.Generator,
    cy: float,
    cx: float,
    radius: float,
    *,
    aspect: tuple[float, float] = (0.6, 1.0),
    irregularity: float = 0.08,
    kind: int = 1,
) -> NucleusShape:
    """Draw a random nucleus outline.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    cy, cx : float
        Centre.
    radius : float
        Mean radius in pixels.
    aspect : tuple of float
        Range of the minor/major axis ratio.
    irregularity : float
        Typical amplitude of the radial harmonics (0 = perfect ellipse).
    kind : int
        Class id.

    Returns
    -------
    NucleusShape
        The outline.
    """
    n_harm = 4
    amps = rng.normal(0.0, irregularity, n_harm) / np.arange(1, n_harm + 1) ** 0.7
    harmonics = np.stack([amps, rng.uniform(0, 2 * np.pi, n_harm)], axis=1)
    return NucleusShape(
        cy=float(cy),
        cx=float(cx),
        radius=float(radius),
        aspect=float(rng.uniform(*aspect)),
        angle=float(rng.uniform(0, np.pi)),
        harmonics=harmonics,
        kind=kind,
    )


def place_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    radius_sampler,
    *,
    n_target: int,
    max_overlap: float = 0.1,
    cluster_prob: float = 0.3,
    max_tries: int | None = None,
    allowed=None,
) -> tuple[list[NucleusShape], list[np.ndarray], np.ndarray]:
    """Place nuclei by rejection sampling with a limited overlap.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    shape : tuple of int
        Image shape (Y, X).
    radius_sampler : callable
        ``radius_sampler(rng) -> NucleusShape`` centred at (0, 0); it is moved into place.
    n_target : int
        How many nuclei to try to place.
    max_overlap : float
        Largest fraction of a new or an existing nucleus that may be covered by overlap.
    cluster_prob : float
        Probability that a candidate is placed against an existing nucleus (touching).
    max_tries : int, optional
        Candidate budget (default ``4 * n_target + 20``).
    allowed : callable, optional
        ``allowed(nucleus) -> bool`` vetoes candidates (e.g. a class outside its region).

    Returns
    -------
    shapes : list of NucleusShape
        Placed nuclei in painting order (later ones lie on top).
    rhos : list of numpy.ndarray
        Normalised radius of each nucleus over its bounding box.
    labels : numpy.ndarray
        uint16 instance map, later nuclei on top, ids 1..N in placement order.
    """
    labels = np.zeros(shape, np.uint16)
    areas: list[int] = []
    shapes: list[NucleusShape] = []
    rhos: list[np.ndarray] = []
    tries = max_tries if max_tries is not None else 4 * n_target + 20
    for _ in range(tries):
        if len(shapes) >= n_target:
            break
        nuc: NucleusShape = radius_sampler(rng)
        if shapes and rng.random() < cluster_prob:
            other = shapes[int(rng.integers(len(shapes)))]
            theta = rng.uniform(0, 2 * np.pi)
            dist = (other.radius + nuc.radius) * rng.uniform(0.8, 1.05)
            nuc.cy, nuc.cx = other.cy + dist * np.sin(theta), other.cx + dist * np.cos(theta)
        else:
            nuc.cy = rng.uniform(-nuc.radius * 0.5, shape[0] + nuc.radius * 0.5)
            nuc.cx = rng.uniform(-nuc.radius * 0.5, shape[1] + nuc.radius * 0.5)
        if allowed is not None and not allowed(nuc):
            continue
        box, rho = nuc.rho(shape)
        inside = rho <= 1.0
        area = int(inside.sum())
        if area < 6:
            continue
        under = labels[box][inside]
        hit = under[under > 0]
        if hit.size:
            if hit.size > max_overlap * area:
                continue
            ids, counts = np.unique(hit, return_counts=True)
            if np.any(counts > max_overlap * np.asarray(areas)[ids - 1]):
                continue
        shapes.append(nuc)
        rhos.append(rho)
        areas.append(area)
        view = labels[box]
        view[inside] = len(shapes)
    return shapes, rhos, labels


def drop_small_and_renumber(labels: np.ndarray, min_area: int = 6) -> np.ndarray:
    """Drop tiny fragments and renumber instances 1..N in raster order of first pixel.

    Parameters
    ----------
    labels : numpy.ndarray
        Instance map.
    min_area : int
        Instances with fewer pixels become background.

    Returns
    -------
    numpy.ndarray
        uint16 instance map numbered 1..N.
    """
    counts = np.bincount(labels.ravel())
    keep = counts >= min_area
    keep[0] = False
    ids = np.flatnonzero(keep)
    lut = np.zeros(len(counts), np.uint16)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint16)
    return lut[labels]


def hv_targets(labels: np.ndarray) -> np.ndarray:
    """HoVer-Net horizontal/vertical distance maps of an instance map.

    For each instance the x (column) and y (row) offsets from its centre of mass are scaled so
    that the negative side reaches -1 and the positive side +1, as in the official HoVer-Net
    training targets. Background is 0.

    Parameters
    ----------
    labels : numpy.ndarray
        (Y, X) instance map, 0 = background.

    Returns
    -------
    numpy.ndarray
        float32 (2, Y, X): channel 0 horizontal (x), channel 1 vertical (y).
    """
    hv = np.zeros((2, *labels.shape), np.float32)
    n = int(labels.max())
    if n == 0:
        return hv
    fg = labels > 0
    lab = labels[fg].astype(np.intp)
    yy, xx = np.nonzero(fg)
    counts = np.maximum(np.bincount(lab, minlength=n + 1), 1).astype(np.float64)
    for ch, coord in enumerate((xx, yy)):
        com = np.bincount(lab, weights=coord, minlength=n + 1) / counts
        d = coord - com[lab]
        lo = np.zeros(n + 1)
        hi = np.zeros(n + 1)
        np.minimum.at(lo, lab, d)
        np.maximum.at(hi, lab, d)
        out = np.where(d < 0, d / np.where(lo < 0, -lo, 1.0)[lab], d / np.where(hi > 0, hi, 1)[lab])
        hv[ch][fg] = out.astype(np.float32)
    return hv


def types_from_instances(labels: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Per-pixel class map from an instance map and each instance's class.

    Parameters
    ----------
    labels : numpy.ndarray
        Instance map 0..N.
    kinds : numpy.ndarray
        (N + 1,) class id per instance id; index 0 is ignored.

    Returns
    -------
    numpy.ndarray
        uint8 class map.
    """
    lut = np.asarray(kinds, np.uint8).copy()
    lut[0] = 0
    return lut[labels]


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, *, anisotropy: float = 1.0
) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation.

    Computed on a coarse grid and upsampled, so large ``sigma`` stays cheap.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    shape : tuple of int
        Output shape.
    sigma : float
        Correlation length in pixels.
    anisotropy : float
        Ratio of the x to the y correlation length (fibre-like stroma when large).

    Returns
    -------
    numpy.ndarray
        float32 field.
    """
    step = max(1, int(min(sigma, sigma * anisotropy) / 2))
    small = (shape[0] // step + 3, shape[1] // step + 3)
    noise = rng.standard_normal(small).astype(np.float32)
    noise = ndi.gaussian_filter(noise, (sigma / step, sigma * anisotropy / step), mode="wrap")
    if step > 1:
        noise = ndi.zoom(noise, step, order=1, prefilter=False)
    out = noise[: shape[0], : shape[1]]
    std = float(out.std())
    return (out - out.mean()) / (std if std > 0 else 1.0)

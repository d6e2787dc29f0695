"""Procedural nuclei with exact ground truth: fluorescence, brightfield grey and H&E.

Every function takes a seed and returns the same :class:`SyntheticSample` for the same
arguments. The images are meant to be realistic enough to train the built-in models and to
serve as sample data and test fixtures; they are never a substitute for real evaluation data.

The ground truth follows the HoVer-Net conventions: ``instances`` 0 = background, 1..N;
``types`` the per-pixel class (0 = background); ``hv`` (2, Y, X) with channel 0 the
horizontal (x) and channel 1 the vertical (y) offset from each nucleus's centre of mass,
scaled to [-1, 1] per nucleus and 0 on background.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .shapes import (
    NucleusShape,
    drop_small_and_renumber,
    hv_targets,
    place_nuclei,
    random_shape,
    smooth_field,
    types_from_instances,
)

FLUO_CLASSES = ["background", "nucleus"]
HE_CLASSES = ["background", "epithelial", "lymphocyte", "stromal"]

# Ruifrok & Johnston optical-density vectors (R, G, B) of haematoxylin and eosin.
_H_OD = np.array([0.650, 0.704, 0.286], np.float32)
_E_OD = np.array([0.072, 0.990, 0.105], np.float32)


@dataclass
class SyntheticSample:
    """A synthetic image with its ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        uint8, (Y, X) greyscale or (Y, X, 3) RGB.
    instances : numpy.ndarray
        uint16 (Y, X), 0 = background, 1..N.
    types : numpy.ndarray
        uint8 (Y, X) class per pixel, 0 = background.
    hv : numpy.ndarray
        float32 (2, Y, X) HoVer-Net targets (x then y), in [-1, 1], 0 on background.
    class_names : list of str
        Names of the classes in ``types``, index 0 = background.
    params : dict
        The scene parameters that were drawn (for inspection and model cards).
    """

    image: np.ndarray
    instances: np.ndarray
    types: np.ndarray
    hv: np.ndarray
    class_names: list[str]
    params: dict = field(default_factory=dict)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _finish(
    image: np.ndarray, labels: np.ndarray, kinds: list[int], class_names: list[str], params: dict
) -> SyntheticSample:
    """Renumber instances, derive types and HV maps, package a sample."""
    kind_lut = np.zeros(int(labels.max()) + 1, np.uint8)
    kind_lut[1:] = kinds
    types = types_from_instances(labels, kind_lut)
    instances = drop_small_and_renumber(labels)
    types[instances == 0] = 0
    return SyntheticSample(image, instances, types, hv_targets(instances), class_names, params)


def _paint(canvas: np.ndarray, box: tuple[slice, slice], values: np.ndarray) -> None:
    canvas[box] += values


def synthetic_fluorescence(
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    *,
    radius: float | None = None,
    coverage: float | None = None,
    brightfield: bool | None = None,
) -> SyntheticSample:
    """Synthetic nuclear-stain fluorescence (or brightfield-grey cytology) with ground truth.

    Parameters
    ----------
    shape : tuple of int
        Image shape (Y, X).
    seed : int
        Random seed; the same seed gives the same sample.
    radius : float, optional
        Typical nucleus radius in pixels (default: log-uniform in [4, 25]).
    coverage : float, optional
        Target fraction of the image covered by nuclei (default: uniform in [0.03, 0.5]).
    brightfield : bool, optional
        Render dark nuclei on a light background with grey cytoplasm, like brightfield
        cytology (default: with probability 0.2).

    Returns
    -------
    SyntheticSample
        ``image`` uint8 (Y, X), ``types`` 1 on nuclei, class names background/nucleus.
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    if brightfield is None:
        brightfield = bool(rng.random() < 0.2)
    if radius is None:
        radius = _log_uniform(rng, 4.0, 11.0) if brightfield else _log_uniform(rng, 4.0, 25.0)
    if coverage is None:
        coverage = rng.uniform(0.01, 0.06) if brightfield else rng.uniform(0.03, 0.5)
    spread = rng.uniform(0.08, 0.3)
    irregular = rng.uniform(0.02, 0.14)
    aspect_lo = rng.uniform(0.45, 0.85)
    n_target = int(min(coverage * shape[0] * shape[1] / (np.pi * radius**2) + 1, 800))
    max_overlap = 0.0 if rng.random() < 0.3 else rng.uniform(0.02, 0.2)

    def sampler(r: np.random.Generator) -> NucleusShape:
        rad = max(2.5, radius * float(r.lognormal(0.0, spread)))
        return random_shape(r, 0, 0, rad, aspect=(aspect_lo, 1.0), irregularity=irregular)

    shapes, rhos, labels = place_nuclei(
        rng,
        shape,
        sampler,
        n_target=n_target,
        max_overlap=max_overlap,
        cluster_prob=rng.uniform(0.0, 0.7) if not brightfield else 0.05,
    )

    # Per-image texture fields shared by all nuclei (cheap: computed once).
    grain = smooth_field(rng, shape, rng.uniform(0.8, 2.5))
    spots = np.clip(smooth_field(rng, shape, rng.uniform(0.8, 1.6)) - 1.6, 0, None)
    tex_amp = rng.uniform(0.0, 0.45)
    spot_amp = rng.uniform(0.0, 2.0)
    edge_soft = rng.uniform(0.05, 0.3)
    dome = rng.uniform(0.0, 0.5)
    mean_bright = 1.0
    bright_spread = rng.uniform(0.1, 0.6)
    blurry_frac = rng.uniform(0.0, 0.3) if rng.random() < 0.5 else 0.0

    sharp = np.zeros(shape, np.float32)
    blurry = np.zeros(shape, np.float32)
    for nuc, rho in zip(shapes, rhos, strict=True):
        box = nuc.bbox(shape)
        b = mean_bright * float(rng.lognormal(0.0, bright_spread))
        prof = np.clip((1.0 - rho) / edge_soft, 0.0, 1.0) * (1.0 - dome * np.minimum(rho, 1) ** 2)
        prof = prof * (1.0 + tex_amp * grain[box] + spot_amp * spots[box])
        target = blurry if rng.random() < blurry_frac else sharp
        _paint(target, box, np.maximum(prof, 0) * b)
    signal = ndi.gaussian_filter(sharp, rng.uniform(0.3, 1.3))
    if blurry_frac > 0:
        signal += ndi.gaussian_filter(blurry, rng.uniform(1.5, 3.5)) * rng.uniform(0.4, 0.9)

    # Debris: small unlabelled specks, some bright, some faint.
    n_debris = int(rng.integers(0, 25))
    if n_debris:
        debris = np.zeros(shape, np.float32)
        ys = rng.integers(0, shape[0], n_debris)
        xs = rng.integers(0, shape[1], n_debris)
        debris[ys, xs] = rng.uniform(2.0, 12.0, n_debris)
        signal += ndi.gaussian_filter(debris, rng.uniform(0.7, 1.4))

    illum = 1.0 + rng.uniform(0.0, 0.35) * smooth_field(rng, shape, max(shape) / 3)
    haze = np.clip(smooth_field(rng, shape, rng.uniform(8, 30)), 0, None) * rng.uniform(0, 0.08)
    if brightfield:
        image = _render_bfgray(rng, shape, shapes, signal, illum, haze, radius)
    else:
        background = rng.uniform(0.0, 0.12)
        sig = (signal + haze + background) * illum
        photons = _log_uniform(rng, 15.0, 400.0)
        sig = rng.poisson(np.clip(sig, 0, None) * photons).astype(np.float32) / photons
        sig += rng.normal(0.0, rng.uniform(0.002, 0.02), shape).astype(np.float32)
        peak = rng.uniform(50.0, 255.0)
        image = np.clip(sig * peak, 0, 255)
    params = {
        "modality": "brightfield-grey" if brightfield else "fluorescence",
        "radius": round(float(radius), 2),
        "coverage": round(float(coverage), 3),
        "n_nuclei": len(shapes),
        "seed": seed,
    }
    return _finish(
        np.round(image).astype(np.uint8), labels, [1] * len(shapes), FLUO_CLASSES, params
    )


def _render_bfgray(
    rng: np.random.Generator,
    shape: tuple[int, int],
    shapes: list[NucleusShape],
    signal: np.ndarray,
    illum: np.ndarray,
    haze: np.ndarray,
    radius: float,
) -> np.ndarray:
    """Dark nuclei inside pale cytoplasm on a bright background (brightfield cytology)."""
    cyto = np.zeros(shape, np.float32)
    for nuc in shapes:
        if rng.random() < 0.8:
            cell = random_shape(
                rng,
                nuc.cy + rng.normal(0, nuc.radius),
                nuc.cx + rng.normal(0, nuc.radius),
                nuc.radius * rng.uniform(3.0, 6.0),
                aspect=(0.5, 1.0),
                irregularity=0.15,
            )
            box, rho = cell.rho(shape)
            prof = np.clip((1.0 - rho) / 0.05, 0, 1) * (1.0 + 0.6 * (rho > 0.9))
            cyto[box] = np.maximum(cyto[box], prof)
    cyto = ndi.gaussian_filter(cyto, 0.8) * (1 + 0.1 * smooth_field(rng, shape, 3.0))
    light = rng.uniform(190.0, 240.0)
    dark = light * rng.uniform(0.35, 0.75)
    cyto_dark = rng.uniform(10.0, 45.0)
    image = light - cyto_dark * cyto - dark * np.clip(signal, 0, 1.5) / 1.2 - 60 * haze
    image = image * illum
    image = image + rng.normal(0.0, rng.uniform(1.0, 5.0), shape).astype(np.float32)
    return np.clip(image, 0, 255)


def synthetic_he(
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    *,
    scale: float | None = None,
    coverage: float | None = None,
) -> SyntheticSample:
    """Synthetic H&E histology with typed nuclei and ground truth.

    Nuclei are of three types that differ in size, shape, texture and stain:
    1 "epithelial" (large, oval or irregular, pale vesicular chromatin with a darker rim and
    nucleoli, in nests with purple cytoplasm), 2 "lymphocyte" (small, round, dark and dense,
    anywhere) and 3 "stromal" (elongated spindle nuclei in the eosin-rich stroma). Colours come
    from a Beer-Lambert model of haematoxylin and eosin optical densities whose vectors and
    strengths vary per image (stain augmentation).

    Parameters
    ----------
    shape : tuple of int
        Image shape (Y, X).
    seed : int
        Random seed; the same seed gives the same sample.
    scale : float, optional
        Magnification factor relative to 40x (default: uniform in [0.6, 1.4]).
    coverage : float, optional
        Target fraction of the image covered by nuclei (default: uniform in [0.08, 0.45]).

    Returns
    -------
    SyntheticSample
        ``image`` uint8 (Y, X, 3) RGB, types 1..3, class names :data:`HE_CLASSES`.
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    if scale is None:
        scale = rng.uniform(0.6, 1.4)
    if coverage is None:
        coverage = rng.uniform(0.08, 0.45)
    nest = smooth_field(rng, shape, rng.uniform(20, 45)) > rng.uniform(-0.8, 0.9)
    white = smooth_field(rng, shape, rng.uniform(10, 35)) > rng.uniform(0.8, 2.5)
    mix = rng.dirichlet([1.5, 1.0, 0.7])
    if not nest.any():
        mix[0] = 0.0
        mix /= mix.sum()
    radii = {1: (8.5, 15.0), 2: (4.0, 6.5), 3: (5.5, 9.0)}
    mean_area = sum(
        m * np.pi * (np.mean(radii[k]) * scale) ** 2 for k, m in zip((1, 2, 3), mix, strict=True)
    )
    n_target = int(min(coverage * shape[0] * shape[1] / mean_area + 1, 600))
    irr_epi = rng.uniform(0.05, 0.15)

    def sampler(r: np.random.Generator) -> NucleusShape:
        kind = int(r.choice(3, p=mix)) + 1
        rad = r.uniform(*radii[kind]) * scale
        if kind == 1:
            return random_shape(r, 0, 0, rad, aspect=(0.5, 0.95), irregularity=irr_epi, kind=1)
        if kind == 2:
            return random_shape(r, 0, 0, rad, aspect=(0.8, 1.0), irregularity=0.03, kind=2)
        return random_shape(r, 0, 0, rad, aspect=(0.15, 0.4), irregularity=0.04, kind=3)

    def allowed(nuc: NucleusShape) -> bool:
        y = int(np.clip(nuc.cy, 0, shape[0] - 1))
        x = int(np.clip(nuc.cx, 0, shape[1] - 1))
        if white[y, x]:
            return False
        return bool(nest[y, x]) if nuc.kind == 1 else (nuc.kind == 2 or not nest[y, x])

    shapes, rhos, labels = place_nuclei(
        rng,
        shape,
        sampler,
        n_target=n_target,
        max_overlap=0.0 if rng.random() < 0.3 else rng.uniform(0.02, 0.15),
        cluster_prob=rng.uniform(0.3, 0.8),
        allowed=allowed,
    )

    grain = smooth_field(rng, shape, rng.uniform(0.8, 1.8))
    spots = np.clip(smooth_field(rng, shape, 1.0) - 1.5, 0, None)
    h_map = np.zeros(shape, np.float32)
    for nuc, rho in zip(shapes, rhos, strict=True):
        box = nuc.bbox(shape)
        inside = np.clip((1.0 - rho) / 0.12, 0.0, 1.0)
        if nuc.kind == 1:
            rim = np.clip((rho - 0.65) / 0.35, 0, 1) * (rho <= 1.0)
            level = rng.uniform(0.35, 0.8)
            dens = level * (0.75 + 0.7 * rim + 0.35 * grain[box] + 1.5 * spots[box])
            for _ in range(int(rng.integers(0, 3))):
                ny = nuc.cy + rng.normal(0, nuc.radius * 0.25) - box[0].start
                nx = nuc.cx + rng.normal(0, nuc.radius * 0.25) - box[1].start
                yy, xx = np.ogrid[: dens.shape[0], : dens.shape[1]]
                nr = max(1.2, nuc.radius * rng.uniform(0.1, 0.17))
                dens = dens + 0.9 * np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / (2 * nr**2))
        elif nuc.kind == 2:
            dens = rng.uniform(1.0, 1.6) * (1.0 + 0.12 * grain[box])
        else:
            dens = rng.uniform(0.8, 1.3) * (1.0 + 0.15 * grain[box])
        h_map[box] += np.maximum(dens, 0) * inside
    h_map = ndi.gaussian_filter(h_map, rng.uniform(0.4, 1.1))

    fibres = 0.6 * smooth_field(rng, shape, 2.0, anisotropy=rng.uniform(2, 4))
    fibres += 0.8 * smooth_field(rng, shape, rng.uniform(4, 10))
    if rng.random() < 0.5 and shape[0] == shape[1]:
        fibres = fibres.T
    e_stroma = rng.uniform(0.15, 0.6) * (1.0 + 0.45 * fibres)
    e_cyto = rng.uniform(0.1, 0.4) * (1.0 + 0.2 * grain)
    nest_f = ndi.gaussian_filter(nest.astype(np.float32), 2.0)
    white_f = ndi.gaussian_filter(white.astype(np.float32), 2.0)
    e_map = (e_stroma * (1 - nest_f) + e_cyto * nest_f) * (1 - white_f)
    h_back = rng.uniform(0.02, 0.2) * (1 + 0.3 * grain) + rng.uniform(0.0, 0.25) * nest_f
    h_total = h_map + h_back * (1 - white_f)

    h_vec = np.abs(_H_OD + rng.normal(0, 0.07, 3)).astype(np.float32)
    e_vec = np.abs(_E_OD + rng.normal(0, 0.07, 3)).astype(np.float32)
    h_vec /= np.linalg.norm(h_vec)
    e_vec /= np.linalg.norm(e_vec)
    h_strength = rng.uniform(0.7, 1.6)
    e_strength = rng.uniform(0.4, 1.5)
    h_od = h_total[..., None] * h_vec * h_strength
    od = h_od + np.clip(e_map, 0, None)[..., None] * e_vec * e_strength
    white_level = rng.uniform(225.0, 252.0) + rng.normal(0, 4, 3)
    rgb = white_level * np.exp(-od)
    rgb += rng.normal(0.0, rng.uniform(0.5, 4.0), (*shape, 3))
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    params = {
        "modality": "H&E",
        "scale": round(float(scale), 3),
        "coverage": round(float(coverage), 3),
        "n_nuclei": len(shapes),
        "seed": seed,
    }
    return _finish(image, labels, [n.kind for n in shapes], HE_CLASSES, params)

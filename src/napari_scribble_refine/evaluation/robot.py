"""A deterministic robot user that scribbles where a segmentation is wrong.

At each interaction, for every class c, the robot finds the largest 8-connected region of
pixels that truly are class c, are not predicted as c and are not scribbled yet; regions
under ``min_region`` pixels are left alone. It draws one stroke inside that region along
the region's skeleton (the middle of the skeleton's longest path), extending it along the
region's major axis when the skeleton is short (a round nucleus has a point-like skeleton),
to a length of about ``0.9 * sqrt(area)`` clipped to [5, 60] px, with a width of 3 to 5 px
drawn from a seeded generator. Only pixels truly of class c that carry no scribble yet are
painted, so the robot never paints a wrong class and never overwrites a scribble.

Scribble values follow the package convention: 0 = none, 1 = background, c + 1 = class c.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.morphology import skeletonize

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Stroke:
    """One stroke drawn by the robot.

    Attributes
    ----------
    cls : int
        The class painted (scribble value ``cls + 1``).
    path : numpy.ndarray
        (n, 2) float (row, col) points of the stroke's centre line.
    width : int
        Brush width in pixels.
    length : float
        Arc length of ``path`` in pixels.
    target_length : float
        ``clip(0.9 * sqrt(region_area), 5, 60)``.
    region_area : int
        Area of the error region the stroke was drawn in.
    n_painted : int
        Pixels that received the scribble.
    """

    cls: int
    path: np.ndarray
    width: int
    length: float
    target_length: float
    region_area: int
    n_painted: int


def sample_seed(name: str, seed: int = 0) -> int:
    """Return a stable per-sample seed (independent of Python's hash randomisation).

    Parameters
    ----------
    name : str
        Sample identifier.
    seed : int
        Global seed.

    Returns
    -------
    int
        A non-negative seed.
    """
    return (zlib.crc32(name.encode()) + 1_000_003 * seed) % (2**31)


class RobotUser:
    """Scribble on the largest remaining error of every class, one stroke per class.

    Parameters
    ----------
    gt_cls : numpy.ndarray
        Ground-truth class map (Y, X): 0 = background, c = class c.
    n_classes : int
        Number of classes, background included.
    seed : int
        Seed of the stroke widths; the robot is deterministic given it.
    min_region : int
        Error regions smaller than this (pixels) are ignored.
    length_factor : float
        Stroke length is ``length_factor * sqrt(area)`` before clipping.
    length_range : tuple of float
        Clip range of the stroke length.
    width_range : tuple of int
        Inclusive range of brush widths.
    """

    def __init__(
        self,
        gt_cls: np.ndarray,
        n_classes: int,
        seed: int = 0,
        min_region: int = 30,
        length_factor: float = 0.9,
        length_range: tuple[float, float] = (5.0, 60.0),
        width_range: tuple[int, int] = (3, 5),
    ) -> None:
        self.gt = np.asarray(gt_cls)
        if self.gt.ndim != 2:
            raise ValueError(f"gt_cls must be 2D, got shape {self.gt.shape}")
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.min_region = int(min_region)
        self.length_factor = float(length_factor)
        self.length_range = (float(length_range[0]), float(length_range[1]))
        self.width_range = (int(width_range[0]), int(width_range[1]))

    def interact(
        self, pred_cls: np.ndarray, scribbles: np.ndarray, k: int
    ) -> tuple[np.ndarray, list[Stroke]]:
        """Draw the strokes of interaction ``k`` against a prediction.

        Parameters
        ----------
        pred_cls : numpy.ndarray
            The method's current class map, same shape as the ground truth.
        scribbles : numpy.ndarray
            Scribbles so far (not modified).
        k : int
            Interaction index (1-based); it seeds the stroke widths.

        Returns
        -------
        scribbles : numpy.ndarray
            A new array: the old scribbles plus this interaction's strokes.
        strokes : list of Stroke
            The strokes drawn (empty when no error region is large enough).
        """
        pred = np.asarray(pred_cls)
        if pred.shape != self.gt.shape or scribbles.shape != self.gt.shape:
            raise ValueError("pred_cls and scribbles must have the ground truth's shape")
        out = np.array(scribbles, dtype=np.uint8, copy=True)
        strokes: list[Stroke] = []
        free = out == 0
        for c in range(self.n_classes):
            truth = self.gt == c
            region = _largest_component(truth & (pred != c) & free)
            if region is None or region[2] < self.min_region:
                continue
            rng = np.random.default_rng([self.seed, int(k), c])
            width = int(rng.integers(self.width_range[0], self.width_range[1] + 1))
            stroke = self._stroke(region, width, c, truth & free, out)
            if stroke is not None:
                strokes.append(stroke)
                free = out == 0
        return out, strokes

    def _stroke(
        self,
        region: tuple[tuple[slice, slice], np.ndarray, int],
        width: int,
        c: int,
        paintable: np.ndarray,
        out: np.ndarray,
    ) -> Stroke | None:
        (sy, sx), mask, area = region
        target = float(np.clip(self.length_factor * np.sqrt(area), *self.length_range))
        path = stroke_path(mask, target)
        length = _arc_length(path)
        # Rasterise the centre line and thicken it to the brush width.
        pad = width
        h, w = self.gt.shape
        y0, x0 = max(sy.start - pad, 0), max(sx.start - pad, 0)
        y1, x1 = min(sy.stop + pad, h), min(sx.stop + pad, w)
        line = np.ones((y1 - y0, x1 - x0), dtype=bool)
        pix = _polyline_pixels(path) + np.array([sy.start - y0, sx.start - x0])
        line[pix[:, 0], pix[:, 1]] = False
        brush = ndi.distance_transform_edt(line) <= (width - 1) / 2
        paint = brush & paintable[y0:y1, x0:x1]
        n = int(np.count_nonzero(paint))
        if n == 0:
            return None
        out[y0:y1, x0:x1][paint] = c + 1
        shifted = path + np.array([sy.start, sx.start], dtype=float)
        return Stroke(c, shifted, width, length, target, area, n)


def _largest_component(mask: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray, int] | None:
    """Return the largest 8-connected component (ties: lowest label) as (bbox, crop, area)."""
    if not mask.any():
        return None
    labels, n = ndi.label(mask, structure=_EIGHT)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[0] = 0
    best = int(np.argmax(areas))
    bbox = ndi.find_objects((labels == best).astype(np.uint8))[0]
    crop = labels[bbox] == best
    return bbox, crop, int(areas[best])


def _arc_length(path: np.ndarray) -> float:
    if len(path) < 2:
        return 0.0
    return float(np.sum(np.hypot(*np.diff(path, axis=0).T)))


def _polyline_pixels(path: np.ndarray) -> np.ndarray:
    """Return the integer pixels of a polyline, sampled every quarter pixel."""
    if len(path) == 1:
        return np.round(path).astype(np.int64)
    pts = [path[:1]]
    for a, b in zip(path[:-1], path[1:], strict=True):
        n = max(int(np.ceil(np.hypot(*(b - a)) * 4)), 1)
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        pts.append(a + t * (b - a))
    return np.unique(np.round(np.concatenate(pts)).astype(np.int64), axis=0)


def _skeleton_longest_path(mask: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Return the skeleton's longest geodesic path near ``start`` (two Dijkstra sweeps)."""
    skel = skeletonize(mask)
    coords = np.argwhere(skel)
    if len(coords) == 0:
        return start[None].astype(float)
    if len(coords) == 1:
        return coords.astype(float)
    index = -np.ones(mask.shape, dtype=np.int64)
    index[skel] = np.arange(len(coords))
    rows, cols, weights = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ny, nx = coords[:, 0] + dy, coords[:, 1] + dx
        ok = (ny >= 0) & (ny < mask.shape[0]) & (nx >= 0) & (nx < mask.shape[1])
        nb = np.full(len(coords), -1)
        nb[ok] = index[ny[ok], nx[ok]]
        has = nb >= 0
        rows.append(np.flatnonzero(has))
        cols.append(nb[has])
        weights.append(np.full(int(has.sum()), np.hypot(dy, dx)))
    r, c, wgt = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    graph = coo_matrix((wgt, (r, c)), shape=(len(coords), len(coords))).tocsr()
    s0 = int(np.argmin(np.sum((coords - start) ** 2, axis=1)))
    d0 = dijkstra(graph, directed=False, indices=s0)
    a = int(np.argmax(np.where(np.isfinite(d0), d0, -1)))
    da, pred = dijkstra(graph, directed=False, indices=a, return_predecessors=True)
    b = int(np.argmax(np.where(np.isfinite(da), da, -1)))
    order = [b]
    while order[-1] != a:
        order.append(int(pred[order[-1]]))
    return coords[order[::-1]].astype(float)


def _ray(
    mask: np.ndarray, start: np.ndarray, direction: np.ndarray, budget: float
) -> tuple[np.ndarray, float]:
    """Walk from ``start`` along ``direction`` in half-pixel steps while inside ``mask``.

    Returns the points and the distance reached (at most ``budget``).
    """
    if budget <= 0:
        return np.zeros((0, 2)), 0.0
    steps = np.arange(0.5, budget + 1e-9, 0.5)
    if steps.size == 0 or steps[-1] < budget - 1e-9:
        steps = np.append(steps, budget)
    pts = start + steps[:, None] * direction
    pix = np.round(pts).astype(np.int64)
    inside = (
        (pix[:, 0] >= 0)
        & (pix[:, 0] < mask.shape[0])
        & (pix[:, 1] >= 0)
        & (pix[:, 1] < mask.shape[1])
    )
    inside[inside] = mask[pix[inside, 0], pix[inside, 1]]
    stop = np.flatnonzero(~inside)
    n = stop[0] if stop.size else len(pts)
    return pts[:n], float(steps[n - 1]) if n else 0.0


def _major_axis(mask: np.ndarray) -> np.ndarray:
    coords = np.argwhere(mask).astype(float)
    if len(coords) < 2:
        return np.array([0.0, 1.0])
    cov = np.cov((coords - coords.mean(axis=0)).T)
    vals, vecs = np.linalg.eigh(cov)
    v = vecs[:, int(np.argmax(vals))]
    # A fixed sign keeps the stroke deterministic across platforms.
    if v[1] < 0 or (v[1] == 0 and v[0] < 0):
        v = -v
    return v


def stroke_path(mask: np.ndarray, target: float) -> np.ndarray:
    """Return the centre line of a stroke of about ``target`` px inside ``mask``.

    The middle stretch of the skeleton's longest path (the one nearest the region's deepest
    point when the skeleton falls apart); when that path is shorter than ``target`` it is
    extended at both ends along the major axis, as far as the region allows.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean region (a crop is fine).
    target : float
        Desired arc length in pixels.

    Returns
    -------
    numpy.ndarray
        (n, 2) float (row, col) points inside ``mask``.
    """
    padded = np.pad(mask, 1)
    dist = ndi.distance_transform_edt(padded)[1:-1, 1:-1]
    deepest = np.array(np.unravel_index(int(np.argmax(dist)), mask.shape), dtype=float)
    path = _skeleton_longest_path(mask, deepest)
    seg = np.hypot(*np.diff(path, axis=0).T) if len(path) > 1 else np.zeros(0)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = float(cum[-1])
    if total >= target:
        lo = (total - target) / 2
        hi = lo + target
        inner = path[(cum > lo) & (cum < hi)]
        ends = [
            np.array([np.interp(t, cum, path[:, 0]), np.interp(t, cum, path[:, 1])])
            for t in (lo, hi)
        ]
        return np.vstack([ends[0], inner, ends[1]])
    axis = _major_axis(mask)
    if total > 0 and np.dot(axis, path[-1] - path[0]) < 0:
        axis = -axis
    missing = target - total
    head, got_head = _ray(mask, path[0], -axis, missing / 2)
    tail, got_tail = _ray(mask, path[-1], axis, missing - got_head)
    if got_head + got_tail < missing - 1e-9 and got_head >= missing / 2 - 1e-9:
        # the tail hit the boundary: the head may use what is left
        head, got_head = _ray(mask, path[0], -axis, missing - got_tail)
    return np.vstack([head[::-1], path, tail])

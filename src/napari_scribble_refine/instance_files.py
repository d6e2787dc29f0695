"""Corrected nuclei as files other tools read: TIFF labels, a CSV of types, GeoJSON polygons.

* ``<prefix>_instances.tif``: the instance labels (uint32, 0 = background);
* ``<prefix>_types.csv``: one row per nucleus: id, class index and name, area in pixels and
  centroid (z, y, x for stacks);
* ``<prefix>.geojson``: a FeatureCollection with one polygon per nucleus (per slice for
  stacks) in pixel coordinates (x right, y down), its type as a QuPath-style
  ``classification`` (name and colour), so QuPath, napari-geojson or GIS tools import it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.measure import find_contours

__all__ = ["instance_features", "instance_rows", "write_instances"]


def instance_rows(
    labels: np.ndarray,
    classes: Mapping[int, int],
    class_names: Sequence[str],
    origin: Sequence[int] | None = None,
) -> list[dict[str, object]]:
    """One record per instance: id, class, area and centroid.

    Parameters
    ----------
    labels : numpy.ndarray
        Instance labels, (Y, X) or (Z, Y, X), 0 = background.
    classes : mapping of int to int
        Instance id -> class index (a missing id counts as class 1).
    class_names : sequence of str
        Class names, index 0 = background.
    origin : sequence of int, optional
        Where the labels' first pixel lies in the image (a region of a large image): the
        centroids are then in the image's pixels.

    Returns
    -------
    list of dict
        Keys ``id``, ``class``, ``class_name``, ``area_px`` and ``centroid_z`` (stacks),
        ``centroid_y``, ``centroid_x``; sorted by id.
    """
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return []
    areas = np.bincount(labels.ravel())[ids]
    centres = ndi.center_of_mass(np.ones(labels.shape), labels, ids)
    shift = np.zeros(labels.ndim) if origin is None else np.asarray(origin, float)
    axes = ("z", "y", "x")[-labels.ndim :]
    rows = []
    for i, area, centre in zip(ids.tolist(), areas, centres, strict=True):
        c = int(classes.get(i, 1))
        row: dict[str, object] = {"id": i, "class": c, "class_name": _name(class_names, c)}
        row["area_px"] = int(area)
        at = np.asarray(centre) + shift
        row.update({f"centroid_{a}": round(float(v), 2) for a, v in zip(axes, at, strict=True)})
        rows.append(row)
    return rows


def _name(class_names: Sequence[str], c: int) -> str:
    return str(class_names[c]) if 0 <= c < len(class_names) else f"class {c}"


def _ring(mask: np.ndarray) -> list[list[float]] | None:
    """Return the outer boundary of a 2D mask: a closed ring of [x, y] pixel-corner points."""
    padded = np.pad(mask.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return None
    outer = max(contours, key=len)  # the longest contour is the outer boundary
    ring = [[round(float(x) - 0.5, 2), round(float(y) - 0.5, 2)] for y, x in outer]
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring if len(ring) >= 4 else None


def instance_features(
    labels: np.ndarray,
    classes: Mapping[int, int],
    class_names: Sequence[str],
    colours: Mapping[int, Sequence[float]] | None = None,
    origin: Sequence[int] | None = None,
) -> dict[str, object]:
    """Instances as a GeoJSON FeatureCollection of polygons (see the module docstring).

    Parameters
    ----------
    labels : numpy.ndarray
        Instance labels, (Y, X) or (Z, Y, X).
    classes : mapping of int to int
        Instance id -> class index.
    class_names : sequence of str
        Class names, index 0 = background.
    colours : mapping of int to sequence of float, optional
        Class index -> RGB(A) in [0, 1] for the classification colour.
    origin : sequence of int, optional
        Where the labels' first pixel lies in the image (a region of a large image): the
        polygons (and slices) are then in the image's pixels.

    Returns
    -------
    dict
        The FeatureCollection (``json.dumps`` writes it).
    """
    planes = labels if labels.ndim == 3 else labels[None]
    shift = [0] * (3 - labels.ndim) + list(origin if origin is not None else [0] * labels.ndim)
    oz, oy, ox = (int(v) for v in shift)
    features = []
    for z, plane in enumerate(planes):
        for i, window in enumerate(ndi.find_objects(plane), start=1):
            if window is None:
                continue
            (sy, sx) = window
            ring = _ring(plane[window] == i)
            if ring is None:
                continue
            ring = [[x + sx.start + ox, y + sy.start + oy] for x, y in ring]
            c = int(classes.get(i, 1))
            classification: dict[str, object] = {"name": _name(class_names, c)}
            if colours is not None and c in colours:
                classification["color"] = [int(round(255 * v)) for v in list(colours[c])[:3]]
            properties: dict[str, object] = {
                "objectType": "detection",
                "id": i,
                "classification": classification,
            }
            if labels.ndim == 3:
                properties["z"] = z + oz
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": properties,
                }
            )
    return {"type": "FeatureCollection", "features": features}


def write_instances(
    prefix: str | Path,
    labels: np.ndarray,
    classes: Mapping[int, int],
    class_names: Sequence[str],
    colours: Mapping[int, Sequence[float]] | None = None,
    origin: Sequence[int] | None = None,
) -> list[Path]:
    """Write the TIFF labels, the CSV of types and the GeoJSON polygons of some instances.

    Parameters
    ----------
    prefix : str or Path
        Output prefix: ``<prefix>_instances.tif``, ``<prefix>_types.csv``,
        ``<prefix>.geojson``; existing files are replaced.
    labels, classes, class_names, colours
        As for :func:`instance_features`.
    origin : sequence of int, optional
        Where the labels' first pixel lies in the image (a region of a large image): the
        CSV's centroids and the GeoJSON's polygons are then in the image's pixels (the
        TIFF holds the region).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ValueError
        When the prefix's folder does not exist.
    """
    prefix = Path(prefix).expanduser()
    if not prefix.parent.is_dir():
        raise ValueError(
            f"{str(prefix)!r}: the folder {str(prefix.parent)!r} does not exist; create it or "
            "choose another"
        )
    labels = np.asarray(labels)
    tiff = prefix.with_name(prefix.name + "_instances.tif")
    table = prefix.with_name(prefix.name + "_types.csv")
    shapes = prefix.with_name(prefix.name + ".geojson")
    tifffile.imwrite(tiff, labels.astype(np.uint32), compression="zlib")
    rows = instance_rows(labels, classes, class_names, origin)
    axes = ("z", "y", "x")[-labels.ndim :]
    fields = ["id", "class", "class_name", "area_px", *(f"centroid_{a}" for a in axes)]
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    collection = instance_features(labels, classes, class_names, colours, origin)
    shapes.write_text(json.dumps(collection))
    return [tiff, table, shapes]

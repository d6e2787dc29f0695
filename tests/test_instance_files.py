"""Nuclei written for other tools: TIFF labels, a CSV of types, GeoJSON polygons."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from skimage.draw import disk, polygon

from napari_scribble_refine.cli import main
from napari_scribble_refine.instance_files import instance_features, write_instances

NAMES = ["background", "other", "epithelial"]


def _nuclei() -> tuple[np.ndarray, dict[int, int]]:
    labels = np.zeros((80, 100), np.int32)
    labels[disk((20, 25), 9)] = 1
    labels[disk((50, 70), 12)] = 2
    labels[60:75, 10:30] = 5  # ids need not be consecutive
    return labels, {1: 1, 2: 2, 5: 2}


def _raster(ring: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside a ring of pixel-corner [x, y] points."""
    xy = np.asarray(ring)
    mask = np.zeros(shape, bool)
    mask[polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)] = True
    return mask


def test_polygons_outline_each_nucleus_with_its_type():
    labels, classes = _nuclei()
    colours = {1: (1.0, 0.0, 0.0), 2: (0.0, 0.5, 1.0, 1.0)}
    shapes = instance_features(labels, classes, NAMES, colours)
    assert shapes["type"] == "FeatureCollection" and len(shapes["features"]) == 3
    for feature in shapes["features"]:
        props = feature["properties"]
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]  # closed
        truth = labels == props["id"]
        drawn = _raster(ring, labels.shape)
        assert (drawn & truth).sum() / (drawn | truth).sum() > 0.9
        assert props["classification"]["name"] == NAMES[classes[props["id"]]]
    by_id = {f["properties"]["id"]: f["properties"]["classification"] for f in shapes["features"]}
    assert by_id[1]["color"] == [255, 0, 0] and by_id[5]["color"] == [0, 128, 255]
    json.dumps(shapes)  # serialisable as it is


def test_the_three_files_agree(tmp_path):
    labels, classes = _nuclei()
    files = write_instances(tmp_path / "slide", labels, classes, NAMES)
    assert [f.name for f in files] == ["slide_instances.tif", "slide_types.csv", "slide.geojson"]
    np.testing.assert_array_equal(tifffile.imread(files[0]), labels)
    with files[1].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], r["class_name"]) for r in rows] == [
        ("1", "other"),
        ("2", "epithelial"),
        ("5", "epithelial"),
    ]
    assert int(rows[2]["area_px"]) == 15 * 20
    assert float(rows[2]["centroid_y"]) == 67.0 and float(rows[2]["centroid_x"]) == 19.5
    assert len(json.loads(files[2].read_text())["features"]) == 3
    with pytest.raises(ValueError, match="does not exist; create it"):
        write_instances(tmp_path / "missing" / "x", labels, classes, NAMES)


def test_stacks_give_polygons_per_slice_and_3d_centroids(tmp_path):
    labels, classes = _nuclei()
    stack = np.stack([labels, np.where(labels == 2, 2, 0)])
    shapes = instance_features(stack, classes, NAMES)
    assert sorted((f["properties"]["z"], f["properties"]["id"]) for f in shapes["features"]) == [
        (0, 1),
        (0, 2),
        (0, 5),
        (1, 2),
    ]
    files = write_instances(tmp_path / "stack", stack, classes, NAMES)
    with files[1].open() as handle:
        header = next(csv.reader(handle))
    assert header[-3:] == ["centroid_z", "centroid_y", "centroid_x"]


def test_the_command_line_writes_types_and_polygons(tmp_path):
    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

    sample = synthetic_fluorescence((96, 96), seed=920_000)
    tifffile.imwrite(tmp_path / "img.tif", sample.image)
    args = ["predict", str(tmp_path / "img.tif"), "--out", str(tmp_path / "res"), "--no-progress"]
    assert main(args) == 0
    labels = tifffile.imread(tmp_path / "res_instances.tif")
    shapes = json.loads((tmp_path / "res.geojson").read_text())
    assert len(shapes["features"]) == len(np.unique(labels)) - 1 > 0
    assert (tmp_path / "res_types.csv").read_text().startswith("id,class,class_name,area_px")

"""A large (multiscale, lazy) image in a real viewer: the widget works on the region in view."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from _lazy_arrays import CountingArray
from _qt_helpers import click

from napari_scribble_refine.scripting import open_widget
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

SIDE = 16384


BLANK_FROM = SIDE - 3000
"""Columns from here on are scanner background (every pixel 0)."""


@pytest.fixture
def slide(make_napari_viewer, fluo_model):
    scene = synthetic_fluorescence((256, 256), seed=5)
    source = CountingArray(scene.image, (SIDE, SIDE), blank_from_column=BLANK_FROM)
    level0 = da.from_array(source, chunks=512, asarray=False)
    level1 = np.tile(scene.image[::4, ::4], (SIDE // 256, SIDE // 256))
    viewer = make_napari_viewer(show=True)
    viewer.add_image([level0, level1], name="slide", multiscale=True, contrast_limits=(0, 255))
    widget = open_widget(viewer, image="slide", model=fluo_model, device="cpu")
    widget.configure(max_iterations=10)
    return viewer, widget, scene, source


def _look_at(viewer, qtbot, centre: tuple[float, float], side: float) -> None:
    """Pan and zoom so that about ``side`` level-0 pixels fill the canvas; let it draw."""
    viewer.camera.center = centre
    canvas = viewer.window._qt_viewer.canvas.size
    viewer.camera.zoom = min(canvas) / side
    qtbot.wait(300)


def _region(layer) -> tuple[slice, slice]:
    (y, x), (h, w) = np.round(layer.translate).astype(int), layer.data.shape
    return slice(y, y + h), slice(x, x + w)


def test_predict_refine_and_move_on_a_large_image(slide, qtbot, tmp_path):
    viewer, widget, scene, source = slide
    _look_at(viewer, qtbot, (8000, 8000), 600)
    before = source.read_pixels
    click(qtbot, widget._buttons.predict, widget)
    prediction = widget.prediction_layer
    region = _region(prediction)
    height, width = prediction.data.shape
    assert 500 <= height <= 2048 and 500 <= width <= 2048  # what is on screen, not 6144²
    assert region[0].start <= 8000 < region[0].stop and region[1].start <= 8000 < region[1].stop
    session = widget.session
    assert session.slide is not None and session.origin == (region[0].start, region[1].start)
    np.testing.assert_array_equal(prediction.data, session.prediction)
    assert widget.instances_layer.data.shape == (height, width)
    assert source.read_pixels - before < 0.05 * SIDE * SIDE  # tiles under the view only

    scribbles = widget.new_scribbles()
    assert scribbles.data.shape == (height, width)
    np.testing.assert_allclose(scribbles.translate, prediction.translate)
    truth = np.tile(scene.types > 0, (SIDE // 256, SIDE // 256))[region]
    marks = np.zeros((height, width), np.uint8)
    marks[::9] = truth[::9] + 1
    scribbles.data = marks
    pretrained = prediction.data.copy()
    click(qtbot, widget._buttons.refine, widget)
    assert not np.array_equal(prediction.data, pretrained)
    np.testing.assert_array_equal(prediction.data, session.prediction)
    click(qtbot, widget._buttons.undo, widget)
    np.testing.assert_array_equal(prediction.data, pretrained)
    click(qtbot, widget._buttons.redo, widget)
    tuned = session.model.head_state()["weights"]
    # Commit and Export place the region's nuclei where they lie in the slide
    click(qtbot, widget._buttons.commit)
    committed = viewer.layers["slide corrected"]
    np.testing.assert_allclose(committed.translate, prediction.translate)
    np.testing.assert_array_equal(committed.data, widget.instances_layer.data)
    files = widget.export(tmp_path / "slide")
    shapes = json.loads(files[2].read_text())["features"]
    xs = [x for f in shapes for x, _ in f["geometry"]["coordinates"][0]]
    ys = [y for f in shapes for _, y in f["geometry"]["coordinates"][0]]
    assert region[1].start - 1 <= min(xs) and max(xs) <= region[1].stop
    assert region[0].start - 1 <= min(ys) and max(ys) <= region[0].stop
    rows = files[1].read_text().splitlines()[1:]
    centroid_y = [float(r.split(",")[-2]) for r in rows]
    assert all(region[0].start <= c < region[0].stop for c in centroid_y)

    _look_at(viewer, qtbot, (800, 5200), 400)  # another part of the slide
    click(qtbot, widget._buttons.predict, widget)
    moved = _region(widget.prediction_layer)
    assert moved != region and moved[0].start <= 800 < moved[0].stop
    assert widget.session is not session and widget.session.slide is session.slide
    assert widget.session.history_labels[-1] == "tuned on the slide"
    now = widget.session.model.head_state()["weights"]
    assert all(np.array_equal(tuned[k].cpu(), now[k].cpu()) for k in tuned)
    # the old region's scribbles are refused here, with what to do
    widget._pickers.scribbles.value = scribbles
    assert widget.refine() is None
    assert "another region" in widget._status.value

    # Predict on blank background fails and leaves the last region's work usable
    here = widget.session
    _look_at(viewer, qtbot, (8000, SIDE - 1000), 600)
    click(qtbot, widget._buttons.predict, widget)
    assert "blank" in widget._status.value and "nothing to segment" in widget._status.value
    click(qtbot, widget._buttons.reset, widget)
    assert widget.session.origin == here.origin and not widget.session.closed
    assert widget._status.value == "Model reset to its pre-trained weights"


def test_points_outside_the_region_are_refused_with_what_to_do(slide, qtbot):
    viewer, widget, _, _ = slide
    _look_at(viewer, qtbot, (8000, 8000), 600)
    click(qtbot, widget._buttons.predict, widget)
    points = widget.new_points()
    points.add([[100.0, 100.0]])  # far outside the predicted region
    assert widget.refine() is None
    assert "outside the region Predict worked on" in widget._status.value


def test_scribbles_need_a_prediction_first_on_a_large_image(slide, notifications):
    _, widget, _, _ = slide
    assert widget.new_scribbles() is None
    assert any("Predict first" in text for text in notifications.errors())


def test_apply_to_others_leaves_a_large_image_alone(docked, qtbot, fluo_sample):
    from _qt_helpers import truth_scribbles

    big = da.from_array(CountingArray(fluo_sample.image, (SIDE, SIDE)), chunks=1024, asarray=False)
    docked.viewer.add_image(
        [big, big[::8, ::8]], name="slide", multiscale=True, contrast_limits=(0, 255)
    )
    docked._pickers.image.value = docked.viewer.layers["nuclei"]
    click(qtbot, docked._buttons.predict, docked)
    docked.new_scribbles().data = truth_scribbles(fluo_sample.types)
    click(qtbot, docked._buttons.refine, docked)
    assert docked.apply_to_others(wait=True) is None  # nothing else it can take whole
    assert "slide too large to predict whole" in docked._status.value

"""Retype mode: a click on the canvas with a type brush retypes a whole nucleus."""

from __future__ import annotations

import numpy as np
from _qt_helpers import click
from qtpy.QtCore import QPoint, Qt
from scipy import ndimage as ndi

from napari_scribble_refine._napari import _layers
from napari_scribble_refine.scripting import open_widget
from napari_scribble_refine.synthetic.scenes import synthetic_he


def _canvas_point(viewer, pixel: tuple[int, int]) -> QPoint:
    """Where a data pixel of a 2D view is on the canvas (checked against napari's inverse)."""
    canvas = viewer.window._qt_viewer.canvas
    transform = canvas.view.transform * canvas.view.scene.transform
    x, y = transform.map([pixel[1], pixel[0]])[:2]
    back = canvas._map_canvas2world((x, y), canvas.view)
    np.testing.assert_allclose(back[-2:], pixel, atol=0.5)
    return QPoint(round(x), round(y))


def test_a_click_with_a_type_brush_retypes_the_whole_nucleus(make_napari_viewer, he_model, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(synthetic_he((128, 128), seed=2).image, name="he", rgb=True)
    widget = open_widget(viewer, image="he", model=he_model, device="cpu")
    click(qtbot, widget._buttons.predict, widget)
    instances, prediction = widget.instances_layer, widget.prediction_layer
    types = widget._images.types(viewer.layers["he"])
    areas = np.bincount(instances.data.ravel())
    areas[0] = 0
    label = int(areas.argmax())  # the largest nucleus: a click lands well inside it
    nucleus = instances.data == label
    was = types[label]
    new = 1 + was % (len(widget.class_names) - 1)  # another nucleus type
    before = prediction.data.copy()
    inside = ndi.distance_transform_edt(nucleus)
    pixel = np.unravel_index(inside.argmax(), inside.shape)

    scribbles = widget.new_scribbles()
    scribbles.brush_size = 3
    widget.select_class(new)
    click(qtbot, widget._retype.button)  # Retype mode on
    assert widget._retype.on and viewer.layers.selection.active == scribbles
    assert scribbles.mode == "paint"
    canvas = viewer.window._qt_viewer.canvas.native
    point = _canvas_point(viewer, pixel)
    qtbot.mouseMove(canvas, point)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=point)

    assert scribbles.data[pixel] == new + 1  # the dot: the constraint the next Refine learns
    assert 0 < (scribbles.data > 0).sum() < nucleus.sum()
    assert (prediction.data[nucleus] == new).all()  # the whole nucleus, at once
    np.testing.assert_array_equal(prediction.data[~nucleus], before[~nucleus])  # only it
    assert types[label] == new
    np.testing.assert_allclose(instances.colormap.map(label), _layers.class_colour(new))
    assert widget.class_names[new] in widget._status.value

    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # napari's undo
    assert not scribbles.data.any()
    np.testing.assert_array_equal(prediction.data, before)
    assert types[label] == was
    np.testing.assert_allclose(instances.colormap.map(label), _layers.class_colour(was))

    redo = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(canvas, Qt.Key.Key_Z, redo)  # napari's redo: the dot, and the retype
    assert scribbles.data[pixel] == new + 1 and types[label] == new
    committed = widget.commit()  # Commit keeps the type shown
    row = list(committed.features["index"]).index(label)
    assert committed.features["type"][row] == widget.class_names[new]
    widget.configure(max_iterations=3, region_growing=False)
    click(qtbot, widget._buttons.refine, widget)  # the dot is a constraint it learns
    refined = widget.instances_layer.data
    assert refined[pixel] > 0
    assert widget.last_outcome.instance_classes[int(refined[pixel])] == new

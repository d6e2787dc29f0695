"""Predict, Refine, Cancel, Undo/Redo, multi-class, points/boxes and 3D in a real viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _qt_helpers import click, press, truth_scribbles

from napari_scribble_refine._napari import _layers
from napari_scribble_refine.core import RefineConfig, RefineSession, load_model
from napari_scribble_refine.scripting import open_widget
from napari_scribble_refine.synthetic.scenes import synthetic_he

TIMEOUT_MS = 120_000


def _undo_then_redo(qtbot, shown, layer, before: np.ndarray, after: np.ndarray) -> None:
    """Click Undo, then Redo: the session and the layer show ``before``, then ``after``."""
    click(qtbot, shown._buttons.undo, shown)
    np.testing.assert_array_equal(shown.session.prediction, before)
    np.testing.assert_array_equal(layer.data, before)
    click(qtbot, shown._buttons.redo, shown)
    np.testing.assert_array_equal(shown.session.prediction, after)
    np.testing.assert_array_equal(layer.data, after)


def test_predict_shows_classes_and_instances(docked):
    docked.predict(wait=True)
    prediction, instances = docked.prediction_layer, docked.instances_layer
    assert prediction.data.shape == (128, 128)
    assert instances.data.shape == (128, 128)
    assert set(np.unique(prediction.data)) <= {0, 1}
    assert docked._status.value == "Prediction ready"
    assert docked.viewer.status == "Scribble Refine: Prediction ready"
    # strokes stand out from the prediction: a class's stroke colour is not its fill
    scribbles = docked.new_scribbles()
    assert np.linalg.norm(prediction.colormap.map(1) - scribbles.colormap.map(2)) > 0.4
    assert scribbles.selected_label == 2  # the brush starts on the first nucleus class
    assert docked._buttons.refine.enabled and not docked._buttons.cancel.enabled
    assert not docked._buttons.reset.enabled  # nothing to reset right after Predict
    assert not docked._buttons.undo.enabled


def test_refine_updates_live_and_is_undoable(shown, fluo_sample, qtbot):
    """Predict, Refine, Undo, Redo and Reset by clicks; the layer shows the session's state."""
    click(qtbot, shown._buttons.predict, shown)
    layer = shown.prediction_layer
    before = shown.session.prediction.copy()
    np.testing.assert_array_equal(layer.data, before)
    scribbles = shown.new_scribbles()
    scribbles.data = truth_scribbles(fluo_sample.types)
    shown.configure(max_iterations=150, stop_fraction=1.0, region_growing=False)
    seen: list[np.ndarray] = []
    layer.events.set_data.connect(lambda e: seen.append(layer.data.copy()))

    click(qtbot, shown._buttons.refine)
    worker = shown.worker
    assert worker is not None and shown._buttons.cancel.enabled
    assert not shown._buttons.predict.enabled
    steps: dict[tuple[int, bool], np.ndarray] = {}

    def record(step) -> None:  # connected before the event loop delivers any step
        if step.prediction is not None:
            steps[step.iteration, step.finished] = step.prediction

    worker.yielded.connect(record)
    shown.wait()
    result = shown.last_outcome.result
    assert result is not None and result.iterations >= 10
    bar = shown._buttons.progress  # in the widget, beside Cancel
    assert bar.max == 150 and bar.value == result.iterations
    assert bar.native.parent() is shown._buttons.cancel.native.parent()
    previews = [steps[key] for key in sorted(steps)]  # in step order, the final one last
    assert len(previews) >= 3 and shown.live_updates >= 1
    assert len(seen) == shown.live_updates + 1  # the live updates, then the result
    # the first preview is shown at once, later ones in order as the throttle allows
    np.testing.assert_array_equal(seen[0], previews[0])
    position = 0
    for data in seen[:-1]:
        later = [k for k in range(position, len(previews)) if np.array_equal(data, previews[k])]
        assert later, "a live update showed an older preview than the one before it"
        position = later[0]
    refined = shown.session.prediction.copy()
    np.testing.assert_array_equal(seen[-1], refined)
    np.testing.assert_array_equal(layer.data, refined)
    np.testing.assert_array_equal(result.prediction, refined)
    assert not np.array_equal(refined, before)
    assert shown.session.can_undo and shown._buttons.undo.enabled
    # the user's scribbles are untouched
    np.testing.assert_array_equal(scribbles.data, truth_scribbles(fluo_sample.types))

    _undo_then_redo(qtbot, shown, layer, before, refined)
    click(qtbot, shown._buttons.reset, shown)
    np.testing.assert_array_equal(shown.session.prediction, before)
    np.testing.assert_array_equal(layer.data, before)
    assert shown.session.can_undo  # reset itself is undoable


def test_cancel_stops_and_leaves_an_undoable_state(shown, fluo_sample, qtbot):
    click(qtbot, shown._buttons.predict, shown)
    layer = shown.prediction_layer
    before = shown.session.prediction.copy()
    shown.new_scribbles().data = truth_scribbles(fluo_sample.types)
    shown.configure(max_iterations=5000, stop_fraction=1.0, region_growing=False)
    click(qtbot, shown._buttons.refine)
    worker = shown.worker
    qtbot.waitUntil(lambda: shown.live_updates >= 1, timeout=TIMEOUT_MS)
    assert shown.busy  # still refining: the GUI served the live update meanwhile
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        click(qtbot, shown._buttons.cancel)
    shown.wait()
    outcome = shown.last_outcome
    assert outcome.cancelled and outcome.result is None
    assert "cancelled" in shown._status.value.lower()
    # the steps taken are kept and shown: the session's prediction at the cancelled state
    cancelled = shown.session.prediction.copy()
    assert not np.array_equal(cancelled, before)
    np.testing.assert_array_equal(layer.data, cancelled)
    np.testing.assert_array_equal(outcome.prediction, cancelled)
    assert shown.session.history_position == 1
    assert shown._buttons.predict.enabled and not shown._buttons.cancel.enabled
    _undo_then_redo(qtbot, shown, layer, before, cancelled)


def test_points_and_boxes_join_scribbles(docked, fluo_sample, qtbot):
    docked.predict(wait=True)
    docked.new_scribbles().data = truth_scribbles(fluo_sample.types, every=16)
    points = docked.new_points()
    docked.select_class(0)
    points.add([[5, 5], [120, 120]])
    points.selected_data = set()
    boxes = docked.new_boxes()
    docked.select_class(1)
    largest = np.bincount(fluo_sample.instances.ravel())[1:].argmax() + 1
    ys, xs = np.nonzero(fluo_sample.instances == largest)
    boxes.add_rectangles([[ys.min(), xs.min()], [ys.max(), xs.max()]])
    assert list(points.features["class"]) == [0, 0]
    assert list(boxes.features["class"]) == [1]
    np.testing.assert_allclose(points.face_color[0], _layers.scribble_colour(0))
    np.testing.assert_allclose(boxes.edge_color[0], _layers.scribble_colour(1))
    # selecting a point and clicking a class relabels it
    points.selected_data = {1}
    docked.select_class(1)
    assert list(points.features["class"]) == [0, 1]
    points.selected_data = {1}
    docked.select_class(0)
    points.selected_data = set()

    feedback = docked._feedback(docked.viewer.layers["nuclei"])
    merged = feedback.to_scribbles((128, 128))
    assert merged[5, 5] == 1 and merged[120, 120] == 1  # background disks
    cy, cx = int(ys.mean()), int(xs.mean())
    assert merged[cy, cx] == 2  # the box's core is "nucleus"
    assert merged[ys.min() - 2, cx] == 1  # the ring outside it is background
    docked.configure(max_iterations=3)
    docked.refine(wait=True)
    assert docked.last_outcome.result.n_scribbled >= int((merged > 0).sum()) * 0.99


def test_multi_class_relabel_in_one_refine(make_napari_viewer, he_model, qtbot):
    sample = synthetic_he((128, 128), seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(sample.image, name="he", rgb=True)
    widget = open_widget(viewer, image="he", model=he_model, device="cpu")
    assert widget.class_names == ["background", "other", "inflammatory", "epithelial", "spindle"]
    assert [b.text for b in widget._brush.palette] == widget.class_names
    widget.predict(wait=True)
    scribbles = widget.new_scribbles()
    assert scribbles.data.shape == (128, 128)
    # relabel two nuclei: one as inflammatory (class 2), one as epithelial (class 3)
    labels = sample.instances
    first, second = 1, 2
    data = np.zeros((128, 128), np.uint8)
    data[labels == first] = 3
    data[labels == second] = 4
    data[(labels == 0) & (np.arange(128)[:, None] % 9 == 0)] = 1
    scribbles.data = data
    widget.configure(max_iterations=60, region_growing=False, learning_rate=0.05)
    before = widget.prediction_layer.data.copy()
    widget.refine(wait=True)
    result = widget.last_outcome.result
    prediction = widget.prediction_layer.data
    # both corrections moved in the same refinement
    for value in (3, 4):
        now = np.mean(prediction[data == value] == value - 1)
        was = np.mean(before[data == value] == value - 1)
        assert now > was, (value, was, now, result.message)
        assert now > 0.5, (value, now, result.message)
    # instances are coloured by their class
    inst = widget.instances_layer
    some = int(inst.data[labels == first][0])
    if some:
        cls = widget.last_outcome.instance_classes[some]
        np.testing.assert_allclose(inst.colormap.map(some), _layers.class_colour(cls))


def test_3d_stack_scribbles_on_any_slice(make_napari_viewer, fluo_model, fluo_sample, qtbot):
    stack = np.stack([np.roll(fluo_sample.image, 7 * z, axis=1) for z in range(4)])
    types = np.stack([np.roll(fluo_sample.types, 7 * z, axis=1) for z in range(4)])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    widget = open_widget(viewer, image="stack", model=fluo_model, device="cpu")
    widget.predict(wait=True)
    assert widget.prediction_layer.data.shape == (4, 128, 128)
    scribbles = widget.new_scribbles()
    assert scribbles.data.shape == (4, 128, 128)
    data = np.zeros_like(scribbles.data)
    data[1] = truth_scribbles(types[1])
    data[3] = truth_scribbles(types[3], every=10)
    scribbles.data = data
    widget.configure(max_iterations=15, region_growing=False)
    widget.refine(wait=True)
    result = widget.last_outcome.result
    assert result.n_scribbled == int((data > 0).sum())
    assert widget.prediction_layer.data.shape == (4, 128, 128)
    assert widget.instances_layer.data.shape == (4, 128, 128)


def test_shortcuts_run_predict_refine_undo_redo_and_commit(shown, fluo_sample, qtbot):
    """Real key presses: on the canvas, and on the docked widget (napari forwards them)."""
    from napari_scribble_refine._napari._widget import SHORTCUTS

    assert set(SHORTCUTS) == {"predict", "refine", "undo", "redo", "commit"}
    canvas = shown.viewer.window._qt_viewer.canvas.native
    press(qtbot, canvas, SHORTCUTS["predict"])
    shown.wait()
    layer = shown.prediction_layer
    assert layer is not None and shown.session is not None
    before = shown.session.prediction.copy()
    shown.new_scribbles().data = truth_scribbles(fluo_sample.types)
    shown.configure(max_iterations=3)
    press(qtbot, canvas, SHORTCUTS["refine"])
    assert shown.busy
    shown.wait()
    assert shown.session.can_undo and shown.last_outcome.result.iterations == 3
    refined = shown.session.prediction.copy()
    assert not np.array_equal(refined, before)
    np.testing.assert_array_equal(layer.data, refined)
    press(qtbot, shown.native, SHORTCUTS["undo"])
    shown.wait()
    assert not shown.session.can_undo
    np.testing.assert_array_equal(layer.data, before)
    np.testing.assert_array_equal(shown.session.prediction, before)
    press(qtbot, shown._buttons.refine.native, SHORTCUTS["redo"])  # a focused button
    shown.wait()
    np.testing.assert_array_equal(layer.data, refined)
    np.testing.assert_array_equal(shown.session.prediction, refined)
    assert not shown.session.can_redo
    press(qtbot, canvas, SHORTCUTS["commit"])
    np.testing.assert_array_equal(shown.viewer.layers["nuclei corrected"].data,
                                  shown.instances_layer.data)  # fmt: skip


def _shown(viewer, layer) -> tuple[np.ndarray, np.ndarray]:
    """Canvas with ``layer`` and the mask of pixels where the layer changes the picture."""
    layer.visible = True
    with_layer = viewer.screenshot(canvas_only=True, flash=False)
    layer.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)
    layer.visible = True
    return with_layer, np.abs(with_layer.astype(int) - without).sum(-1) > 30


def test_live_updates_reach_the_canvas(make_napari_viewer, fluo_model, fluo_sample, qtbot):
    """Outputs are updated in place; the rendered canvas must follow them."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(fluo_sample.image, name="nuclei")
    widget = open_widget(viewer, image="nuclei", model=fluo_model, device="cpu")
    widget.predict(wait=True)
    widget.instances_layer.visible = False
    layer = widget.prediction_layer
    layer.opacity = 1.0
    target = 0 if (layer.data == 1).mean() > 0.5 else 1  # flip the majority class
    widget.new_scribbles().data = np.full((128, 128), target + 1, np.uint8)
    viewer.layers["nuclei scribbles"].visible = False
    _, was_shown = _shown(viewer, layer)
    widget.configure(max_iterations=30, region_growing=False, learning_rate=0.5)
    widget.refine(wait=True)
    assert (layer.data == target).mean() > 0.9
    after, shown = _shown(viewer, layer)
    # the canvas shows the refined prediction: nucleus colour exactly where class 1 is now
    if target == 0:
        assert shown.mean() < 0.1 * was_shown.mean()
    else:
        assert shown.mean() > 2 * was_shown.mean()
        colour = (_layers.class_colour(1)[:3] * 255).astype(int)
        assert np.abs(after[shown][:, :3].astype(int) - colour).max() <= 2


def test_add_class_then_paint_refine_and_undo(docked, fluo_sample, notifications):
    assert docked.add_class("debris") is None  # nothing to add it to yet
    assert any("Predict first" in n for n in notifications.texts())
    docked.predict(wait=True)
    before = docked.prediction_layer.data.copy()
    docked._class_name.value = "   "
    assert docked.add_class() is None
    assert any("name for the new class" in e for e in notifications.errors())
    docked._brush.palette[1].native.click()  # start the new class from "nucleus"
    docked._class_name.value = "dim nucleus"
    docked.add_class(wait=True)
    assert docked.class_names == ["background", "nucleus", "dim nucleus"]
    assert docked.session.class_names == docked.class_names
    assert docked._class_name.value == ""
    assert "dim nucleus" in docked._status.value
    scribbles = docked.new_scribbles()
    assert scribbles.selected_label == 3  # the brush is on the new class
    paint = np.zeros(fluo_sample.types.shape, np.uint8)
    paint[fluo_sample.types > 0] = 3  # every nucleus is a "dim nucleus"
    paint[::2] = 0
    paint[(fluo_sample.types == 0) & (np.arange(128)[:, None] % 8 == 1)] = 1
    scribbles.data = paint
    docked.configure(max_iterations=50, region_growing=False)
    docked.refine(wait=True)
    after = docked.prediction_layer.data[fluo_sample.types > 0]
    assert np.mean(after == 2) > 0.85  # the nuclei took the new class ...
    assert np.mean(after == 1) < 0.02  # ... and none kept the old one
    docked.undo(wait=True)  # the refinement
    docked.undo(wait=True)  # the new class
    assert docked.session.class_names == ["background", "nucleus"]
    assert "add class" in docked._status.value
    np.testing.assert_array_equal(docked.prediction_layer.data, before)


def test_save_model_by_click_and_load_it_back(shown, fluo_sample, qtbot, tmp_path):
    """Save model… writes the tuned model; From file… loads it and predicts as it did."""
    from qtpy.QtCore import Qt, QTimer
    from qtpy.QtWidgets import QApplication, QFileDialog, QLineEdit

    assert not shown._buttons.save_model.enabled  # nothing tuned to save before Predict
    click(qtbot, shown._buttons.predict, shown)
    scribbles = shown.new_scribbles()
    scribbles.data = truth_scribbles(fluo_sample.types)
    shown.configure(max_iterations=30, region_growing=False)
    click(qtbot, shown._buttons.refine, shown)
    target = tmp_path / "mine.safetensors"
    seen: list[str] = []

    def fill_in() -> None:  # the user types a name in the dialog and presses Save
        dialog = QApplication.activeModalWidget()
        assert isinstance(dialog, QFileDialog)
        seen.append(dialog.selectedFiles()[0])
        name = dialog.findChild(QLineEdit)
        name.clear()
        qtbot.keyClicks(name, str(target))
        qtbot.keyClick(name, Qt.Key.Key_Return)

    QTimer.singleShot(300, fill_in)
    click(qtbot, shown._buttons.save_model)
    assert Path(seen[0]).name == "hovernet-fluo-tuned.safetensors"  # the suggested name
    assert "Saved the tuned model to mine.safetensors" in shown._status.value, shown._status.value
    assert target.is_file()
    session = shown.session
    tuned = RefineSession(session.model, fluo_sample.image, RefineConfig()).predict()
    pretrained = RefineSession(load_model("hovernet-fluo"), fluo_sample.image).predict()
    assert not np.array_equal(tuned, pretrained)

    shown.set_model_file(target)  # Model > From file… with this file
    shown.wait()
    click(qtbot, shown._buttons.predict, shown)
    np.testing.assert_array_equal(shown.prediction_layer.data, tuned)


def test_switching_images_keeps_each_images_work(make_napari_viewer, fluo_model, qtbot):
    """Image A, then B, then A again: A's refinements, undo history and layers are kept."""
    from qtpy.QtCore import Qt

    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

    viewer = make_napari_viewer(show=True)
    samples = {n: synthetic_fluorescence((96, 96), seed=s) for n, s in (("a", 5), ("b", 6))}
    for name, sample in samples.items():
        viewer.add_image(sample.image, name=name)
    widget = open_widget(viewer, image="a", model=fluo_model, device="cpu")
    widget.configure(max_iterations=20, region_growing=False)
    click(qtbot, widget._buttons.predict, widget)
    before_a = widget.prediction_layer.data.copy()
    widget.new_scribbles().data = truth_scribbles(samples["a"].types, every=4)
    click(qtbot, widget._buttons.refine, widget)
    session_a = widget.session
    refined_a = widget.prediction_layer.data.copy()
    assert not np.array_equal(refined_a, before_a)

    picker = widget._pickers.image.native
    picker.setFocus()
    qtbot.keyClick(picker, Qt.Key.Key_Down)  # the user picks image "b"
    assert widget._pickers.image.value.name == "b" and widget.session is None
    assert not widget._buttons.undo.enabled
    click(qtbot, widget._buttons.predict, widget)
    assert widget.prediction_layer.name == "b prediction"
    assert widget.instances_layer.name == "b instances"
    np.testing.assert_array_equal(viewer.layers["a prediction"].data, refined_a)
    b_prediction = widget.prediction_layer.data.copy()

    qtbot.keyClick(picker, Qt.Key.Key_Up)  # back to "a": its session and history
    assert widget._pickers.image.value.name == "a" and widget.session is session_a
    assert "1 change(s) are kept" in widget._status.value
    assert widget.prediction_layer.name == "a prediction"
    click(qtbot, widget._buttons.undo, widget)
    np.testing.assert_array_equal(viewer.layers["a prediction"].data, before_a)
    np.testing.assert_array_equal(viewer.layers["b prediction"].data, b_prediction)

    viewer.layers.remove("a")  # an image that is gone takes its work with it
    assert all(image.name != "a" for image in widget._images.images())
    assert widget._images.images() and widget._images.n_images_shown == 1  # b's stay


def test_commit_and_export_keep_the_nuclei(shown, fluo_sample, qtbot, tmp_path):
    """Commit copies nuclei and types into the user's layer; Export… writes three files."""
    import csv
    import json

    import tifffile
    from qtpy.QtCore import Qt, QTimer
    from qtpy.QtWidgets import QApplication, QLineEdit

    assert not shown._buttons.commit.enabled and not shown._buttons.export.enabled
    click(qtbot, shown._buttons.predict, shown)
    shown_nuclei = shown.instances_layer.data.copy()
    n = len(np.unique(shown_nuclei)) - 1
    click(qtbot, shown._buttons.commit)
    committed = shown.viewer.layers["nuclei corrected"]
    np.testing.assert_array_equal(committed.data, shown_nuclei)
    assert list(committed.features["type"][1:]) == ["nucleus"] * n
    offered = [layer.name for layer in shown._pickers.scribbles.choices if layer is not None]
    assert "nuclei corrected" not in offered  # never offered as scribbles
    # a later refinement changes the widget's layers, not the committed one
    shown.new_scribbles().data = truth_scribbles(fluo_sample.types)
    shown.configure(max_iterations=20, region_growing=False)
    click(qtbot, shown._buttons.refine, shown)
    assert not np.array_equal(shown.instances_layer.data, shown_nuclei)
    np.testing.assert_array_equal(committed.data, shown_nuclei)

    def type_name() -> None:  # the user types a prefix in the dialog and presses Enter
        dialog = QApplication.activeModalWidget()
        name = dialog.findChild(QLineEdit)
        name.clear()
        qtbot.keyClicks(name, str(tmp_path / "cells.geojson"))
        qtbot.keyClick(name, Qt.Key.Key_Return)

    QTimer.singleShot(300, type_name)
    click(qtbot, shown._buttons.export)
    labels = tifffile.imread(tmp_path / "cells_instances.tif")
    np.testing.assert_array_equal(labels, shown.instances_layer.data)
    with (tmp_path / "cells_types.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    ids = np.unique(labels)[1:]
    assert [int(r["id"]) for r in rows] == ids.tolist()
    assert {r["class_name"] for r in rows} == {"nucleus"}
    shapes = json.loads((tmp_path / "cells.geojson").read_text())
    assert sorted(f["properties"]["id"] for f in shapes["features"]) == ids.tolist()
    assert "Exported" in shown._status.value


def test_apply_to_others_predicts_them_with_the_tuned_model(make_napari_viewer, fluo_model, qtbot):
    """The tuned model reaches the other grey images; an RGB one and refined work are kept."""
    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

    viewer = make_napari_viewer(show=True)
    samples = {n: synthetic_fluorescence((96, 96), seed=s) for n, s in (("a", 7), ("b", 8))}
    for name, sample in samples.items():
        viewer.add_image(sample.image, name=name)
    viewer.add_image(synthetic_he((64, 64), seed=9).image, name="he", rgb=True)
    widget = open_widget(viewer, image="a", model=fluo_model, device="cpu")
    widget.configure(max_iterations=20, region_growing=False)
    click(qtbot, widget._buttons.predict, widget)
    assert not widget._buttons.apply.enabled  # nothing tuned yet
    widget.new_scribbles().data = truth_scribbles(samples["a"].types, every=4)
    click(qtbot, widget._buttons.refine, widget)
    click(qtbot, widget._buttons.apply, widget)
    expected = RefineSession(widget.session.model, samples["b"].image, RefineConfig()).predict()
    pretrained = RefineSession(load_model(fluo_model), samples["b"].image).predict()
    np.testing.assert_array_equal(viewer.layers["b prediction"].data, expected)
    assert not np.array_equal(expected, pretrained)  # the tuned head, not the shipped one
    assert "Applied the tuned model to b" in widget._status.value
    assert "not applied to he" in widget._status.value
    assert "he prediction" not in [layer.name for layer in viewer.layers]
    # b now has a session of its own, starting from the tuned model; refine it there ...
    widget.configure(image="b")
    assert widget.session is not None and widget.session.history_position == 0
    widget.new_scribbles().data = truth_scribbles(samples["b"].types, every=4)
    click(qtbot, widget._buttons.refine, widget)
    refined_b = viewer.layers["b prediction"].data.copy()
    widget.configure(image="a")  # ... and a second Apply leaves b's work alone
    click(qtbot, widget._buttons.apply)
    assert "b kept its own refinements" in widget._status.value
    assert not widget.busy
    np.testing.assert_array_equal(viewer.layers["b prediction"].data, refined_b)

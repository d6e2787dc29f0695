"""The napari dock widget: pick layers and a model, paint corrections, Predict and Refine.

A thin controller that lays out and wires parts of their own: the layer pickers
(:mod:`._pickers`), the brush and its classes (:mod:`._brush`), the Model picker
(:mod:`._model_picker`), each image's session and output layers (:mod:`._image_sessions`),
the session actions with their live previews (:mod:`._refining`), keeping the work
(:mod:`._keeping`), the controls (:mod:`._controls`) and the hooks into the viewer
(:mod:`._viewer_hooks`). Engine work runs in thread workers (:mod:`._workers`); results go
to Labels layers the widget owns. It never writes into the user's image, scribble, point
or box layers.

The same widget drives scripted sessions (see :mod:`.scripting`)::

    widget = ScribbleRefineWidget(viewer)
    widget.predict(wait=True)
    widget.refine(wait=True)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton
from napari.utils.notifications import show_error, show_info

from . import _large_images, _layers, _tasks
from ._brush import Brush
from ._controls import SHORTCUTS, ActionButtons, row
from ._image_sessions import ImageSessions
from ._keeping import Keeping
from ._model_picker import FROM_FILE, ModelPicker
from ._pickers import LayerPickers
from ._refining import LIVE_UPDATE_MS, Refinement
from ._retype import LEGEND, NucleusRetype
from ._settings_form import RefineSettings
from ._viewer_hooks import ViewerHooks
from ._workers import Failed, TaskRunner

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Points, Shapes

    from ..core.config import RefineConfig
    from ..core.models.base import SegmentationModel
    from ..core.session import RefineSession

__all__ = ["LIVE_UPDATE_MS", "SHORTCUTS", "ScribbleRefineWidget"]


class ScribbleRefineWidget(Container):
    """Scribble-aware refinement of a segmentation network in napari.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers the widget reads and writes.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._runner = runner = TaskRunner(self._on_busy)
        self._images = ImageSessions(viewer)
        self._pickers = LayerPickers(viewer, owned=self._images.owned)
        self._brush = Brush(viewer, self._pickers, self._set_status)
        self._models = ModelPicker(self._start, lambda: runner.busy, self._on_model_loaded,
                                   self.native)  # fmt: skip
        self._retype = NucleusRetype(
            viewer, self._pickers, self._images, class_names=lambda: self._brush.class_names,
            busy=lambda: runner.busy, on_status=self._set_status,
        )  # fmt: skip
        self._build()
        parts = {"pickers": self._pickers, "images": self._images, "brush": self._brush}
        self._refinement = Refinement(
            viewer, **parts, models=self._models, runner=runner, start=self._start,
            config=self.config, feedback=self._feedback, progress=self._buttons.progress,
            on_status=self._set_status,
        )  # fmt: skip
        self._refinement.on_outcome.append(self._retype.forget)
        self._keeping = Keeping(
            viewer, **parts, refinement=self._refinement, start=self._start,
            busy=lambda: runner.busy, config=self.config, parent=self.native,
            on_status=self._set_status,
        )  # fmt: skip
        self._connect()
        live = self._refinement.live
        self._hooks = ViewerHooks(
            viewer,
            self.native,
            run_action=self._on_shortcut,
            on_layers_changed=self._on_layers_changed,
            on_close=self.shutdown,
            on_gone=lambda: (live.cancel(), runner.stop()),
        )
        self._update_buttons()
        self._models.suit_image(self._pickers.image.value)
        if self._models.combo.value not in (None, FROM_FILE):
            self.load_model()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        from ..core.devices import available_devices  # torch: loaded with the widget, not napari

        self._new_scribbles = PushButton(
            text="New scribbles",
            tooltip="Add an empty scribble layer of the image's shape, coloured by class.",
        )
        self._new_points = PushButton(text="New points", tooltip="Add a Points layer for clicks.")
        self._new_boxes = PushButton(text="New boxes", tooltip="Add a Shapes layer for boxes.")
        self._class_name = LineEdit(
            tooltip="Name of a class the model does not have yet, e.g. 'mitotic'."
        )
        self._class_name.native.setPlaceholderText("new class name")
        self._device = ComboBox(
            label="Device",
            choices=available_devices(),
            value="auto",
            tooltip="Where the network runs; 'auto' takes a GPU when there is one.",
        )
        self._settings = RefineSettings(on_invalid=self._set_status)
        self._buttons = ActionButtons()
        self._legend = Label(value=LEGEND, tooltip="What the keys and clicks do.")
        self._legend.native.setWordWrap(True)
        self._status = Label(value="Choose an image, then Predict.")
        self._status.tooltip = "What the widget is doing."
        self._status.native.setWordWrap(True)  # a long message wraps, the dock keeps its width
        pickers = self._pickers
        self.extend(
            [
                pickers.image,
                pickers.scribbles,
                row(self._new_scribbles, self._new_points, self._new_boxes),
                pickers.points,
                pickers.boxes,
                self._brush.palette,
                row(self._retype.button),
                row(self._class_name, self._buttons.add_class),
                self._models.combo,
                self._device,
                self._settings,
                *self._buttons.rows(),
                self._legend,
                self._status,
            ]
        )

    def _connect(self) -> None:
        self._pickers.image.changed.connect(self._on_image_changed)
        self._pickers.scribbles.changed.connect(self._on_scribbles_changed)
        self._new_scribbles.changed.connect(self.new_scribbles)
        self._new_points.changed.connect(self.new_points)
        self._new_boxes.changed.connect(self.new_boxes)
        self._device.changed.connect(self._on_device_changed)
        self._settings.inputs["n_layers"].changed.connect(self._on_head_depth_changed)
        buttons, keeping = self._buttons, self._keeping
        for button, action in (
            (buttons.predict, self.predict),
            (buttons.refine, self.refine),
            (buttons.cancel, self.cancel),
            (buttons.undo, self.undo),
            (buttons.redo, self.redo),
            (buttons.reset, self.reset_model),
            (buttons.add_class, self.add_class),
            (buttons.commit, self.commit),
            (buttons.export, keeping.ask_export),
            (buttons.save_model, keeping.ask_save_model),
            (buttons.apply, self.apply_to_others),
        ):
            button.changed.connect(partial(_call, action))
        self._on_scribbles_changed()

    # ------------------------------------------------------------------ properties
    @property
    def viewer(self) -> napari.viewer.Viewer:
        """The viewer the widget works in."""
        return self._viewer

    @property
    def class_names(self) -> list[str]:
        """The model's classes (index 0 = background)."""
        return list(self._brush.class_names)

    @property
    def session(self) -> RefineSession | None:
        """The chosen image's refinement session, or None before its first Predict/Refine."""
        return self._refinement.session_of(self._pickers.image.value)

    @property
    def last_outcome(self) -> _tasks.Outcome | None:
        """What the last finished Predict, Refine, Undo, Redo or Reset produced.

        Prediction, instances, message, whether it was cancelled and the engine's
        ``RefineResult``.
        """
        return self._refinement.last_outcome

    @property
    def prediction_layer(self) -> Labels | None:
        """The Labels layer showing the chosen image's class map, once there is one."""
        return self._images.output(self._pickers.image.value, "prediction")

    @property
    def instances_layer(self) -> Labels | None:
        """The Labels layer showing the chosen image's instances, once there is one."""
        return self._images.output(self._pickers.image.value, "instances")

    @property
    def worker(self) -> Any:
        """The running thread worker, or None when idle (tests wait on its signals)."""
        return self._runner.worker

    @property
    def busy(self) -> bool:
        """Whether a task runs in the background."""
        return self._runner.busy

    @property
    def live_updates(self) -> int:
        """How many live previews were shown during the last refinement."""
        return self._refinement.live_updates

    def configure(
        self,
        *,
        image: Image | str | None = None,
        scribbles: Labels | str | None = None,
        points: Points | str | None = None,
        boxes: Shapes | str | None = None,
        model: str | None = None,
        device: str | None = None,
        **settings: Any,
    ) -> None:
        """Set inputs and settings from a script, as a user would in the widget.

        Parameters
        ----------
        image, scribbles, points, boxes : napari layer or str, optional
            Layers (or their names) to use.
        model : str, optional
            A built-in model name or a path to a checkpoint / TorchScript file; it starts
            loading in the background (see :meth:`wait`).
        device : str, optional
            ``"auto"``, ``"cpu"``, ``"cuda:0"``, ...
        **settings
            Any :class:`RefineConfig` field but ``device`` (``max_iterations``,
            ``learning_rate``, ``proximity_weight``, ``region_growing``, ...), and
            ``point_radius`` and ``box_ring`` of point and box feedback.

        Raises
        ------
        TypeError
            If a setting is unknown.
        """
        self._settings.apply(**settings)
        self._pickers.choose(image=image, scribbles=scribbles, points=points, boxes=boxes)
        if device is not None:
            self._device.value = device
        if model is not None:
            combo = self._models.combo
            if model not in combo.choices:
                self.set_model_file(model)
            elif model != combo.value:
                combo.value = model
            elif self._models.model is None:
                self.load_model()

    def config(self) -> RefineConfig:
        """Return the refinement settings shown in the widget.

        Returns
        -------
        RefineConfig
            A validated configuration.

        Raises
        ------
        ValueError, TypeError
            With the config's own message when a setting is not valid.
        """
        return self._settings.config(str(self._device.value))

    # ------------------------------------------------------------------ layers chosen
    def _on_layers_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        self._images.forget_missing()  # an image that is gone takes its work with it
        self._pickers.reset()
        self._update_buttons()

    def _on_image_changed(self) -> None:
        session = self.session
        if session is not None:  # back to an image with work: its classes and result
            self._show_classes(list(session.class_names))
            self._set_status(
                f"{self._pickers.image.value.name}: its {session.history_position} change(s) "
                "are kept; Undo steps back through them"
            )
        elif self._models.model is not None:
            self._show_classes(list(self._models.model.class_names))
        if not self._models.picked and self._models.suit_image(self._pickers.image.value):
            self.load_model()
        self._update_buttons()

    def _on_scribbles_changed(self) -> None:
        self._pickers.follow_brush(self._brush.show_label)
        self._retype.follow()
        self._brush.show_label()
        self._update_buttons()

    def _show_classes(self, class_names: list[str]) -> None:
        self._brush.set_classes(class_names, self.prediction_layer)

    def _feedback(self, image: Image, session: RefineSession | None = None) -> _tasks.Feedback:
        large = session is not None and session.slide is not None  # a large image's region
        region = session.region if large else None
        return self._pickers.feedback(
            image,
            len(self._brush.class_names),
            self._settings.inputs["point_radius"].value,
            self._settings.inputs["box_ring"].value,
            region=region,
        )

    # ------------------------------------------------------------------ brush, new layers
    def select_class(self, index: int, *_: Any) -> None:
        """Make the brush, new points and new boxes mark one class (0 = background)."""
        self._brush.select(index)

    def new_scribbles(self, *_: Any) -> Labels | None:
        """Add an empty scribble layer matching the chosen image and select it.

        After Predict, its brush is a third of the nuclei's median width.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (None without an image).
        """
        shown = self.instances_layer
        brush = _layers.brush_size_for(None if shown is None else np.asarray(shown.data))
        image = self._pickers.image.value
        region = None
        if image is not None and _large_images.is_large(image):  # over Predict's region
            session = self.session
            if session is None or session.slide is None:
                show_error(
                    f"Image '{image.name}' is large: press Predict first; scribbles then "
                    "cover the region it worked on"
                )
                return None
            region = session.region

        def add(viewer: Any, image: Image, class_names: list[str]) -> Labels:
            return _layers.add_scribble_layer(
                viewer, image, class_names, brush_size=brush, region=region
            )

        layer = self._brush.new_layer(add, self._pickers.scribbles)
        if layer is not None and shown is not None:
            self._set_status(f"Brush {brush} px: a third of the nuclei's median width")
        return layer

    def new_points(self, *_: Any) -> Points | None:
        """Add an empty Points layer whose points mark the brush class (None without an image)."""
        return self._brush.new_layer(_layers.add_points_layer, self._pickers.points)

    def new_boxes(self, *_: Any) -> Shapes | None:
        """Add an empty Shapes layer whose rectangles mark the brush class (None without image)."""
        return self._brush.new_layer(_layers.add_boxes_layer, self._pickers.boxes)

    # ------------------------------------------------------------------ model
    def set_model_file(self, path: str | Path) -> None:
        """Use a checkpoint, TorchScript or bioimage.io file as the model (loads in background)."""
        self._models.choose_file(path)

    def load_model(self, wait: bool = False) -> Any:
        """Load the chosen model in the background; see :meth:`ModelPicker.load`."""
        return self._models.load(wait)

    def _on_model_loaded(self, model: SegmentationModel) -> None:
        self._show_classes(list(model.class_names))
        self._set_status(f"Model {model.name} ready ({', '.join(model.class_names)})")

    def _on_device_changed(self) -> None:
        self._drop_sessions("Device changed: the next Predict starts over on it")

    def _on_head_depth_changed(self) -> None:
        self._drop_sessions("Layers to tune changed: the next Predict starts over with them")

    def _drop_sessions(self, reason: str) -> None:
        if self._images.drop_sessions():
            show_info(f"{reason} (refinements dropped; Save model… keeps them first)")
        self._update_buttons()

    # ------------------------------------------------------------------ session actions
    # Each returns the thread worker, or None when nothing was started (a notification
    # says why); ``wait=True`` processes Qt events until the result is shown.
    def predict(self, wait: bool = False) -> Any:
        """Segment the chosen image; see :meth:`Refinement.predict`."""
        return self._refinement.predict(wait)

    def refine(self, wait: bool = False) -> Any:
        """Fine-tune the head on the scribbles, points and boxes; see :meth:`Refinement.refine`."""
        return self._refinement.refine(wait)

    def cancel(self) -> None:
        """Stop the running refinement after its current step (the result stays undoable)."""
        self._refinement.cancel()

    def undo(self, wait: bool = False) -> Any:
        """Undo the last refinement (background task)."""
        return self._refinement.history("undo", wait)

    def redo(self, wait: bool = False) -> Any:
        """Redo the last undone refinement (background task)."""
        return self._refinement.history("redo", wait)

    def reset_model(self, wait: bool = False) -> Any:
        """Return to the pre-trained head (undoable; background task)."""
        return self._refinement.history("reset", wait)

    def add_class(
        self, name: str | None = None, init_from: int | None = None, wait: bool = False
    ) -> Any:
        """Add a class the model was never trained for (undoable; background task).

        Parameters
        ----------
        name : str, optional
            Its name; default: the text in the "new class name" box.
        init_from : int, optional
            The class it starts as a copy of; default: the class chosen in the palette.
        wait : bool
            Block (processing Qt events) until done.

        Returns
        -------
        worker or None
            The thread worker, or None (with a notification) without a session or a name.
        """
        name = self._class_name.value if name is None else name
        source = self._brush.palette.selected if init_from is None else init_from
        return self._refinement.add_class(name, source, self._on_class_added, wait)

    def _on_class_added(self) -> None:
        self._class_name.value = ""
        self.select_class(len(self._brush.class_names) - 1)

    def wait(self, timeout: float | None = None) -> bool:
        """Process Qt events until no task runs (at most ``timeout`` s); True when idle."""
        return self._runner.wait_idle(timeout)

    # ------------------------------------------------------------------ keeping the work
    def commit(self) -> Labels | None:
        """Copy the shown nuclei and types into a layer of the user's own; see :class:`Keeping`."""
        return self._keeping.commit()

    def export(self, prefix: str | Path) -> list[Path] | None:
        """Write the shown nuclei as TIFF, CSV and GeoJSON; see :meth:`Keeping.export`."""
        return self._keeping.export(prefix)

    def save_model(self, path: str | Path) -> Path | None:
        """Save the chosen image's tuned model; see :meth:`Keeping.save_model`."""
        return self._keeping.save_model(path)

    def apply_to_others(self, wait: bool = False) -> Any:
        """Predict the other open images with the tuned model; see :class:`Keeping`."""
        return self._keeping.apply_to_others(wait)

    # ------------------------------------------------------------------ running
    @property
    def _closed(self) -> bool:
        return self._runner.closed

    def _start(
        self,
        name: str,
        work: Any,
        *,
        on_result: Callable[[Any], None],
        on_yielded: Callable[[Any], None] | None = None,
        wait: bool = False,
    ) -> Any:
        return self._runner.run(
            name,
            work,
            on_result=on_result,
            on_yielded=on_yielded,
            on_failed=self._on_failed,
            on_status=self._set_status,
            wait=wait,
        )

    def _on_busy(self, busy: bool) -> None:
        if not busy and self._closed:
            self._refinement.live.cancel()
        elif not busy:
            self._refinement.live.flush(restart_timer=False)
        if not self._closed:
            self._update_buttons()
            if not busy and self._models.reload_wanted:
                self.load_model()

    def _on_failed(self, failed: Failed) -> None:
        self._set_status(f"Failed: {failed.message}")
        show_error(failed.message)

    def _set_status(self, message: str) -> None:
        if self._closed:  # the label may be deleted already
            return
        self._status.value = message
        self._viewer.status = f"Scribble Refine: {message}"

    def _update_buttons(self, *_: Any) -> None:
        busy = self._runner.busy
        image = self._pickers.image.value
        self._buttons.update(
            busy=busy,
            refining=busy and self._runner.name == "refining",
            has_image=image is not None,
            session=self.session,
            shown=self._images.types(image) is not None and self.instances_layer is not None,
            others=bool(self._pickers.other_images()),
        )
        for widget in (self._pickers.image, self._models.combo, self._device):
            widget.enabled = not busy

    def _on_shortcut(self, action: str) -> None:
        if not self._closed:
            getattr(self, action)()

    # ------------------------------------------------------------------ closing
    def shutdown(self) -> None:
        """Stop any running task and let go of the viewer (called when the widget closes)."""
        if self._closed:
            return
        self._runner.closed = True
        self._runner.stop()
        self._refinement.live.cancel()
        self._hooks.disconnect()
        self._pickers.follow_brush(None)
        self._retype.button.native.setChecked(False)  # unhooks the scribble layer


def _call(action: Callable[[], Any], *_: Any) -> None:
    """Run a widget action from a button (the click's value is not an argument of it)."""
    action()

"""The napari dock widget: pick layers and a model, paint corrections, Predict and Refine.

A thin controller over the engine. It copies layer data on the GUI thread
(:mod:`._layers`), runs the engine's functions (:mod:`._tasks`) in thread workers
(:mod:`._workers`), and shows their results in two Labels layers it owns. It never writes
into the user's image, scribble, point or box layers.

The same widget drives scripted sessions (see :mod:`.scripting`)::

    widget = ScribbleRefineWidget(viewer)
    widget.predict(wait=True)
    widget.refine(wait=True)
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Hashable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, ProgressBar, PushButton
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject

from ..core.config import RefineConfig
from ..core.images import validate_image
from ..core.models.registry import available_models, default_model, is_torchscript
from ..core.scribbles import validate_scribbles
from ..instance_files import write_instances
from . import _layers, _tasks
from ._controls import ClassPalette, RefineSettings
from ._workers import Failed, TaskRunner, Throttle

if TYPE_CHECKING:
    import napari

FROM_FILE = "From file…"
DEFAULT_CLASSES = ["background", "nucleus"]
LIVE_UPDATE_MS = 100
SHORTCUTS = {
    "predict": "Shift-P",
    "refine": "Shift-R",
    "undo": "Shift-Z",
    "redo": "Shift-Y",
    "commit": "Shift-C",
}


def _devices() -> list[str]:
    import torch

    found = ["auto", "cpu"]
    found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    backend = getattr(torch.backends, "mps", None)
    if backend is not None and backend.is_available():
        found.append("mps")
    return found


class _CloseWatcher(QObject):
    """Calls back when the widget leaves its dock (napari re-parents it to None on close)."""

    def __init__(self, target: QObject, on_close) -> None:
        super().__init__(target)
        self._on_close = on_close
        target.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        kind = event.type()
        if kind == QEvent.Type.Close or (kind == QEvent.Type.ParentChange and obj.parent() is None):
            self._on_close()
        return False


def _key(layer: Any) -> Hashable:
    """Identify a layer (napari may hand a plugin proxies: ``id`` would differ per access)."""
    return None if layer is None else layer.unique_id


class ScribbleRefineWidget(Container):
    """Scribble-aware refinement of a segmentation network in napari.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers the widget reads and writes.

    Attributes
    ----------
    last_outcome : Outcome or None
        What the last finished Predict, Refine, Undo, Redo or Reset produced: prediction,
        instances, message, whether it was cancelled and the engine's ``RefineResult``.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._model: Any = None
        self._model_key: str | None = None
        # per image layer and model: the session (each tunes its own copy of the model)
        self._sessions: dict[tuple[Hashable, str], tuple[Image, Any]] = {}
        self._outputs: dict[Hashable, dict[str, Labels]] = {}  # per image: its output layers
        self._types: dict[Hashable, dict[int, int]] = {}  # per image: instance id -> class
        self._task_image: Image | None = None  # the image the running task works on
        self._model_file: str | None = None
        self._class_names = list(DEFAULT_CLASSES)
        self.last_outcome: _tasks.Outcome | None = None
        self._closed = False
        self._reload_wanted = False
        self._watched: Labels | None = None
        self._runner = TaskRunner(self._on_busy)
        self._live = Throttle(LIVE_UPDATE_MS, self._show_live_prediction)
        self._model_picked = False  # the user chose a model: images no longer choose it
        self._build()
        self._connect()
        self._update_buttons()
        with self._model_choice.changed.blocked():
            self._choose_model_for_image()
        if self._model_choice.value not in (None, FROM_FILE):
            self.load_model()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self._image = ComboBox(
            label="Image",
            choices=partial(self._layer_choices, Image),
            tooltip="The image to segment: 2D greyscale, RGB, or a (Z, Y, X) stack.",
        )
        self._scribbles = ComboBox(
            label="Scribbles",
            choices=partial(self._layer_choices, Labels, scribbles=True),
            nullable=True,
            tooltip="Labels layer with your corrections: 1 = background, c + 1 = class c.",
        )
        self._new_scribbles = PushButton(
            text="New scribbles",
            tooltip="Add an empty scribble layer of the image's shape, coloured by class.",
        )
        self._points = ComboBox(
            label="Points",
            choices=partial(self._layer_choices, Points),
            nullable=True,
            tooltip="Optional Points layer: each point marks a small disk of its class.",
        )
        self._boxes = ComboBox(
            label="Boxes",
            choices=partial(self._layer_choices, Shapes),
            nullable=True,
            tooltip="Optional Shapes layer of rectangles: the box's core is its class, a "
            "thin ring outside it is background.",
        )
        self._new_points = PushButton(text="New points", tooltip="Add a Points layer for clicks.")
        self._new_boxes = PushButton(text="New boxes", tooltip="Add a Shapes layer for boxes.")
        self._palette = ClassPalette(self.select_class)
        self._class_name = LineEdit(
            tooltip="Name of a class the model does not have yet, e.g. 'mitotic'."
        )
        self._class_name.native.setPlaceholderText("new class name")
        self._add_class_button = PushButton(
            text="Add class",
            tooltip="Add the named class to the model as a copy of the class chosen above "
            "(undoable); paint it, then Refine.",
        )
        self._model_choice = ComboBox(
            label="Model",
            choices=self._model_choices,
            tooltip="A built-in model, or a checkpoint / TorchScript file of your own.",
        )
        self._device = ComboBox(
            label="Device",
            choices=_devices(),
            value="auto",
            tooltip="Where the network runs; 'auto' takes a GPU when there is one.",
        )
        self._settings = RefineSettings()
        self._predict_button = PushButton(
            text="Predict",
            tooltip=f"Segment the image with the current model ({SHORTCUTS['predict']}).",
        )
        self._refine_button = PushButton(
            text="Refine",
            tooltip=f"Fine-tune the model's head on your scribbles ({SHORTCUTS['refine']}).",
        )
        self._cancel_button = PushButton(
            text="Cancel", tooltip="Stop after the current step; the result stays undoable."
        )
        self._undo_button = PushButton(
            text="Undo", tooltip=f"Undo the last refinement ({SHORTCUTS['undo']})."
        )
        self._redo_button = PushButton(
            text="Redo", tooltip=f"Redo the undone refinement ({SHORTCUTS['redo']})."
        )
        self._reset_button = PushButton(
            text="Reset model", tooltip="Forget all refinements: back to the pre-trained model."
        )
        self._commit_button = PushButton(
            text="Commit",
            tooltip="Copy the nuclei and their types into a layer of your own "
            f"({SHORTCUTS['commit']}); later refinements leave it alone.",
        )
        self._export_button = PushButton(
            text="Export…",
            tooltip="Write the nuclei as TIFF labels, a CSV of types and GeoJSON polygons.",
        )
        self._apply_button = PushButton(
            text="Apply to others",
            tooltip="Predict the other open images with the tuned model; each keeps its own "
            "session to refine further.",
        )
        self._save_model_button = PushButton(
            text="Save model…",
            tooltip="Save the tuned model to a file; Model > From file… loads it again.",
        )
        self._progress_bar = ProgressBar(value=0, min=0, max=1)
        self._progress_bar.tooltip = "Refinement steps taken of the most (Iterations)."
        self._status = Label(value="Choose an image, then Predict.")
        self._status.tooltip = "What the widget is doing."

        def row(*widgets) -> Container:
            return Container(widgets=list(widgets), layout="horizontal", labels=False)

        self.extend(
            [
                self._image,
                self._scribbles,
                row(self._new_scribbles, self._new_points, self._new_boxes),
                self._points,
                self._boxes,
                self._palette,
                row(self._class_name, self._add_class_button),
                self._model_choice,
                self._device,
                self._settings,
                row(self._predict_button, self._refine_button),
                row(self._progress_bar, self._cancel_button),
                row(self._undo_button, self._redo_button, self._reset_button),
                row(self._commit_button, self._export_button),
                row(self._save_model_button, self._apply_button),
                self._status,
            ]
        )
        self._palette.set_classes(self._class_names)

    def _connect(self) -> None:
        layers = self._viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
            event.connect(self._on_layers_changed)
        self._image.changed.connect(self._on_image_changed)
        self._scribbles.changed.connect(self._on_scribbles_changed)
        self._new_scribbles.changed.connect(self.new_scribbles)
        self._new_points.changed.connect(self.new_points)
        self._new_boxes.changed.connect(self.new_boxes)
        self._model_choice.changed.connect(self._on_model_chosen)
        self._device.changed.connect(self._on_device_changed)
        self._settings.n_layers.changed.connect(self._on_head_depth_changed)
        self._predict_button.changed.connect(lambda: self.predict())
        self._refine_button.changed.connect(lambda: self.refine())
        self._cancel_button.changed.connect(self.cancel)
        self._undo_button.changed.connect(lambda: self.undo())
        self._redo_button.changed.connect(lambda: self.redo())
        self._reset_button.changed.connect(lambda: self.reset_model())
        self._add_class_button.changed.connect(lambda: self.add_class())
        self._save_model_button.changed.connect(self._on_save_model)
        self._apply_button.changed.connect(lambda: self.apply_to_others())
        self._commit_button.changed.connect(lambda: self.commit())
        self._export_button.changed.connect(self._on_export)
        for action, key in SHORTCUTS.items():
            self._viewer.bind_key(key, self._shortcut(action), overwrite=True)
        self._close_watcher = _CloseWatcher(self.native, self.shutdown)
        # Closing the viewer deletes the widget without a close event of its own: shut down
        # then, or a pending live update (or a task's result) would reach deleted controls.
        # A weak reference, so that the connection does not keep the widget alive.
        this = weakref.ref(self)
        runner, live = self._runner, self._live

        def destroyed(*_: Any) -> None:
            widget = this()
            if widget is not None:
                widget.shutdown()
            else:
                live.discard()
                runner.stop()

        self.native.destroyed.connect(destroyed)
        self._on_scribbles_changed()

    # ------------------------------------------------------------------ properties
    @property
    def viewer(self) -> napari.viewer.Viewer:
        """The viewer the widget works in."""
        return self._viewer

    @property
    def class_names(self) -> list[str]:
        """The model's classes (index 0 = background)."""
        return list(self._class_names)

    @property
    def session(self) -> Any:
        """The chosen image's refinement session, or None before its first Predict/Refine."""
        return self._session

    @property
    def _session(self) -> Any:
        return self._session_of(self._image.value)

    def _session_of(self, image: Image | None) -> Any:
        entry = self._sessions.get((_key(image), self._chosen_model()))
        return entry[1] if entry is not None else None

    def _chosen_model(self) -> str:
        """Return the model the picker names ("" when it names none)."""
        try:
            return self._model_spec()
        except ValueError:
            return ""

    def _output(self, image: Image | None, kind: str) -> Labels | None:
        layer = self._outputs.get(_key(image), {}).get(kind)
        return layer if layer is not None and layer in self._viewer.layers else None

    @property
    def prediction_layer(self) -> Labels | None:
        """The Labels layer showing the chosen image's class map, once there is one."""
        return self._output(self._image.value, "prediction")

    @property
    def instances_layer(self) -> Labels | None:
        """The Labels layer showing the chosen image's instances, once there is one."""
        return self._output(self._image.value, "instances")

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
        return self._live.delivered

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
            ``iterations``, ``learning_rate``, ``alpha``, ``region_growing``,
            ``grow_threshold``, ``n_layers``, ``momentum``, ``stop_fraction``,
            ``grow_max_distance``, ``pin_scribbles``, ``trust_region``, ``follow_edges``,
            ``type_by_instance``, ``point_radius``, ``box_ring``,
            ``seed``.

        Raises
        ------
        TypeError
            If a setting is unknown.
        """
        self._settings.apply(**settings)
        for picker, layer in (
            (self._image, image),
            (self._scribbles, scribbles),
            (self._points, points),
            (self._boxes, boxes),
        ):
            if layer is not None:
                picker.value = self._viewer.layers[layer] if isinstance(layer, str) else layer
        if device is not None:
            self._device.value = device
        if model is not None:
            if model not in self._model_choice.choices:
                self.set_model_file(model)
            elif model != self._model_choice.value:
                self._model_choice.value = model
            elif self._model is None:
                self.load_model()

    # ------------------------------------------------------------------ choices
    def _layer_choices(self, kind: type, _widget: Any = None, scribbles: bool = False):
        layers = [layer for layer in self._viewer.layers if isinstance(layer, kind)]
        if scribbles:
            owned = [_key(layer) for out in self._outputs.values() for layer in out.values()]
            layers = [
                layer
                for layer in layers
                if _key(layer) not in owned and layer.metadata.get("scribble_refine") != "committed"
            ]
        return [(layer.name, layer) for layer in layers]

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        present = {_key(layer) for layer in self._viewer.layers}
        for key in [k for k in self._sessions if k[0] not in present]:
            del self._sessions[key]  # the image is gone: so is its work
        for table in (self._outputs, self._types):
            for key in [k for k in table if k not in present]:
                del table[key]
        self._reset_layer_choices()
        self._update_buttons()

    def _reset_layer_choices(self) -> None:
        for picker in (self._image, self._scribbles, self._points, self._boxes):
            picker.reset_choices()

    def _on_image_changed(self) -> None:
        session = self._session
        if session is not None:  # back to an image with work: its classes and result
            self._apply_classes(list(session.class_names))
            self._set_status(
                f"{self._image.value.name}: its {session.history_position} change(s) are "
                "kept; Undo steps back through them"
            )
        elif self._model is not None:
            self._apply_classes(list(self._model.class_names))
        if not self._model_picked and self._choose_model_for_image():
            self.load_model()
        self._update_buttons()

    def _choose_model_for_image(self) -> bool:
        """Pick the built-in model that suits the chosen image; True when it changed."""
        layer = self._image.value
        choice = self._model_choice.value
        if layer is None or choice not in available_models():
            return False
        wanted = default_model(bool(getattr(layer, "rgb", False)))
        if wanted == choice:
            return False
        with self._model_choice.changed.blocked():
            self._model_choice.value = wanted
        return True

    def _on_scribbles_changed(self) -> None:
        self._watch_brush(self._scribbles.value)
        self._highlight_palette()
        self._update_buttons()

    def _watch_brush(self, layer: Labels | None) -> None:
        """Follow the label chosen in one scribble layer (keyboard, picker) in the palette."""
        if self._watched is not None:
            self._watched.events.selected_label.disconnect(self._highlight_palette)
        self._watched = layer
        if layer is not None:
            layer.events.selected_label.connect(self._highlight_palette)

    # ------------------------------------------------------------------ palette
    def select_class(self, index: int, *_: Any) -> None:
        """Make the brush, new points and new boxes mark one class.

        Parameters
        ----------
        index : int
            Class index (0 = background).
        """
        if not 0 <= index < len(self._class_names):
            show_error(f"No class {index}: the model has classes {self._class_names}")
            return
        scribbles = self._scribbles.value
        if scribbles is not None:
            scribbles.selected_label = index + 1
            if scribbles.mode not in ("paint", "fill", "polygon"):
                scribbles.mode = "paint"
        for layer in (self._points.value, self._boxes.value):
            if layer is not None:
                _layers.mark_class(layer, index)
        self._palette.show_selected(index)
        self._set_status(f"Brush: {self._class_names[index]}")

    def _highlight_palette(self, *_: Any) -> None:
        scribbles = self._scribbles.value
        if scribbles is not None and 1 <= scribbles.selected_label <= len(self._class_names):
            self._palette.show_selected(scribbles.selected_label - 1)

    def _apply_classes(self, class_names: list[str]) -> None:
        if class_names == self._class_names:
            return
        self._class_names = list(class_names)
        self._palette.set_classes(self._class_names)
        for layer in self._viewer.layers:
            if layer.metadata.get("scribble_refine") == "scribbles":
                layer.colormap = _layers.scribble_colormap(self._class_names)
                layer.features = _layers.class_features(self._class_names, offset=1)
        if self.prediction_layer is not None:
            self.prediction_layer.colormap = _layers.prediction_colormap(self._class_names)

    # ------------------------------------------------------------------ new layers
    def _require_image(self) -> Image | None:
        image = self._image.value
        if image is None:
            show_error("No image layer: open or choose an image first (File > Open, or a sample)")
        return image

    def new_scribbles(self, *_: Any) -> Labels | None:
        """Add an empty scribble layer matching the chosen image and select it.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (None without an image).
        """
        brush = _layers.brush_size_for(self._shown_labels())

        def add(viewer: Any, image: Image, class_names: list[str]) -> Labels:
            return _layers.add_scribble_layer(viewer, image, class_names, brush_size=brush)

        layer = self._new_layer(add, self._scribbles)
        if layer is not None and self.instances_layer is not None:
            self._set_status(f"Brush {brush} px: a third of the nuclei's median width")
        return layer

    def _shown_labels(self) -> np.ndarray | None:
        layer = self.instances_layer
        return None if layer is None else np.asarray(layer.data)

    def new_points(self, *_: Any) -> Points | None:
        """Add an empty Points layer whose points mark the brush class.

        Returns
        -------
        napari.layers.Points or None
            The new layer (None without an image).
        """
        return self._new_layer(_layers.add_points_layer, self._points)

    def new_boxes(self, *_: Any) -> Shapes | None:
        """Add an empty Shapes layer for rectangles that mark the brush class.

        Returns
        -------
        napari.layers.Shapes or None
            The new layer (None without an image).
        """
        return self._new_layer(_layers.add_boxes_layer, self._boxes)

    def _new_layer(self, add: Any, picker: ComboBox) -> Any:
        image = self._require_image()
        if image is None:
            return None
        brush = self._palette.selected
        layer = add(self._viewer, image, self._class_names)
        picker.value = layer
        self.select_class(brush)
        self._viewer.layers.selection.active = layer
        return layer

    # ------------------------------------------------------------------ model
    def set_model_file(self, path: str | Path) -> None:
        """Use a checkpoint or TorchScript file as the model (loaded in the background).

        Parameters
        ----------
        path : str or pathlib.Path
            The file.
        """
        self._model_file = str(path)
        label = f"file: {Path(path).name}"
        with self._model_choice.changed.blocked():
            self._model_choice.reset_choices()
            self._model_choice.value = label
        self._on_model_chosen(label)

    def _model_choices(self, _widget: Any = None) -> list[str]:
        files = [f"file: {Path(self._model_file).name}"] if self._model_file else []
        return [*available_models(), *files, FROM_FILE]

    def _model_spec(self) -> str:
        choice = self._model_choice.value
        if choice is None or choice == FROM_FILE:
            raise ValueError("No model chosen: pick a built-in model or a file")
        if str(choice).startswith("file: "):
            return str(self._model_file)
        return str(choice)

    def _on_model_chosen(self, choice: Any = None) -> None:
        self._model_picked = True
        if choice == FROM_FILE:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getOpenFileName(
                self.native,
                "Model file (checkpoint, TorchScript, bioimage.io package)",
                "",
                "Models (*.pt *.pth *.ts *.safetensors *.ckpt *.tar *.zip *.yaml);;All files (*)",
            )
            if path:
                self.set_model_file(path)
            return
        self.load_model()

    def _on_device_changed(self) -> None:
        self._drop_session("Device changed: the next Predict starts over on it")

    def _on_head_depth_changed(self) -> None:
        self._drop_session("Layers to tune changed: the next Predict starts over with them")

    def _drop_session(self, reason: str) -> None:
        if self._sessions:
            self._sessions.clear()
            show_info(f"{reason} (refinements dropped; Save model… keeps them first)")
        self._update_buttons()

    def load_model(self, wait: bool = False) -> Any:
        """Load the chosen model in the background; its classes set the palette.

        Parameters
        ----------
        wait : bool
            Block (processing Qt events) until it is loaded.

        Returns
        -------
        worker or None
            The thread worker, or None when nothing was started.
        """
        if self._runner.busy:
            self._reload_wanted = True
            return None
        self._reload_wanted = False
        try:
            spec = self._model_spec()
        except ValueError as error:
            show_error(str(error))
            return None
        if spec == self._model_key:
            return None
        allow_code = spec == self._model_file
        if allow_code and is_torchscript(spec):
            show_warning(
                f"Loading {Path(spec).name}: a TorchScript file runs its own code; "
                "use only files from sources you trust"
            )

        def loaded(model: Any) -> None:
            self._model, self._model_key = model, spec
            self._apply_classes(list(model.class_names))
            self._set_status(f"Model {model.name} ready ({', '.join(model.class_names)})")

        return self._start(
            f"loading {spec}",
            partial(_tasks.load_model, spec, allow_code),
            on_result=loaded,
            wait=wait,
        )

    # ------------------------------------------------------------------ actions
    def config(self) -> RefineConfig:
        """Return the refinement settings shown in the widget.

        Returns
        -------
        RefineConfig
            A validated configuration.
        """
        return self._settings.config(str(self._device.value))

    def _inputs(self) -> tuple[Image, Any, Any] | None:
        """Check on the GUI thread what Predict and Refine start from.

        Returns the image layer, the open session for it (or None) and, without one, a
        function that opens a session from a private copy of the image; None when the inputs
        were rejected (with a notification).
        """
        if self._runner.busy:
            show_info(f"Busy {self._runner.name}: wait or Cancel first")
            return None
        image_layer = self._require_image()
        if image_layer is None:
            return None
        session = self._session
        if session is not None:
            return image_layer, session, None
        image, rgb = _layers.image_array(image_layer)
        validate_image(image, rgb=rgb, name=f"Image '{image_layer.name}'")
        spec = self._model_spec()
        config = self.config()
        model = self._model if self._model_key == spec else None
        allow_code = spec == self._model_file

        def make_session() -> Any:
            nonlocal model
            if model is None:
                model = _tasks.load_model(spec, allow_code=allow_code)
            return _tasks.start_session(model, image, rgb, config)

        return image_layer, None, make_session

    def predict(self, wait: bool = False) -> Any:
        """Segment the chosen image in the background and show the prediction.

        Parameters
        ----------
        wait : bool
            Block (processing Qt events) until the prediction is shown.

        Returns
        -------
        worker or None
            The thread worker, or None when the inputs were rejected (see the notification).
        """
        try:
            inputs = self._inputs()
        except (ValueError, TypeError) as error:
            show_error(str(error))
            return None
        if inputs is None:
            return None
        image, session, make_session = inputs
        return self._start(
            "predicting",
            partial(_tasks.predict, session, make_session),
            on_result=partial(self._show_outcome, image),
            wait=wait,
        )

    def _feedback(self, image: Image) -> _tasks.Feedback:
        shape = _layers.spatial_shape(image)
        scribbles = None
        if self._scribbles.value is not None:
            layer = self._scribbles.value
            scribbles = validate_scribbles(
                _layers.labels_array(layer),
                shape,
                len(self._class_names),
                name=f"Scribble layer '{layer.name}'",
            )
        points = np.zeros((0, len(shape)))
        point_classes = np.zeros(0, dtype=int)
        if self._points.value is not None:
            points, point_classes = _layers.point_prompts(self._points.value, image)
        boxes: list[np.ndarray] = []
        box_classes = np.zeros(0, dtype=int)
        if self._boxes.value is not None:
            boxes, box_classes = _layers.box_prompts(self._boxes.value, image)
        return _tasks.Feedback(
            scribbles=scribbles,
            points=points,
            point_classes=point_classes,
            boxes=boxes,
            box_classes=box_classes,
            point_radius=self._settings.point_radius.value,
            box_ring=self._settings.box_ring.value,
        )

    def refine(self, wait: bool = False) -> Any:
        """Fine-tune the model's head on the scribbles, points and boxes, in the background.

        Parameters
        ----------
        wait : bool
            Block (processing Qt events) until the refinement has finished.

        Returns
        -------
        worker or None
            The thread worker, or None when the inputs were rejected (see the notification).
        """
        try:
            inputs = self._inputs()
            if inputs is None:
                return None
            image, session, make_session = inputs
            feedback = self._feedback(image)
        except (ValueError, TypeError) as error:
            show_error(str(error))
            return None
        has_feedback = len(feedback.points) or len(feedback.boxes)
        if not has_feedback and (feedback.scribbles is None or not feedback.scribbles.any()):
            show_error("Nothing to refine on: paint scribbles (New scribbles), or add points/boxes")
            return None
        config = self.config()
        self._live.discard()
        self._live.delivered = 0
        self._progress_bar.max = config.max_iterations
        self._progress_bar.value = 0
        work = _tasks.refine(session, make_session, feedback, config, self._runner.cancelled)
        self._task_image = image  # live previews go to this image's layer
        return self._start(
            "refining",
            work,
            on_result=partial(self._show_outcome, image),
            on_yielded=self._on_step,
            wait=wait,
        )

    def cancel(self, *_: Any) -> None:
        """Stop the running refinement after its current step (the result stays undoable)."""
        if self._runner.busy:
            self._runner.cancel()
            self._set_status("Cancelling after the current step…")

    def _history(self, action: str, wait: bool) -> Any:
        if self._session is None:
            show_info("Nothing to undo yet: Predict and Refine first")
            return None
        image = self._image.value
        return self._start(
            action,
            partial(_tasks.history, self._session, action),
            on_result=partial(self._show_outcome, image),
            wait=wait,
        )

    def undo(self, wait: bool = False) -> Any:
        """Undo the last refinement (background task).

        Parameters
        ----------
        wait : bool
            Block (processing Qt events) until done.

        Returns
        -------
        worker or None
            The thread worker.
        """
        return self._history("undo", wait)

    def redo(self, wait: bool = False) -> Any:
        """Redo the last undone refinement (background task).

        Parameters
        ----------
        wait : bool
            Block (processing Qt events) until done.

        Returns
        -------
        worker or None
            The thread worker.
        """
        return self._history("redo", wait)

    def reset_model(self, wait: bool = False) -> Any:
        """Return to the pre-trained head (undoable; background task).

        Parameters
        ----------
        wait : bool
            Block (processing Qt events) until done.

        Returns
        -------
        worker or None
            The thread worker.
        """
        return self._history("reset", wait)

    def _shown_instances(self) -> tuple[Image, np.ndarray, dict[int, int]] | None:
        """Return the chosen image, its shown instances and their classes (None before Predict)."""
        image = self._image.value
        layer, types = self.instances_layer, self._types.get(_key(image))
        if image is None or layer is None or types is None:
            show_info("Predict first: Commit and Export take the nuclei shown for the image")
            return None
        return image, np.array(layer.data, copy=True), types

    def commit(self) -> Labels | None:
        """Copy the shown nuclei and their types into a new Labels layer the user owns.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (named ``"<image> corrected"``), or None before Predict.
        """
        shown = self._shown_instances()
        if shown is None or self._runner.busy:
            return None
        image, labels, types = shown
        ids = sorted(types)
        names = [self._class_names[types[i]] if types[i] < len(self._class_names) else "?"
                 for i in ids]  # fmt: skip
        layer = self._viewer.add_labels(
            labels,
            name=f"{image.name} corrected",
            features={"index": [0, *ids], "type": ["background", *names]},
            metadata={"scribble_refine": "committed"},
            scale=image.scale[-labels.ndim :],
            translate=image.translate[-labels.ndim :],
        )
        self._set_status(
            f"Committed {len(ids)} nuclei to '{layer.name}': yours to edit; File > Save "
            "Selected Layers saves it, Export… adds types and polygons"
        )
        return layer

    def _ask_file(self, title: str, name: str, suffixes: tuple[str, ...] = ()) -> str | None:
        """Ask where to save (Qt's own dialog, which asks before replacing a file)."""
        from qtpy.QtWidgets import QFileDialog

        dialog = QFileDialog(self.native, title)
        dialog.setOption(QFileDialog.Option.DontUseNativeDialog)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDirectory(str(Path.home()))
        if suffixes:
            dialog.setNameFilter(f"{title} ({' '.join('*' + s for s in suffixes)})")
            dialog.setDefaultSuffix(suffixes[0].lstrip("."))
        dialog.selectFile(name)
        return dialog.selectedFiles()[0] if dialog.exec() and dialog.selectedFiles() else None

    def _on_export(self) -> None:
        image = self._image.value
        if image is not None:
            path = self._ask_file("Export nuclei (TIFF labels, CSV of types, GeoJSON)",
                                  f"{image.name}-nuclei")  # fmt: skip
            if path:
                self.export(path)

    def export(self, prefix: str | Path) -> list[Path] | None:
        """Write the shown nuclei: ``<prefix>_instances.tif``, ``_types.csv``, ``.geojson``.

        Parameters
        ----------
        prefix : str or Path
            Output prefix (a suffix such as ``.geojson`` is dropped); files are replaced.

        Returns
        -------
        list of Path or None
            The files written, or None when there was nothing to export or it failed.
        """
        shown = self._shown_instances()
        if shown is None:
            return None
        _, labels, types = shown
        prefix = Path(prefix)
        if prefix.suffix.lower() in (".geojson", ".csv", ".tif", ".tiff"):
            prefix = prefix.with_suffix("")
        colours = {c: _layers.class_colour(c) for c in range(1, len(self._class_names))}
        try:
            files = write_instances(prefix, labels, types, self._class_names, colours)
        except (ValueError, OSError) as error:
            self._set_status(f"Not exported: {error}")
            show_error(str(error))
            return None
        self._set_status(f"Exported {len(types)} nuclei: {', '.join(f.name for f in files)}")
        return files

    def _on_save_model(self) -> None:
        session = self._session
        if session is not None:
            suffixes = session.model.save_suffixes
            name = f"{Path(session.model.name).stem}-tuned{suffixes[0]}"
            path = self._ask_file("Save the tuned model", name, suffixes)
            if path:
                self.save_model(path)

    def save_model(self, path: str | Path) -> Path | None:
        """Save the open session's model as tuned now (replacing ``path``).

        Parameters
        ----------
        path : str or Path
            The file; its suffix must suit the model (see ``RefineSession.save_model``).

        Returns
        -------
        Path or None
            The file written, or None when there was nothing to save or it failed (the
            status line says why).
        """
        if self._session is None or self._runner.busy:
            show_info("Predict first, and wait for the running task: then Save model…")
            return None
        try:
            saved = self._session.save_model(path, overwrite=True)
        except (ValueError, OSError) as error:
            self._set_status(f"Not saved: {error}")
            show_error(str(error))
            return None
        self._set_status(f"Saved the tuned model to {saved.name}; Model > From file… loads it.")
        return saved

    def _other_images(self) -> list[Image]:
        current = self._image.value
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, Image) and _key(layer) != _key(current)
        ]

    def apply_to_others(self, wait: bool = False) -> Any:
        """Predict every other open image with the tuned model (background task).

        Each image gets its own session, which starts from the tuned model (Reset model
        returns there) and its own output layers; images the model cannot take, and images
        with refinements of their own, are named in the status line and left alone.

        Parameters
        ----------
        wait : bool
            Block (processing Qt events) until the predictions are shown.

        Returns
        -------
        worker or None
            The thread worker, or None when there was nothing to apply.
        """
        session = self._session
        if session is None or session.history_position == 0:
            show_info("Refine first: Apply to others uses the tuned model")
            return None
        targets, inputs, skipped, kept = [], [], [], []
        for layer in self._other_images():
            own = self._session_of(layer)
            if own is not None and own.history_position > 0:
                kept.append(layer.name)  # never replace work done on that image
                continue
            image, rgb = _layers.image_array(layer)
            try:
                info = validate_image(image, rgb=rgb, name=f"Image '{layer.name}'")
            except (ValueError, TypeError):
                skipped.append(layer.name)
                continue
            if (3 if info.is_rgb else 1) != session.model.in_channels:
                skipped.append(layer.name)
                continue
            targets.append(layer)
            inputs.append((np.array(image, copy=True), rgb))
        note = f"; not applied to {', '.join(skipped)} (another kind of image)" if skipped else ""
        if kept:
            note += (
                f"; {', '.join(kept)} kept {'its' if len(kept) == 1 else 'their'} own refinements"
            )
        if not targets:
            self._set_status(f"No other image to apply the tuned model to{note}")
            show_info(self._status.value)
            return None

        def show(outcomes: list[_tasks.Outcome]) -> None:
            for layer, outcome in zip(targets, outcomes, strict=True):
                self._show_outcome(layer, outcome)
            names = ", ".join(layer.name for layer in targets)
            self._set_status(f"Applied the tuned model to {names}{note}")

        config = self.config()
        return self._start(
            "applying the tuned model",
            partial(_tasks.apply_to, session.model, inputs, config),
            on_result=show,
            wait=wait,
        )

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
        if self._session is None:
            show_info("Predict first: the class is added to the model of the open session")
            return None
        name = (self._class_name.value if name is None else name).strip()
        if not name:
            show_error("Type a name for the new class first")
            return None
        source = self._palette.selected if init_from is None else init_from
        image = self._image.value
        return self._start(
            "adding a class",
            partial(_tasks.add_class, self._session, name, source),
            on_result=partial(self._show_new_class, image),
            wait=wait,
        )

    def _show_new_class(self, image: Image, outcome: _tasks.Outcome) -> None:
        self._show_outcome(image, outcome)
        self._class_name.value = ""
        self.select_class(len(self._class_names) - 1)
        self._set_status(outcome.message)

    def wait(self, timeout: float | None = None) -> bool:
        """Process Qt events until the running task has finished and its result is shown.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most.

        Returns
        -------
        bool
            True when idle.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._runner.busy:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._runner.wait(left)
        return True

    # ------------------------------------------------------------------ running
    def _start(self, name: str, work: Any, *, on_result, on_yielded=None, wait: bool) -> Any:
        if self._closed:
            return None
        if self._runner.busy:
            show_info(f"Busy {self._runner.name}: wait or Cancel first")
            return None
        self._set_status(f"{name.capitalize()}…")
        worker = self._runner.start(
            name,
            work,
            on_result=self._guard(on_result),
            on_yielded=self._guard(on_yielded) if on_yielded else None,
            on_failed=self._guard(self._on_failed),
        )
        if wait:
            self._runner.wait()
        return worker

    def _guard(self, handler):
        def guarded(value: Any) -> None:
            if not self._closed:
                handler(value)

        return guarded

    def _on_busy(self, busy: bool) -> None:
        if not busy:
            if self._closed:
                self._live.discard()
            else:
                self._live.flush()
        if not self._closed:
            self._update_buttons()
            if not busy and self._reload_wanted:
                self.load_model()

    def _on_failed(self, failed: Failed) -> None:
        self._set_status(f"Failed: {failed.message}")
        show_error(failed.message)

    def _on_step(self, step: Any) -> None:
        self._set_status(
            f"Iteration {step.iteration}: loss {step.loss:.3g}, "
            f"{step.violations} scribbled pixels still wrong"
        )
        if step.prediction is not None:
            self._live.push(step.prediction)
        self._progress_bar.value = min(step.iteration, self._progress_bar.max)

    def _show_live_prediction(self, prediction: np.ndarray) -> None:
        if self._closed:  # before touching a control: they may be deleted already
            return
        image = self._task_image
        if image is not None and image in self._viewer.layers:
            self._show_prediction(image, prediction)

    def _show_prediction(self, image: Image, prediction: np.ndarray) -> None:
        outputs = self._outputs.setdefault(_key(image), {})
        outputs["prediction"] = _layers.set_output(
            self._viewer,
            self._output(image, "prediction"),
            np.asarray(prediction),
            name=f"{image.name} prediction",
            image=image,
            colormap=_layers.prediction_colormap(self._class_names),
            opacity=0.5,
            features=_layers.class_features(self._class_names, offset=0),
        )

    def _show_outcome(self, image: Image, outcome: _tasks.Outcome) -> None:
        if outcome.session is not self._session_of(image):
            self._check_channels(outcome.session)
        self.last_outcome = outcome
        self._live.discard()
        self._sessions[_key(image), self._chosen_model()] = (image, outcome.session)
        if image is self._image.value:
            self._apply_classes(list(outcome.session.class_names))
        self._show_prediction(image, outcome.prediction)
        if outcome.instances is not None:
            colormap = _layers.instance_colormap(outcome.instance_classes)
            existing = self._output(image, "instances")
            layer = _layers.set_output(
                self._viewer,
                existing,
                np.asarray(outcome.instances),
                name=f"{image.name} instances",
                image=image,
                colormap=colormap,
                opacity=0.9,
            )
            self._outputs[_key(image)]["instances"] = layer
            self._types[_key(image)] = dict(outcome.instance_classes)
            if layer is existing:
                layer.colormap = colormap
            else:
                layer.contour = 1
        self._reset_layer_choices()
        self._set_status(outcome.message)

    def _check_channels(self, session: Any) -> None:
        channels = session.image_info.n_channels
        wanted = session.model.in_channels
        if channels == 1 and wanted > 1:
            show_warning(
                f"The image is greyscale but model {session.model.name} takes {wanted} "
                "channels: the grey values were repeated; a model trained for this kind of "
                "image will do better"
            )

    def _set_status(self, message: str) -> None:
        if self._closed:  # the label may be deleted already
            return
        self._status.value = message
        self._viewer.status = f"Scribble Refine: {message}"

    def _update_buttons(self, *_: Any) -> None:
        busy = self._runner.busy
        image = self._image.value
        has_image = image is not None
        session = self._session
        self._predict_button.enabled = not busy and has_image
        self._refine_button.enabled = not busy and has_image
        self._cancel_button.enabled = busy and self._runner.name == "refining"
        self._undo_button.enabled = not busy and bool(session is not None and session.can_undo)
        self._redo_button.enabled = not busy and bool(session is not None and session.can_redo)
        changed = session is not None and session.history_position > 0
        self._reset_button.enabled = not busy and changed  # nothing to reset after Predict
        self._add_class_button.enabled = not busy and session is not None
        shown = self._types.get(_key(image)) is not None and self.instances_layer is not None
        self._commit_button.enabled = not busy and shown
        self._export_button.enabled = not busy and shown
        savable = session is not None and bool(session.model.save_suffixes)
        self._save_model_button.enabled = not busy and savable
        self._apply_button.enabled = not busy and changed and bool(self._other_images())
        for widget in (self._image, self._model_choice, self._device):
            widget.enabled = not busy

    def _shortcut(self, action: str) -> Callable[[Any], None]:
        """Return the key binding that runs ``action`` (``"refine"``, ``"undo"``, ``"redo"``).

        napari looks up key bindings by their function's ``__name__`` on every key press,
        so the binding is a named function (a ``functools.partial`` has no name and breaks
        every shortcut of the viewer).

        Parameters
        ----------
        action : str
            The widget method to call.

        Returns
        -------
        callable
            A function of the viewer, named ``scribble_refine_<action>``.
        """

        def run(viewer: Any = None) -> None:
            self._on_shortcut(action)

        run.__name__ = run.__qualname__ = f"scribble_refine_{action}"
        return run

    def _on_shortcut(self, action: str) -> None:
        if not self._closed:
            getattr(self, action)()

    # ------------------------------------------------------------------ closing
    def shutdown(self) -> None:
        """Stop any running task and let go of the viewer (called when the widget closes)."""
        if self._closed:
            return
        self._closed = True
        self._runner.stop()
        self._live.discard()
        for key in SHORTCUTS.values():
            self._viewer.bind_key(key, None)
        self._watch_brush(None)
        layers = self._viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
            event.disconnect(self._on_layers_changed)

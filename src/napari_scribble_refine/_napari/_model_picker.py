"""The Model picker: a built-in model or a file, and the model loaded for the choice.

The picker names a model (:meth:`ModelPicker.spec`) and loads it in a thread worker when
the choice changes (or, while another task runs, once it has finished). Until the user
picks a model the picker follows the image: the H&E model for a colour image, the greyscale
one otherwise.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox
from napari.utils.notifications import show_error, show_warning

from ..core.models.registry import available_models, default_model, is_torchscript
from . import _tasks

if TYPE_CHECKING:
    from collections.abc import Callable

    from napari.layers import Image
    from qtpy.QtWidgets import QWidget

    from ..core.models.base import SegmentationModel

FROM_FILE = "From file…"
FILE_FILTER = "Models (*.pt *.pth *.ts *.safetensors *.ckpt *.tar *.zip *.yaml);;All files (*)"


class ModelPicker:
    """The Model combo box, the model file chosen through it and the model loaded.

    Attributes
    ----------
    combo : magicgui.widgets.ComboBox
        The control.
    model : SegmentationModel or None
        The last model loaded, for :attr:`key`.
    key : str or None
        What :attr:`model` was loaded from (a built-in name or a path).
    file : str or None
        The model file chosen through "From file…".
    picked : bool
        Whether the user chose a model (images then no longer choose it).
    reload_wanted : bool
        The choice changed while a task ran: load when it has finished.

    Parameters
    ----------
    start : callable
        Starts a task: ``start(name, work, on_result=..., wait=...)`` returns the worker or
        None (the widget's task runner).
    busy : callable
        Whether a task runs.
    on_loaded : callable
        Called with a model once it is loaded (GUI thread).
    parent : QWidget
        The parent of the file dialog.
    """

    def __init__(
        self,
        start: Callable[..., Any],
        busy: Callable[[], bool],
        on_loaded: Callable[[SegmentationModel], None],
        parent: QWidget,
    ) -> None:
        self._start, self._busy, self._on_loaded, self._parent = start, busy, on_loaded, parent
        self.model: SegmentationModel | None = None
        self.key: str | None = None
        self.file: str | None = None
        self.picked = False
        self.reload_wanted = False
        self.combo = ComboBox(
            label="Model",
            choices=self._choices,
            tooltip="A built-in model, or a checkpoint / TorchScript file of your own.",
        )
        self.combo.changed.connect(self._on_chosen)

    def _choices(self, _widget: Any = None) -> list[str]:
        files = [f"file: {Path(self.file).name}"] if self.file else []
        return [*available_models(), *files, FROM_FILE]

    def spec(self) -> str:
        """Return what the picker names: a built-in model name or a file path.

        Returns
        -------
        str
            The model to load.

        Raises
        ------
        ValueError
            If no model is chosen (or "From file…" is shown).
        """
        choice = self.combo.value
        if choice is None or choice == FROM_FILE:
            raise ValueError("No model chosen: pick a built-in model or a file")
        if str(choice).startswith("file: "):
            return str(self.file)
        return str(choice)

    def chosen(self) -> str:
        """Return :meth:`spec`, or "" when the picker names no model."""
        try:
            return self.spec()
        except ValueError:
            return ""

    def choose_file(self, path: str | Path) -> Any:
        """Make a model file the choice and load it.

        Parameters
        ----------
        path : str or pathlib.Path
            The file.

        Returns
        -------
        worker or None
            The worker loading it, or None when nothing was started.
        """
        self.file = str(path)
        label = f"file: {Path(path).name}"
        with self.combo.changed.blocked():
            self.combo.reset_choices()
            self.combo.value = label
        return self._on_chosen(label)

    def _on_chosen(self, choice: Any = None) -> Any:
        self.picked = True
        if choice != FROM_FILE:
            return self.load()
        from qtpy.QtWidgets import QFileDialog

        title = "Model file (checkpoint, TorchScript, bioimage.io package)"
        path, _ = QFileDialog.getOpenFileName(self._parent, title, "", FILE_FILTER)
        return self.choose_file(path) if path else None

    def suit_image(self, layer: Image | None) -> bool:
        """Choose the built-in model that suits an image (without calling back).

        Parameters
        ----------
        layer : napari.layers.Image or None
            The chosen image.

        Returns
        -------
        bool
            True when the choice changed.
        """
        choice = self.combo.value
        if layer is None or choice not in available_models():
            return False
        wanted = default_model(bool(getattr(layer, "rgb", False)))
        if wanted == choice:
            return False
        with self.combo.changed.blocked():
            self.combo.value = wanted
        return True

    def load(self, wait: bool = False) -> Any:
        """Load the chosen model in a thread worker (later, when a task runs).

        Parameters
        ----------
        wait : bool
            Block (processing Qt events) until it is loaded.

        Returns
        -------
        worker or None
            The thread worker, or None when nothing was started.
        """
        if self._busy():
            self.reload_wanted = True
            return None
        self.reload_wanted = False
        try:
            spec = self.spec()
        except ValueError as error:
            show_error(str(error))
            return None
        if spec == self.key:
            return None
        allow_code = spec == self.file
        if allow_code and is_torchscript(spec):
            show_warning(
                f"Loading {Path(spec).name}: a TorchScript file runs its own code; "
                "use only files from sources you trust"
            )

        def loaded(model: SegmentationModel) -> None:
            self.model, self.key = model, spec
            self._on_loaded(model)

        work = partial(_tasks.load_model, spec, allow_code)
        return self._start(f"loading {spec}", work, on_result=loaded, wait=wait)

    def cached(self, spec: str) -> tuple[SegmentationModel | None, Callable[[], Any]]:
        """Return the model loaded for ``spec`` (None if another) and a task that loads it.

        Parameters
        ----------
        spec : str
            What the picker names.

        Returns
        -------
        model : SegmentationModel or None
            The loaded model when it is for ``spec``.
        load : callable
            Loads the model (in a worker), for when ``model`` is None.
        """
        model = self.model if self.key == spec else None
        return model, partial(_tasks.load_model, spec, spec == self.file)

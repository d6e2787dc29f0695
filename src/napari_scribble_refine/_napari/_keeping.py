"""Keeping the work: Commit, Export…, Save model… and Apply to others.

:class:`Keeping` runs the four actions for the chosen image and reports in the widget's
status line; the functions beside it do the work on layers and arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info

from ..core.images import validate_image
from ..instance_files import write_instances
from . import _large_images, _layers, _tasks

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels
    from qtpy.QtWidgets import QWidget

    from ..core.config import RefineConfig
    from ..core.session import RefineSession
    from ._brush import Brush
    from ._image_sessions import ImageSessions
    from ._pickers import LayerPickers
    from ._refining import Refinement

EXPORT_SUFFIXES = (".geojson", ".csv", ".tif", ".tiff")


def commit_nuclei(
    viewer: napari.viewer.Viewer,
    image: Image,
    labels: np.ndarray,
    types: dict[int, int],
    class_names: list[str],
    origin: tuple[int, ...] | None = None,
) -> Labels:
    """Add a Labels layer of the user's own holding the nuclei and their types.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    image : napari.layers.Image
        The image (the layer is named after it and placed over it).
    labels : numpy.ndarray
        A copy of the instance labels shown.
    types : dict of int to int
        Class of each instance.
    class_names : list of str
        The model's classes.
    origin : tuple of int, optional
        Where the labels' first pixel lies in the image (a large image's region).

    Returns
    -------
    napari.layers.Labels
        The layer ``"<image> corrected"``, with the types in its features; marked so that
        the widget never offers it as scribbles.
    """
    ids = sorted(types)
    names = [class_names[types[i]] if types[i] < len(class_names) else "?" for i in ids]
    return viewer.add_labels(
        labels,
        name=f"{image.name} corrected",
        features={"index": [0, *ids], "type": ["background", *names]},
        metadata={"scribble_refine": "committed"},
        **_layers.placement(image, origin),
    )


def export_nuclei(
    prefix: str | Path,
    labels: np.ndarray,
    types: dict[int, int],
    class_names: list[str],
    origin: tuple[int, ...] | None = None,
) -> list[Path]:
    """Write ``<prefix>_instances.tif``, ``<prefix>_types.csv`` and ``<prefix>.geojson``.

    Parameters
    ----------
    prefix : str or pathlib.Path
        Output prefix; a suffix such as ``.geojson`` is dropped. Files are replaced.
    labels : numpy.ndarray
        Instance labels.
    types : dict of int to int
        Class of each instance.
    class_names : list of str
        The model's classes.
    origin : tuple of int, optional
        Where the labels' first pixel lies in the image (a large image's region): the CSV's
        centroids and the GeoJSON's polygons are in the image's pixels.

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    ValueError, OSError
        When the files cannot be written.
    """
    prefix = Path(prefix)
    if prefix.suffix.lower() in EXPORT_SUFFIXES:
        prefix = prefix.with_suffix("")
    colours = {c: _layers.class_colour(c) for c in range(1, len(class_names))}
    return write_instances(prefix, labels, types, class_names, colours, origin)


def ask_save_path(
    parent: QWidget, title: str, name: str, suffixes: tuple[str, ...] = ()
) -> str | None:
    """Ask where to save (Qt's own dialog, which asks before replacing a file).

    Parameters
    ----------
    parent : QWidget
        The dialog's parent.
    title : str
        The dialog's title (and file filter's name).
    name : str
        The file name offered.
    suffixes : tuple of str
        Suffixes the file may have; the first is added when the user types none.

    Returns
    -------
    str or None
        The path, or None when the user cancelled.
    """
    from qtpy.QtWidgets import QFileDialog

    dialog = QFileDialog(parent, title)
    dialog.setOption(QFileDialog.Option.DontUseNativeDialog)
    dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
    dialog.setDirectory(str(Path.home()))
    if suffixes:
        dialog.setNameFilter(f"{title} ({' '.join('*' + s for s in suffixes)})")
        dialog.setDefaultSuffix(suffixes[0].lstrip("."))
    dialog.selectFile(name)
    return dialog.selectedFiles()[0] if dialog.exec() and dialog.selectedFiles() else None


@dataclass
class ApplyPlan:
    """The images a tuned model is applied to, and those left alone.

    Attributes
    ----------
    targets : list of napari.layers.Image
        The images to predict.
    inputs : list of (numpy.ndarray, bool)
        A private copy of each target's pixels and whether it is RGB.
    skipped : list of str
        Names of images of another kind (the model cannot take them).
    kept : list of str
        Names of images with refinements of their own.
    large : list of str
        Names of images too large to predict whole (worked on region by region).
    """

    targets: list[Image] = field(default_factory=list)
    inputs: list[tuple[np.ndarray, bool]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    large: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        """What was left alone, as the end of a status sentence ("" when nothing)."""
        note = f"; not applied to {', '.join(self.skipped)} (another kind of image)"
        note = note if self.skipped else ""
        if self.kept:
            its = "its" if len(self.kept) == 1 else "their"
            note += f"; {', '.join(self.kept)} kept {its} own refinements"
        if self.large:
            note += (
                f"; {', '.join(self.large)} too large to predict whole: Save model…, then "
                "choose that image, the saved model (Model > From file…) and Predict there"
            )
        return note


def plan_apply(
    session: RefineSession,
    others: list[Image],
    session_of: Callable[[Image], RefineSession | None],
) -> ApplyPlan:
    """Sort the other images into those the tuned model is applied to and those left alone.

    Parameters
    ----------
    session : RefineSession
        The session whose tuned model is applied.
    others : list of napari.layers.Image
        The other open images.
    session_of : callable
        Returns an image's own session (or None).

    Returns
    -------
    ApplyPlan
        Targets with private copies of their pixels, and the names left alone.
    """
    plan = ApplyPlan()
    for layer in others:
        own = session_of(layer)
        if own is not None and own.history_position > 0:
            plan.kept.append(layer.name)  # never replace work done on that image
            continue
        if _large_images.is_large(layer):  # never copied whole: Predict there instead
            plan.large.append(layer.name)
            continue
        image, rgb = _layers.image_array(layer)
        try:
            info = validate_image(image, rgb=rgb, name=f"Image '{layer.name}'")
        except (ValueError, TypeError):
            plan.skipped.append(layer.name)
            continue
        if (3 if info.is_rgb else 1) != session.model.in_channels:
            plan.skipped.append(layer.name)
            continue
        plan.targets.append(layer)
        plan.inputs.append((np.array(image, copy=True), rgb))
    return plan


class Keeping:
    """Commit, Export…, Save model… and Apply to others, for the chosen image.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (Commit adds a layer to it).
    pickers, images, brush, refinement
        The widget's layer pickers, per-image sessions, brush and session actions.
    start : callable
        Starts a task (see :class:`~._refining.Refinement`).
    busy : callable
        Whether a task runs.
    config : callable
        Returns the widget's :class:`RefineConfig`.
    parent : QWidget
        The parent of the save dialogs.
    on_status : callable
        Shows a line in the widget's status.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        pickers: LayerPickers,
        images: ImageSessions,
        brush: Brush,
        refinement: Refinement,
        start: Callable[..., Any],
        busy: Callable[[], bool],
        config: Callable[[], RefineConfig],
        parent: QWidget,
        on_status: Callable[[str], None],
    ) -> None:
        self._viewer, self._pickers, self._images = viewer, pickers, images
        self._brush, self._refinement = brush, refinement
        self._start, self._busy = start, busy
        self._config, self._parent, self._on_status = config, parent, on_status

    def _shown_nuclei(self) -> tuple[Image, np.ndarray, dict[int, int], Any] | None:
        """Return the chosen image, its shown instances, their classes and where they lie.

        The last is the origin of a large image's region (None for a whole image); None
        altogether before Predict.
        """
        image = self._pickers.image.value
        layer, types = self._images.output(image, "instances"), self._images.types(image)
        if image is None or layer is None or types is None:
            show_info("Predict first: Commit and Export take the nuclei shown for the image")
            return None
        session = self._refinement.session_of(image)
        origin = session.origin if session is not None and session.slide is not None else None
        return image, np.array(layer.data, copy=True), types, origin

    def commit(self) -> Labels | None:
        """Copy the shown nuclei and their types into a new Labels layer the user owns.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (named ``"<image> corrected"``), or None before Predict.
        """
        shown = self._shown_nuclei()
        if shown is None or self._busy():
            return None
        image, labels, types, origin = shown
        layer = commit_nuclei(self._viewer, image, labels, types, self._brush.class_names, origin)
        self._on_status(
            f"Committed {len(shown[2])} nuclei to '{layer.name}': yours to edit; File > Save "
            "Selected Layers saves it, Export… adds types and polygons"
        )
        return layer

    def ask_export(self) -> None:
        """Ask where to export the shown nuclei, then export them."""
        image = self._pickers.image.value
        if image is not None:
            title = "Export nuclei (TIFF labels, CSV of types, GeoJSON)"
            path = ask_save_path(self._parent, title, f"{image.name}-nuclei")
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
        shown = self._shown_nuclei()
        if shown is None:
            return None
        _, labels, types, origin = shown
        try:
            files = export_nuclei(prefix, labels, types, self._brush.class_names, origin)
        except (ValueError, OSError) as error:
            self._on_status(f"Not exported: {error}")
            show_error(str(error))
            return None
        self._on_status(f"Exported {len(types)} nuclei: {', '.join(f.name for f in files)}")
        return files

    def ask_save_model(self) -> None:
        """Ask where to save the tuned model, then save it."""
        session = self._refinement.session_of(self._pickers.image.value)
        if session is not None:
            suffixes = session.model.save_suffixes
            name = f"{Path(session.model.name).stem}-tuned{suffixes[0]}"
            path = ask_save_path(self._parent, "Save the tuned model", name, suffixes)
            if path:
                self.save_model(path)

    def save_model(self, path: str | Path) -> Path | None:
        """Save the chosen image's model as tuned now (replacing ``path``).

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
        session = self._refinement.session_of(self._pickers.image.value)
        if session is None or self._busy():
            show_info("Predict first, and wait for the running task: then Save model…")
            return None
        try:
            saved = session.save_model(path, overwrite=True)
        except (ValueError, OSError) as error:
            self._on_status(f"Not saved: {error}")
            show_error(str(error))
            return None
        self._on_status(f"Saved the tuned model to {saved.name}; Model > From file… loads it.")
        return saved

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
        refinement = self._refinement
        session = refinement.session_of(self._pickers.image.value)
        if session is None or session.history_position == 0:
            show_info("Refine first: Apply to others uses the tuned model")
            return None
        plan = plan_apply(session, self._pickers.other_images(), refinement.session_of)
        if not plan.targets:
            message = f"No other image to apply the tuned model to{plan.note}"
            self._on_status(message)
            show_info(message)
            return None
        try:
            config = self._config()
        except (ValueError, TypeError) as error:
            self._on_status(str(error))
            show_error(str(error))
            return None

        def show(outcomes: list[_tasks.Outcome]) -> None:
            for layer, outcome in zip(plan.targets, outcomes, strict=True):
                refinement.show_outcome(layer, outcome)
            names = ", ".join(layer.name for layer in plan.targets)
            self._on_status(f"Applied the tuned model to {names}{plan.note}")

        work = partial(_tasks.apply_to, session.model, plan.inputs, config)
        return self._start("applying the tuned model", work, on_result=show, wait=wait)

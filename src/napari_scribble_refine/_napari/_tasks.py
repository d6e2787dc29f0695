"""The engine work behind each button, as plain functions and generators (no layers, no Qt).

The widget copies its inputs on the GUI thread, then runs one of these in a thread worker.
Each returns an :class:`Outcome` that the GUI thread turns into layers. Nothing here touches
napari; the same functions serve scripts and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.config import RefineConfig
from ..core.scribbles import boxes_to_scribbles, merge_scribbles, points_to_scribbles


@dataclass
class Outcome:
    """What a task leaves for the GUI thread to show.

    Attributes
    ----------
    session : Any
        The refinement session the result belongs to.
    prediction : numpy.ndarray
        Class map (0 = background, c = class c).
    instances : numpy.ndarray or None
        Instance labels (0 = background, 1..N).
    instance_classes : dict of int to int
        Class of each instance.
    message : str
        One line for the status bar.
    cancelled : bool
        True when a refinement stopped early on Cancel.
    result : RefineResult or None
        The engine's summary of a refinement that ran to its end.
    """

    session: Any
    prediction: np.ndarray
    instances: np.ndarray | None = None
    instance_classes: dict[int, int] = field(default_factory=dict)
    message: str = ""
    cancelled: bool = False
    result: Any = None


@dataclass
class Feedback:
    """The user's corrections, copied from the layers on the GUI thread.

    Attributes
    ----------
    scribbles : numpy.ndarray or None
        Painted scribbles (0 = none, 1 = background, c + 1 = class c).
    points : numpy.ndarray
        (N, D) point coordinates in image pixels.
    point_classes : numpy.ndarray
        Class index of each point.
    boxes : list of numpy.ndarray
        Corner coordinates of each rectangle in image pixels.
    box_classes : numpy.ndarray
        Class index of each box.
    point_radius : int
        Disk radius painted around each point.
    box_ring : int
        Width of the background ring outside each box.
    """

    scribbles: np.ndarray | None
    points: np.ndarray
    point_classes: np.ndarray
    boxes: list[np.ndarray]
    box_classes: np.ndarray
    point_radius: int = 3
    box_ring: int = 3

    def to_scribbles(self, spatial_shape: tuple[int, ...]) -> np.ndarray:
        """Merge painted scribbles, point disks and box constraints into one array.

        Painted scribbles win over points, points over boxes.

        Parameters
        ----------
        spatial_shape : tuple of int
            The image's ``(Y, X)`` or ``(Z, Y, X)``.

        Returns
        -------
        numpy.ndarray
            int32 scribbles of ``spatial_shape``.
        """
        parts = []
        if len(self.boxes):
            parts.append(
                boxes_to_scribbles(self.boxes, self.box_classes + 1, spatial_shape, self.box_ring)
            )
        if len(self.points):
            parts.append(
                points_to_scribbles(
                    self.points, self.point_classes + 1, spatial_shape, self.point_radius
                )
            )
        if self.scribbles is not None:
            parts.append(self.scribbles)
        if not parts:
            return np.zeros(spatial_shape, dtype=np.int32)
        return merge_scribbles(*parts)


def load_model(spec: str, allow_code: bool = False) -> Any:
    """Load a built-in model by name or a checkpoint / TorchScript file by path.

    Parameters
    ----------
    spec : str
        Registry name or file path.
    allow_code : bool
        Allow TorchScript (code that runs with the model): only on the user's explicit
        choice of a file.

    Returns
    -------
    SegmentationModel
        The loaded model (on the CPU; the session moves it to its device).
    """
    from ..core.models.registry import load_model as registry_load

    return registry_load(spec, allow_code=allow_code)


def start_session(model: Any, image: np.ndarray, rgb: bool, config: RefineConfig) -> Any:
    """Open a refinement session on an image (runs the trunk once).

    Parameters
    ----------
    model : SegmentationModel
        The model.
    image : numpy.ndarray
        A private copy of the image.
    rgb : bool
        Whether the last axis is colour.
    config : RefineConfig
        Refinement settings.

    Returns
    -------
    RefineSession
        The session.
    """
    from ..core.session import RefineSession

    return RefineSession(model, image, rgb=rgb, config=config)


def _outcome(session: Any, message: str, *, cancelled: bool = False, result: Any = None) -> Outcome:
    prediction = np.asarray(session.prediction)
    instances, classes = session.instances()
    return Outcome(
        session=session,
        prediction=prediction,
        instances=instances,
        instance_classes=classes,
        message=message,
        cancelled=cancelled,
        result=result,
    )


def predict(
    session: Any | None,
    make_session: Callable[[], Any],
) -> Outcome:
    """Predict with the session's current head, opening the session first when needed.

    Parameters
    ----------
    session : RefineSession or None
        The open session, or None.
    make_session : callable
        Opens a session (loads the model if needed).

    Returns
    -------
    Outcome
        Prediction and instances.
    """
    # napari's layers import pandas when the first one is made (0.3 s): here, off the GUI
    # thread, so the first output layer does not freeze the viewer for it
    import pandas  # noqa: F401

    session = session if session is not None else make_session()
    session.predict()
    return _outcome(session, "Prediction ready")


def apply_to(
    model: Any, images: list[tuple[np.ndarray, bool]], config: RefineConfig
) -> list[Outcome]:
    """Open a session with (a copy of) a tuned model on each image and predict.

    Parameters
    ----------
    model : SegmentationModel
        The tuned model (each session copies it; its pre-trained state is this one).
    images : list of (numpy.ndarray, bool)
        Private copies of the images and whether each is RGB.
    config : RefineConfig
        Refinement settings.

    Returns
    -------
    list of Outcome
        One per image, in order.
    """
    outcomes = []
    for image, rgb in images:
        session = start_session(model, image, rgb, config)
        session.predict()
        outcomes.append(_outcome(session, "Prediction with the tuned model"))
    return outcomes


def refine(
    session: Any | None,
    make_session: Callable[[], Any],
    feedback: Feedback,
    config: RefineConfig,
    cancelled: Callable[[], bool],
) -> Generator[Any, None, Outcome]:
    """Refine the head on the user's feedback, yielding the session's step records.

    Parameters
    ----------
    session : RefineSession or None
        The open session, or None to open one first.
    make_session : callable
        Opens a session.
    feedback : Feedback
        Scribbles, points and boxes.
    config : RefineConfig
        Refinement settings for this run.
    cancelled : callable
        Returns True once the user pressed Cancel; checked after every step.

    Yields
    ------
    RefineStep
        The engine's step records (iteration, loss, violations, prediction).

    Returns
    -------
    Outcome
        The refined prediction and instances.
    """
    session = session if session is not None else make_session()
    scribbles = feedback.to_scribbles(session.spatial_shape)
    steps = session.refine(scribbles, config=config)
    message = "Refinement cancelled; Undo returns to the model before it"
    stopped = False
    result = None
    try:
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                result = stop.value
                message = result.message
                break
            yield step
            if cancelled():
                stopped = True
                break
    finally:
        steps.close()
    return _outcome(session, message, cancelled=stopped, result=result)


def add_class(session: Any, name: str, init_from: int) -> Outcome:
    """Add an output class to the session's model (undoable).

    Parameters
    ----------
    session : RefineSession
        The session.
    name : str
        Name of the new class.
    init_from : int
        The class whose final-layer weights it starts as a copy of.

    Returns
    -------
    Outcome
        The prediction after the change (unchanged until the class is scribbled and refined).
    """
    index = session.add_class(name, init_from)
    source = session.class_names[init_from]
    return _outcome(
        session,
        f"Added class {name!r} as a copy of {source!r}: paint it (label {index + 1}), then Refine",
    )


def history(session: Any, action: str) -> Outcome:
    """Undo, redo or reset the session's refinements.

    Parameters
    ----------
    session : RefineSession
        The session.
    action : str
        ``"undo"``, ``"redo"`` or ``"reset"``.

    Returns
    -------
    Outcome
        The prediction after the action.
    """
    undone = session.history_labels[session.history_position]
    getattr(session, action)()
    session.predict()
    if action == "undo":
        message = f"Undid: {undone}"
    elif action == "redo":
        message = f"Redid: {session.history_labels[session.history_position]}"
    else:
        message = "Model reset to its pre-trained weights"
    return _outcome(session, message)


def channel_warning(session: Any) -> str | None:
    """Return a warning when a greyscale image was repeated into a colour model's channels.

    Parameters
    ----------
    session : RefineSession
        A new session.

    Returns
    -------
    str or None
        The warning, or None when the image suits the model.
    """
    channels = session.image_info.n_channels
    wanted = session.model.in_channels
    if channels == 1 and wanted > 1:
        return (
            f"The image is greyscale but model {session.model.name} takes {wanted} "
            "channels: the grey values were repeated; a model trained for this kind of "
            "image will do better"
        )
    return None

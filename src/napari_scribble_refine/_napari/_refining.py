"""Predict, Refine, Cancel, Undo, Redo, Reset and Add class on the chosen image's session.

Inputs are checked and copied on the GUI thread; the engine's work (:mod:`._tasks`) runs in
a thread worker; refinement steps reach the image's prediction layer as live previews (the
latest step's, at most one per ``LIVE_UPDATE_MS``: superqt's ``qthrottled``) and the
progress bar; each task's outcome becomes the
image's session and output layers (:class:`~._image_sessions.ImageSessions`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from superqt.utils import qthrottled

from ..core.images import validate_image
from . import _large_images, _layers, _tasks
from ._layers import layer_key

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import ProgressBar
    from napari.layers import Image
    from superqt.utils._throttler import ThrottledCallable

    from ..core.config import RefineConfig
    from ..core.session import RefineSession
    from ._brush import Brush
    from ._image_sessions import ImageSessions
    from ._model_picker import ModelPicker
    from ._pickers import LayerPickers
    from ._workers import TaskRunner

LIVE_UPDATE_MS = 100


class Refinement:
    """The session actions of the chosen image and how their results are shown.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    pickers, images, models, brush
        The widget's layer pickers, per-image sessions, Model picker and brush.
    runner : TaskRunner
        Runs the tasks (``start`` starts them on it).
    start : callable
        ``start(name, work, on_result=..., on_yielded=..., wait=...)``: the widget's way to
        start a task (failures and status included).
    config : callable
        Returns the widget's :class:`RefineConfig` (raises ``ValueError``/``TypeError``
        with the config's own message when a setting is not valid).
    feedback : callable
        ``feedback(image, session)`` copies the scribbles, points and boxes for an image
        (:class:`~._tasks.Feedback`), cut to the session's region of a large image.
    progress : magicgui.widgets.ProgressBar
        The progress bar beside Cancel.
    on_status : callable
        Shows a line in the widget's status.

    Attributes
    ----------
    last_outcome : Outcome or None
        What the last finished task produced.
    live : superqt.utils.ThrottledCallable
        Shows a step's prediction: the first at once, then the latest of a burst at most
        once per ``LIVE_UPDATE_MS`` (``cancel()`` drops a waiting one, ``flush()`` shows it).
    live_updates : int
        How many live previews the last refinement showed.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        pickers: LayerPickers,
        images: ImageSessions,
        models: ModelPicker,
        brush: Brush,
        runner: TaskRunner,
        start: Callable[..., Any],
        config: Callable[[], RefineConfig],
        feedback: Callable[[Image, Any], _tasks.Feedback],
        progress: ProgressBar,
        on_status: Callable[[str], None],
    ) -> None:
        self._viewer = viewer
        self._pickers, self._images, self._models, self._brush = pickers, images, models, brush
        self._runner, self._start, self._config, self._feedback = runner, start, config, feedback
        self._progress, self._on_status = progress, on_status
        self.last_outcome: _tasks.Outcome | None = None
        self._task_image: Image | None = None  # the image the running task works on
        self._task_origin: tuple[int, ...] | None = None  # where its session's region lies
        self.live: ThrottledCallable = qthrottled(
            self._show_live_prediction, timeout=LIVE_UPDATE_MS, leading=True
        )
        self.live_updates = 0
        self.on_outcome: list[Callable[[Image], None]] = []  # called after one is shown

    def session_of(self, image: Image | None) -> RefineSession | None:
        """Return an image's session with the chosen model (None before its first task).

        Parameters
        ----------
        image : napari.layers.Image or None
            The image.

        Returns
        -------
        RefineSession or None
            The session.
        """
        return self._images.session(image, self._models.chosen())

    def _reject(self, error: Exception) -> None:
        self._on_status(str(error))
        show_error(str(error))

    def _inputs(self, follow_view: bool = False) -> tuple[Image, Any, Any] | None:
        """Check on the GUI thread what Predict and Refine start from.

        Returns the image layer, the open session for it (or None) and, without one, a
        function that opens a session from a private copy of the image; None when the inputs
        were rejected (with a notification). On a large image (:mod:`._large_images`) the
        session covers a region: with ``follow_view`` (Predict) the region on screen.
        """
        if self._runner.busy:
            show_info(f"Busy {self._runner.name}: wait or Cancel first")
            return None
        image_layer = self._pickers.image.value
        if image_layer is not None and _large_images.is_large(image_layer):
            return self._region_inputs(image_layer, follow_view)
        image_layer = self._pickers.require_image()
        if image_layer is None:
            return None
        session = self.session_of(image_layer)
        if session is not None:
            return image_layer, session, None
        image, rgb = _layers.image_array(image_layer)
        validate_image(image, rgb=rgb, name=f"Image '{image_layer.name}'")
        model, load = self._models.cached(self._models.spec())
        config = self._config()

        def make_session() -> RefineSession:
            nonlocal model
            if model is None:
                model = load()
            return _tasks.start_session(model, image, rgb, config)

        return image_layer, None, make_session

    def _region_inputs(self, image_layer: Image, follow_view: bool) -> tuple[Image, Any, Any]:
        """Return what a task on a large image starts from: the session of a region."""
        session = self.session_of(image_layer)
        region = _large_images.visible_region(self._viewer, image_layer)
        if session is not None and not session.closed:
            if region == session.region or not follow_view:
                return image_layer, session, None
        elif not follow_view:
            raise ValueError(
                f"Image '{image_layer.name}' is large: press Predict first, to work on the "
                "region in view"
            )
        spec = self._models.spec()
        slide = self._images.slide(image_layer, spec)
        model, load = self._models.cached(spec)
        data, rgb = _layers.full_resolution(image_layer), bool(image_layer.rgb)
        config = self._config()

        def make_session() -> RefineSession:
            nonlocal model, slide
            if slide is None:
                if model is None:
                    model = load()
                slide = _large_images.start_slide(model, data, rgb, config)
            return slide.region_session(region)

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
            inputs = self._inputs(follow_view=True)
        except (ValueError, TypeError) as error:
            self._reject(error)
            return None
        if inputs is None:
            return None
        image, session, make_session = inputs
        return self._start(
            "predicting",
            partial(_tasks.predict, session, make_session),
            on_result=partial(self.show_outcome, image),
            wait=wait,
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
            feedback = self._feedback(image, session)
            config = self._config()
        except (ValueError, TypeError) as error:
            self._reject(error)
            return None
        has_feedback = len(feedback.points) or len(feedback.boxes)
        if not has_feedback and (feedback.scribbles is None or not feedback.scribbles.any()):
            show_error("Nothing to refine on: paint scribbles (New scribbles), or add points/boxes")
            return None
        self.live.cancel()
        self.live_updates = 0
        self._progress.max = config.max_iterations
        self._progress.value = 0
        work = _tasks.refine(session, make_session, feedback, config, self._runner.cancelled)
        self._task_image = image  # live previews go to this image's layer, at its region
        self._task_origin = None if session is None else session.origin
        return self._start(
            "refining",
            work,
            on_result=partial(self.show_outcome, image),
            on_yielded=self._on_step,
            wait=wait,
        )

    def cancel(self) -> None:
        """Stop the running refinement after its current step (the result stays undoable)."""
        if self._runner.busy:
            self._runner.cancel()
            self._on_status("Cancelling after the current step…")

    def history(self, action: str, wait: bool = False) -> Any:
        """Undo, redo or reset the chosen image's refinements (background task).

        Parameters
        ----------
        action : {"undo", "redo", "reset"}
            What to do.
        wait : bool
            Block (processing Qt events) until done.

        Returns
        -------
        worker or None
            The thread worker, or None without a session.
        """
        image = self._pickers.image.value
        session = self.session_of(image)
        if session is None:
            show_info("Nothing to undo yet: Predict and Refine first")
            return None
        return self._start(
            action,
            partial(_tasks.history, session, action),
            on_result=partial(self.show_outcome, image),
            wait=wait,
        )

    def add_class(
        self, name: str, init_from: int, on_shown: Callable[[], None], wait: bool = False
    ) -> Any:
        """Add a class to the chosen image's model (undoable; background task).

        Parameters
        ----------
        name : str
            Its name.
        init_from : int
            The class it starts as a copy of.
        on_shown : callable
            Called once the new class is shown (the widget moves the brush to it).
        wait : bool
            Block (processing Qt events) until done.

        Returns
        -------
        worker or None
            The thread worker, or None (with a notification) without a session or a name.
        """
        image = self._pickers.image.value
        session = self.session_of(image)
        if session is None:
            show_info("Predict first: the class is added to the model of the open session")
            return None
        name = name.strip()
        if not name:
            show_error("Type a name for the new class first")
            return None

        def shown(outcome: _tasks.Outcome) -> None:
            self.show_outcome(image, outcome)
            on_shown()
            self._on_status(outcome.message)

        work = partial(_tasks.add_class, session, name, init_from)
        return self._start("adding a class", work, on_result=shown, wait=wait)

    def _on_step(self, step: Any) -> None:
        self._on_status(
            f"Iteration {step.iteration}: loss {step.loss:.3g}, "
            f"{step.violations} scribbled pixels still wrong"
        )
        if step.prediction is not None:
            self.live(step.prediction)
        self._progress.value = min(step.iteration, self._progress.max)

    def _show_live_prediction(self, prediction: np.ndarray) -> None:
        if self._runner.closed:  # before touching a control: they may be deleted already
            return
        image = self._task_image
        if image is not None and image in self._viewer.layers:
            names = self._brush.class_names
            self._images.show_prediction(image, prediction, names, self._task_origin)
            self.live_updates += 1

    def show_outcome(self, image: Image, outcome: _tasks.Outcome) -> None:
        """Make a task's session the image's and show its result.

        Parameters
        ----------
        image : napari.layers.Image
            The image the task worked on.
        outcome : Outcome
            What it left.
        """
        if outcome.session is not self.session_of(image):
            warning = _tasks.channel_warning(outcome.session)
            if warning:
                show_warning(warning)
        self.last_outcome = outcome
        self.live.cancel()
        if layer_key(image) == layer_key(self._pickers.image.value):
            prediction = self._images.output(image, "prediction")
            self._brush.set_classes(list(outcome.session.class_names), prediction)
        names = self._brush.class_names
        self._images.show_outcome(image, outcome, self._models.chosen(), names)
        self._pickers.reset()
        for callback in self.on_outcome:
            callback(image)
        self._on_status(outcome.message)

"""RefineSession: one image, one model, scribble-aware refinement with undo, redo and reset.

The trunk runs once when the session starts (tile by tile for large images, slice by slice
for stacks) and its output is cached; each refinement then tunes only the head on the
scribbled pixels (Sambaturu et al., MICCAI 2021, Algorithm 1)::

    session = RefineSession(model, image)
    labels = session.predict()
    result = session.run(scribbles)        # or: for step in session.refine(scribbles): ...
    session.undo(); session.redo(); session.reset()
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import RefineConfig
from .devices import resolve_device
from .edge_crf import crf_applies
from .final_prediction import FinalPrediction
from .history import DEFAULT_BUDGET_MB, HeadHistory, grown_anchor
from .images import image_for_model, validate_image
from .in_place import claim_in_place, release_in_place
from .memory import check_session_memory, refusing_out_of_memory
from .models.base import Features, SegmentationModel
from .objective import build_batches, pixel_weights, scribble_targets
from .refine_loop import no_op_refinement, refinement_loop
from .scribbles import grow_scribbles, validate_scribbles
from .session_saving import SessionSaving
from .steps import RefineResult, RefineStep
from .tiling import compute_features

if TYPE_CHECKING:
    from .slide import SlideSession

__all__ = ["RefineSession"]


class RefineSession(SessionSaving):
    """Interactive refinement of one model's predictions on one image.

    Parameters
    ----------
    model : SegmentationModel
        The adapter. By default the session works on a deep copy, so the caller's model
        never changes; pass ``copy_model=False`` to tune it in place.
    image : numpy.ndarray
        (Y, X), (Y, X, 3|4) colour or (Z, Y, X) stack; copied, never modified.
    config : RefineConfig, optional
        Refinement settings (default: ``RefineConfig()``).
    rgb : bool, optional
        Whether the last axis is colour (napari's ``rgb`` flag); None guesses from the shape.
    tile_size : int
        Images with a side longer than this run through the trunk in tiles.
    tile_halo : int, optional
        Context per tile; default: the adapter's ``trunk_halo`` (or 64).
    copy_model : bool
        Work on a deep copy of ``model`` (default) rather than the object given. A model
        tuned in place belongs to one open session at a time: a second session with
        ``copy_model=False`` on it is refused until the first is closed (:meth:`close`)
        or deleted, since each would change the other's results.
    history_budget_mb : float
        Memory for undo states (head snapshots and their scribbles: 1 byte per pixel for the
        current state's, zlib-compressed for the others);
        beyond it the oldest are dropped with a warning (reset still works).
    memory_limit_mb : float, optional
        Memory the session may use; default: what the machine (or its container) has
        available now. Images larger than 1024² are checked against it before the trunk
        runs (``math.inf`` turns the check off).
    progress : callable, optional
        Called as ``progress(done, total)`` while the trunk runs over the image's tiles
        (or batches of slices) when the session starts.
    features : Features, optional
        The trunk's features of ``image``, [N, F, Y, X], computed elsewhere (a
        :class:`~.slide.SlideSession` passes its tiles'): the trunk does not run and the
        memory check is skipped.

    Attributes
    ----------
    model : SegmentationModel
        The adapter this session tunes.
    config : RefineConfig
        Settings used by :meth:`refine` (may be replaced between refinements).
    device : torch.device
        Where the network runs.
    device_reason : str
        Why that device was chosen.
    image_info : ImageInfo
        Layout of the image.
    origin : tuple of int
        Where the image's first pixel lies in a larger image it was cut from (a
        :class:`~.slide.SlideSession`'s region sets it; zeros otherwise), so a GUI can place
        the session's output over the larger image.
    slide : SlideSession or None
        The slide session whose region this session covers (None for a whole image).

    Raises
    ------
    ValueError
        If the image is unusable (NaN/inf, constant, wrong number of dimensions), is colour
        while the model takes greyscale, or the configured device is unknown or unavailable;
        if ``copy_model=False`` and another open session tunes the same model in place.
    TooLargeError
        (a ``ValueError``) If the session would need more memory than ``memory_limit_mb``:
        the message gives the estimate and the largest image that fits.
    """

    def __init__(
        self,
        model: SegmentationModel,
        image: np.ndarray,
        config: RefineConfig | None = None,
        *,
        rgb: bool | None = None,
        tile_size: int = 1024,
        tile_halo: int | None = None,
        copy_model: bool = True,
        history_budget_mb: float = DEFAULT_BUDGET_MB,
        memory_limit_mb: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        features: Features | None = None,
    ) -> None:
        self.config = config if config is not None else RefineConfig()
        image, self.image_info = image_for_model(
            image,
            validate_image(image, rgb=rgb),
            in_channels=model.in_channels,
            model_name=model.name,
        )
        self.device, self.device_reason = resolve_device(self.config.device)
        if tile_size < 16:
            raise ValueError(f"tile_size must be at least 16, got {tile_size}")
        self.tile_size = int(tile_size)
        self.tile_halo = int(tile_halo if tile_halo is not None else model.trunk_halo)

        self.origin: tuple[int, ...] = (0,) * len(self.image_info.spatial_shape)
        self.slide: SlideSession | None = None
        self._closed = False
        if not copy_model:
            claim_in_place(model, None)  # refuse before changing a model another session tunes
        self.model = copy.deepcopy(model) if copy_model else model
        self.model.set_n_layers(self.config.n_layers)  # before the trunk runs
        self.model.to(self.device)
        self.model.network.eval()
        for p in self.model.network.parameters():
            p.requires_grad_(False)

        if features is None:
            check_session_memory(
                self.model,
                np.asarray(image),
                self.image_info,
                history_budget_mb=history_budget_mb,
                memory_limit_mb=memory_limit_mb,
                crf=crf_applies(self.config, self.image_info.spatial_shape),
            )
        self._image = np.array(image, copy=True)
        self._image.setflags(write=False)
        if features is None:
            with refusing_out_of_memory(np.shape(image)):
                features = compute_features(
                    self.model,
                    self._image,
                    is_3d=self.image_info.is_3d,
                    tile_size=self.tile_size,
                    halo=self.tile_halo,
                    progress=progress,
                )
        self._history = HeadHistory(self.model, history_budget_mb)
        self._final_prediction = FinalPrediction(
            self.model,
            features,
            self._image,
            self.image_info,
            self._history,
            tile_size=self.tile_size,
            tile_halo=self.tile_halo,
        )
        self._run_token = 0
        if not copy_model:
            claim_in_place(self.model, self)

    def close(self) -> None:
        """Free the cached features and give a model tuned in place back to other sessions.

        The session cannot refine or predict afterwards; closing twice does nothing. A
        ``with RefineSession(...) as session:`` block closes it at the end.
        """
        if self._closed:
            return
        self._closed = True
        self._run_token += 1  # a suspended refinement takes no further step
        self._final_prediction.release()
        release_in_place(self.model, self)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> RefineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("session: this RefineSession is closed; start a new one")

    # ------------------------------------------------------------------ basics
    @property
    def features(self) -> Features:
        """The trunk's cached features of the image, [N, F, Y, X] (empty once closed)."""
        return self._final_prediction.features

    @property
    def image(self) -> np.ndarray:
        """The session's read-only copy of the image."""
        return self._image

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(Y, X) or (Z, Y, X): the shape of scribbles and class maps."""
        return self.image_info.spatial_shape

    @property
    def class_names(self) -> list[str]:
        """Current output classes (index 0 = background)."""
        return list(self.model.class_names)

    @property
    def n_classes(self) -> int:
        """Number of output classes, background included."""
        return self.model.n_classes

    @property
    def can_undo(self) -> bool:
        """True when :meth:`undo` would change something."""
        return self._history.can_undo

    @property
    def can_redo(self) -> bool:
        """True when :meth:`redo` would change something."""
        return self._history.can_redo

    @property
    def history_labels(self) -> list[str]:
        """What created each history entry, oldest first (entry 0 is the pre-trained head)."""
        return self._history.labels

    @property
    def history_position(self) -> int:
        """Index of the current history entry."""
        return self._history.position

    @property
    def region(self) -> tuple[slice, ...]:
        """The box of the larger image this session's image covers (from :attr:`origin`)."""
        return tuple(slice(o, o + n) for o, n in zip(self.origin, self.spatial_shape, strict=True))

    @property
    def state_version(self) -> int:
        """Counts head states: it changes whenever what :meth:`predict` shows may change."""
        return self._final_prediction.version

    def _history_step(self, step: Callable[[], bool]) -> bool:
        """Take an undo, redo or reset step of the history; True when it changed the head."""
        self._check_open()
        done = step()
        if done:
            self._changed()
        return done

    def _changed(self) -> None:
        for p in self.model.network.parameters():  # restored parameters arrive trainable
            p.requires_grad_(False)
        self._final_prediction.head_changed()
        self._run_token += 1  # a refinement still suspended must not step any more

    # ------------------------------------------------------------------ prediction
    def predict(self) -> np.ndarray:
        """Compute (or reuse) the class map of the whole image with the current head.

        Computed once per head state (the trunk's features are cached).

        Returns
        -------
        numpy.ndarray
            int32 of :attr:`spatial_shape`: 0 = background, c = class c. A new array.
        """
        return self.prediction.copy()

    @property
    def prediction(self) -> np.ndarray:
        """The current class map (read-only; :meth:`predict` returns a writable copy)."""
        self._check_open()
        return self._final_prediction.class_map()

    def logits(self, index: int = 0) -> torch.Tensor:
        """Logits of one image (or slice ``index`` of a stack) with the current head.

        Parameters
        ----------
        index : int
            Slice of a stack (0 for 2D images).

        Returns
        -------
        torch.Tensor
            [1, C, Y, X] on the CPU.
        """
        self._check_open()
        return self._final_prediction.slice_logits(index)

    def instances(self) -> tuple[np.ndarray, dict[int, int]]:
        """Instance labels of the current prediction and the class of each instance.

        The adapter's own post-processing is used when it has one (e.g. HoVer-Net's HV
        watershed), otherwise
        :func:`~napari_scribble_refine.core.postprocess.class_map_to_instances`.

        Returns
        -------
        labels : numpy.ndarray
            int32 of :attr:`spatial_shape`, 0 = background, 1..N (unique over a stack).
        classes : dict of int to int
            Instance label -> its class: the adapter's ``instance_types`` rule when it has
            one, else the majority foreground class in the class map.
        """
        return self._final_prediction.instances(self.prediction)

    # ------------------------------------------------------------------ history
    def undo(self) -> bool:
        """Go back to the head before the last change (refinement, class, reset).

        Returns
        -------
        bool
            False when there was nothing to undo.
        """
        return self._history_step(self._history.undo)

    def redo(self) -> bool:
        """Re-apply the last undone change.

        Returns
        -------
        bool
            False when there was nothing to redo.
        """
        return self._history_step(self._history.redo)

    def reset(self) -> bool:
        """Restore the pre-trained head exactly (undoable).

        Returns
        -------
        bool
            False when the head already is the pre-trained one.
        """
        return self._history_step(self._history.reset)

    def add_class(self, name: str, init_from: int = 0) -> int:
        """Add an output class, initialised as a copy of an existing one (undoable).

        Parameters
        ----------
        name : str
            Name of the new class.
        init_from : int
            Class whose final-layer weights the new class starts from.

        Returns
        -------
        int
            Index of the new class (scribble it with value ``index + 1``).
        """
        self._check_open()
        self._history.freeze()
        old_anchor = self._history.anchor
        self.model.add_class(name, init_from)
        anchor = grown_anchor(old_anchor, self.model.head_module)
        self._history.push(f"add class {name!r}", anchor=anchor)
        self._changed()
        return self.n_classes - 1

    def adopt_head(
        self,
        state: object,
        label: str,
        *,
        scribbles: np.ndarray | None = None,
        settings: RefineConfig | None = None,
    ) -> None:
        """Take over a head tuned elsewhere (another region of a slide) as a new state.

        The pre-trained head stays the session's first state (the proximity term and the
        trust region keep measuring from it); the adopted head becomes an undoable state
        with the scribbles given, so its prediction applies the trust region, the CRF and
        the pins of ``settings`` as a refinement here would.

        Parameters
        ----------
        state : HeadState
            A snapshot of this model's head (:meth:`SegmentationModel.head_state`).
        label : str
            What the new history entry is called.
        scribbles : numpy.ndarray, optional
            Scribbles of :attr:`spatial_shape` the head was tuned on here (default: none).
        settings : RefineConfig, optional
            The settings it was tuned with (default: :attr:`config`).
        """
        self._check_open()
        cfg = settings if settings is not None else self.config
        marks = np.zeros(self.spatial_shape, np.uint8) if scribbles is None else scribbles
        self._history.freeze()
        old_anchor = self._history.anchor
        self.model.load_head_state(state)  # type: ignore[arg-type]
        anchor = grown_anchor(old_anchor, self.model.head_module)
        constraints = self._history.constraints_for(marks, cfg.pin_scribbles, cfg, self.n_classes)
        self._history.push(label, anchor=anchor, constraints=constraints)
        self._changed()

    # ------------------------------------------------------------------ refinement
    def prepare_scribbles(
        self, scribbles: np.ndarray, config: RefineConfig | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Validate scribbles and grow them if the config says so.

        Parameters
        ----------
        scribbles : numpy.ndarray
            Labels of :attr:`spatial_shape` (0 none, 1 background, c + 1 class c).
        config : RefineConfig, optional
            Settings to use instead of :attr:`config`.

        Returns
        -------
        used : numpy.ndarray
            The scribbles the loss runs over (grown when region growing is on, less the
            grown pixels that fail the feature check of ``grow_similar``).
        grown : numpy.ndarray or None
            The grown scribbles, or None when growing is off.
        """
        cfg = config if config is not None else self.config
        clean = validate_scribbles(scribbles, self.spatial_shape, self.n_classes)
        if not cfg.region_growing or not clean.any():
            return clean, None
        grown = grow_scribbles(
            self._image,
            clean,
            threshold=cfg.grow_threshold,
            max_distance=cfg.grow_max_distance,
            intensity_range=self._final_prediction.intensity_range(),
            max_grown_ratio=cfg.grow_cap or None,
        )
        if cfg.grow_similar:
            grown = self._final_prediction.similar_growth(clean, grown)
        return grown, grown

    def refine(
        self, scribbles: np.ndarray, *, config: RefineConfig | None = None, previews: bool = True
    ) -> Generator[RefineStep, None, RefineResult]:
        """Tune the head until the scribbles are predicted (Algorithm 1), step by step.

        The scribbles are validated (and grown) now; the loop runs as the generator is
        iterated. Closing the generator between steps (a GUI's Cancel) keeps the weights
        reached so far as one history entry, so :meth:`undo` returns to the state before.
        Any other session operation (undo, reset, another refinement) ends a suspended
        refinement: it takes no further step.

        Parameters
        ----------
        scribbles : numpy.ndarray
            Labels of :attr:`spatial_shape`: 0 = no constraint, 1 = background,
            c + 1 = class c. Never modified.
        config : RefineConfig, optional
            Settings for this refinement only (default: :attr:`config`); its ``device`` and
            ``n_layers`` are ignored (both were fixed when the session started).
        previews : bool
            Put the whole prediction in every ``preview_every``-th step (False: only in the
            final one, which saves a prediction per preview).

        Yields
        ------
        RefineStep
            One record after each optimiser step and a final one (``finished=True``).

        Returns
        -------
        RefineResult
            The outcome (``StopIteration.value``; :meth:`run` returns it directly).

        Raises
        ------
        ValueError
            If the scribbles do not match the image or use classes the model lacks.

        Warns
        -----
        UserWarning
            When nothing is scribbled (the refinement is then a no-op).
        """
        self._check_open()
        cfg = config if config is not None else self.config
        used, grown = self.prepare_scribbles(scribbles, cfg)
        self._run_token += 1
        token = self._run_token
        n_scribbled = int(np.count_nonzero(used))
        if n_scribbled == 0:
            warnings.warn(
                "No scribbles: nothing to refine (paint some pixels first).",
                UserWarning,
                stacklevel=2,
            )
            return no_op_refinement(self.predict)
        targets = scribble_targets(used if self.image_info.is_3d else used[None])
        weights = pixel_weights(used, scribbles, cfg)
        weights = weights if self.image_info.is_3d else weights[None]
        batches = build_batches(
            self.model,
            self.features,
            targets,
            weights,
            keep_weight=cfg.keep_weight,
            seed=cfg.seed,
            anchor=self._history.anchor,
        )
        constraints = self._history.constraints_for(used, cfg.pin_scribbles, cfg, self.n_classes)
        final = self._final_prediction
        return refinement_loop(
            self.model,
            self._history,
            batches,
            n_scribbled,
            cfg,
            constraints,
            grown=grown,
            device=self.device,
            preview_every=cfg.preview_every if previews else 0,
            superseded=lambda: token != self._run_token,
            head_changed=final.head_changed,
            preview=final.preview,
            predict=self.predict,
        )

    def run(self, scribbles: np.ndarray, *, config: RefineConfig | None = None) -> RefineResult:
        """Run :meth:`refine` to the end without a GUI.

        Parameters
        ----------
        scribbles : numpy.ndarray
            As for :meth:`refine`.
        config : RefineConfig, optional
            As for :meth:`refine`.

        Returns
        -------
        RefineResult
            The outcome.
        """
        generator = self.refine(scribbles, config=config, previews=False)
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                return stop.value

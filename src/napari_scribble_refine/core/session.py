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
import dataclasses
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from pathlib import Path

import numpy as np
import torch

from .config import RefineConfig
from .devices import resolve_device
from .edge_crf import mean_field
from .history import DEFAULT_BUDGET_MB, Constraints, HeadHistory
from .images import ImageInfo, validate_image
from .memory import (
    SESSION_BYTES_PER_PIXEL,
    TooLargeError,
    available_memory,
    check_fits,
    release_free_memory,
    session_need,
)
from .models.base import SegmentationModel
from .models.saving import check_path, check_target
from .optimiser import Adam
from .postprocess import instance_types, type_by_instance
from .prediction import class_map_of, head_pieces
from .refine_loop import (
    Anchored,
    Batch,
    MomentumSGD,
    build_batches,
    loss_and_gradients,
    pixel_weights,
    proximity,
    scribble_targets,
)
from .scribbles import grow_scribbles, validate_scribbles
from .steps import RefineResult, RefineStep
from .trust_region import Describe, accepted_changes
from .type_classifier import classify_types
from .type_spreading import spread_types

__all__ = ["RefineSession"]


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run torch's CPU operations on ``n`` threads inside the block (None: as they are)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


PROBE_ABOVE_PIXELS = 1024 * 1024
"""Larger images (all slices together) are checked against the memory limit first."""

_IN_PLACE: weakref.WeakKeyDictionary[torch.nn.Module, weakref.ref[RefineSession]] = (
    weakref.WeakKeyDictionary()
)
"""Networks tuned in place (``copy_model=False``) and the open session tuning each."""
_IN_PLACE_LOCK = threading.Lock()


def _claim_in_place(model: SegmentationModel, session: RefineSession | None) -> None:
    """Refuse a model another open session tunes in place; record ``session`` as its tuner.

    With ``session=None`` only checks.
    """
    with _IN_PLACE_LOCK:
        ref = _IN_PLACE.get(model.network)
        owner = ref() if ref is not None else None
        if owner is not None and owner is not session and not owner._closed:
            raise ValueError(
                f"model: {model.name!r} is already tuned in place (copy_model=False) by an "
                f"open RefineSession on an image of shape {owner.image.shape}; two sessions "
                "tuning one model in place would change each other's results. Pass "
                "copy_model=True (the default) to give this session its own copy, or close "
                "the other session first (session.close())."
            )
        if session is not None:
            _IN_PLACE[model.network] = weakref.ref(session)


def _release_in_place(model: SegmentationModel, session: RefineSession) -> None:
    with _IN_PLACE_LOCK:
        ref = _IN_PLACE.get(model.network)
        if ref is not None and ref() is session:
            del _IN_PLACE[model.network]


def _out_of_memory(error: RuntimeError) -> bool:
    """Whether torch's error is an allocation failure."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or any(
        s in text for s in ("can't allocate memory", "out of memory", "not enough memory")
    )


def _package_version() -> str:
    try:
        return _distribution_version("napari-scribble-refine")
    except PackageNotFoundError:  # running from a source tree
        return "(not installed)"


HEAD_CHUNK_PIXELS = 1 << 20
"""Pixels per piece when the head runs over the whole image (bounds memory)."""

CRF_MAX_PIXELS = 4096 * 4096
"""Larger images (slices) skip the edge-aware CRF: it holds several maps of the whole image."""

FINAL_CACHE_PIXELS = 4096 * 4096
"""Slices up to this size keep their final log-probabilities until the head changes."""


class RefineSession:
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
    ) -> None:
        self.config = config if config is not None else RefineConfig()
        self.image_info: ImageInfo = validate_image(image, rgb=rgb)
        if self.image_info.is_rgb and model.in_channels == 1:
            raise ValueError(
                f"image: a colour image of shape {np.shape(image)} was given, but model "
                f"{model.name!r} takes greyscale images; choose a colour model (such as "
                "'hovernet-he') or convert the image to greyscale first "
                "(skimage.color.rgb2gray)"
            )
        if self.image_info.n_channels == 4:  # RGBA: the alpha channel is not part of the stain
            warnings.warn(
                "image: RGBA; the alpha channel is dropped and R, G, B are segmented",
                UserWarning,
                stacklevel=2,
            )
            image = np.asarray(image)[..., :3]
            self.image_info = dataclasses.replace(self.image_info, n_channels=3)
        self.device, self.device_reason = resolve_device(self.config.device)
        if tile_size < 16:
            raise ValueError(f"tile_size must be at least 16, got {tile_size}")
        self.tile_size = int(tile_size)
        default_halo = getattr(model, "trunk_halo", 64)
        self.tile_halo = int(tile_halo if tile_halo is not None else default_halo)

        self._closed = False
        if not copy_model:
            _claim_in_place(model, None)  # refuse before changing a model another session tunes
        self.model = copy.deepcopy(model) if copy_model else model
        set_head_depth = getattr(self.model, "set_n_layers", None)
        if set_head_depth is not None:  # before the trunk runs: depth decides what is cached
            set_head_depth(self.config.n_layers)
        self.model.to(self.device)
        self.model.network.eval()
        for p in self.model.network.parameters():
            p.requires_grad_(False)

        from .tiling import compute_features

        self._check_memory(np.asarray(image), history_budget_mb, memory_limit_mb)
        self._image = np.array(image, copy=True)
        self._image.setflags(write=False)
        try:
            self.features = compute_features(
                self.model,
                self._image,
                is_3d=self.image_info.is_3d,
                tile_size=self.tile_size,
                halo=self.tile_halo,
                progress=progress,
            )
        except (MemoryError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and not _out_of_memory(err):
                raise
            raise TooLargeError(
                f"image: the trunk ran out of memory on shape {np.shape(image)} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); crop the image "
                "to the region to correct, or free memory"
            ) from None
        self._history = HeadHistory(self.model, history_budget_mb)
        self._version = 0
        self._prediction: tuple[int, np.ndarray] | None = None
        self._run_token = 0
        self._grow_range: tuple[float, float] | None = None
        self._before: tuple[object, list[np.ndarray], list[dict[int, np.ndarray]]] | None = None
        self._accept: tuple[int, list[np.ndarray | None]] | None = None
        self._feature_stats: list[tuple[np.ndarray, np.ndarray]] = []
        self._final: tuple[int, dict[int, torch.Tensor]] = (-1, {})
        if not copy_model:
            _claim_in_place(self.model, self)

    def _check_memory(
        self, image: np.ndarray, history_budget_mb: float, memory_limit_mb: float | None
    ) -> None:
        """Refuse an image whose session would not fit in memory, before the trunk runs."""
        info = self.image_info
        n_slices = info.spatial_shape[0] if info.is_3d else 1
        height, width = info.spatial_shape[-2:]
        if height * width * n_slices <= PROBE_ABOVE_PIXELS:
            return
        if memory_limit_mb is None:
            limit = available_memory()
        elif memory_limit_mb == math.inf:
            limit = None
        else:
            limit = int(memory_limit_mb * 2**20)
        if limit is None:
            return
        from .tiling import compute_features

        side = min(height, width, 128)
        plane = image[0] if info.is_3d else image
        probe = np.ascontiguousarray(plane[:side, :side])
        feats = compute_features(self.model, probe, is_3d=False, tile_size=side)
        per_pixel = sum(v.numel() * v.element_size() for v in feats.values()) / (side * side)
        image_bytes = info.n_channels * (image.dtype.itemsize + 4)  # copy + normalised copy
        n_pixels = height * width * n_slices
        need = session_need(
            n_pixels=n_pixels,
            slice_pixels=height * width,
            feature_bytes_per_pixel=per_pixel,
            image_bytes_per_pixel=image_bytes,
            history_bytes=int(history_budget_mb * 2**20),
            crf=self._crf_applies(self.config),
        )
        check_fits(
            need,
            shape=tuple(image.shape),
            spatial_shape=info.spatial_shape,
            limit=limit,
            per_pixel=per_pixel + image_bytes + SESSION_BYTES_PER_PIXEL,
        )

    def close(self) -> None:
        """Free the cached features and give a model tuned in place back to other sessions.

        The session cannot refine or predict afterwards; closing twice does nothing. A
        ``with RefineSession(...) as session:`` block closes it at the end.
        """
        if self._closed:
            return
        self._closed = True
        self._run_token += 1  # a suspended refinement takes no further step
        self.features = {}
        self._final = (-1, {})
        _release_in_place(self.model, self)

    def __enter__(self) -> RefineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("session: this RefineSession is closed; start a new one")

    # ------------------------------------------------------------------ basics
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

    def _changed(self) -> None:
        for p in self.model.network.parameters():  # restored parameters arrive trainable
            p.requires_grad_(False)
        self._version += 1
        self._run_token += 1  # a refinement still suspended must not step any more

    # ------------------------------------------------------------------ prediction
    def _head_pieces(self, index: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        return head_pieces(
            self.model,
            self.features,
            index,
            chunk_pixels=HEAD_CHUNK_PIXELS,
            tile_size=self.tile_size,
            tile_halo=self.tile_halo,
        )

    def _raw_logits(self, index: int) -> torch.Tensor:
        """Logits [1, C, Y, X] of the current head on one image (slice), on the CPU."""
        height, width = self.spatial_shape[-2:]
        out = torch.empty((1, self.n_classes, height, width), dtype=torch.float32)
        for y0, x0, piece in self._head_pieces(index):
            h, w = piece.shape[-2:]
            out[0, :, y0 : y0 + h, x0 : x0 + w] = piece.float().cpu()
        return out

    def _slice_logits(self, index: int) -> torch.Tensor:
        """Return the log-probabilities [1, C, Y, X] of one image (slice) as refined.

        The tuned head's where the trust region keeps its change and the pre-trained
        head's elsewhere, then the edge-aware CRF (both as the refinement's settings say).
        """
        version, cache = self._final
        if version == self._version and index in cache:
            return cache[index]
        logits = self._raw_logits(index)
        accept = self._accept_masks()[index]
        if accept is not None:
            with torch.no_grad(), Anchored(self.model, self._history.anchor):
                before = self._raw_logits(index)
            logits = torch.where(torch.from_numpy(accept)[None, None], logits, before)
        cons = self._history.constraints
        settings = cons.settings if cons is not None else None
        if self._crf_applies(settings):
            scribbles = cons.scribbles if self.image_info.is_3d else cons.scribbles[None]
            q = mean_field(
                logits[0].log_softmax(0),
                self._guide(index),
                scribbles[index],
                weight=settings.crf_weight,
                radius=settings.crf_radius,
                eps=settings.crf_eps,
                iterations=settings.crf_iterations,
            )
            logits = q.clamp_min(1e-12).log()[None]
        if version != self._version:
            cache = {}
        if logits[0, 0].numel() <= FINAL_CACHE_PIXELS:
            cache[index] = logits
        self._final = (self._version, cache)
        return logits

    def _crf_applies(self, settings: RefineConfig | None) -> bool:
        """Whether the edge-aware CRF runs: on, and the image no larger than the CRF's limit."""
        height, width = self.spatial_shape[-2:]
        return settings is not None and settings.crf_weight > 0 and height * width <= CRF_MAX_PIXELS

    def _scaled_plane(self, index: int) -> np.ndarray:
        """One slice (channels kept) scaled to about [0, 1], float64."""
        if self._grow_range is None:
            from .region_growing import robust_intensity_range

            channel_axis = -1 if self.image_info.is_rgb else None
            self._grow_range = robust_intensity_range(self._image, channel_axis=channel_axis)
        low, high = self._grow_range
        plane = self._image[index] if self.image_info.is_3d else self._image
        plane = plane.astype(np.float64)  # float16/32 images near their limits overflow
        return (plane - low) / (high - low)

    def _guide(self, index: int) -> torch.Tensor:
        """Grey image [Y, X] of one slice scaled to about [0, 1] (the CRF's guide)."""
        plane = self._scaled_plane(index)
        grey = plane.mean(-1) if self.image_info.is_rgb else plane
        return torch.from_numpy(grey.astype(np.float32))

    def _maps(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Class map (int32) and the probability of each pixel's class (float32), one slice."""
        height, width = self.spatial_shape[-2:]
        classes = np.empty((height, width), dtype=np.int32)
        prob = np.empty((height, width), dtype=np.float32)
        for y0, x0, piece in self._head_pieces(index):
            h, w = piece.shape[-2:]
            piece = piece.float().cpu()
            cls = class_map_of(self.model, piece)
            classes[y0 : y0 + h, x0 : x0 + w] = cls
            chosen = piece.softmax(0).gather(0, torch.from_numpy(cls).long()[None])[0]
            prob[y0 : y0 + h, x0 : x0 + w] = chosen.numpy()
        return classes, prob

    def _n_slices(self) -> int:
        return self.spatial_shape[0] if self.image_info.is_3d else 1

    def _pixel_features(self, index: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Gather the head's features (F, k) of slice ``index`` at pixels (ys, xs), unscaled."""
        keys = self.model.pixel_feature_keys(self.features)
        yi, xi = torch.as_tensor(ys), torch.as_tensor(xs)
        parts = [self.features[k][index][:, yi, xi].float().cpu() for k in keys]
        return torch.cat(parts).numpy()

    def _describe(self, index: int) -> Describe:
        """Standardised head features of one slice at a mask's pixels (trust region)."""
        while len(self._feature_stats) <= index:
            i = len(self._feature_stats)
            height, width = self.spatial_shape[-2:]
            step = max(1, int(np.sqrt(height * width / 65536)))  # a grid sample is enough
            ys, xs = np.mgrid[0:height:step, 0:width:step]
            sample = self._pixel_features(i, ys.ravel(), xs.ravel())
            std = sample.std(1)
            std[std == 0] = 1.0
            self._feature_stats.append((sample.mean(1), std))
        mean, std = self._feature_stats[index]

        def describe(mask: np.ndarray) -> np.ndarray:
            ys, xs = np.nonzero(mask)
            return (self._pixel_features(index, ys, xs) - mean[:, None]) / std[:, None]

        return describe

    def _pretrained_maps(self) -> tuple[list[np.ndarray], list[dict[int, np.ndarray]]]:
        """Class maps of the anchor (pre-trained) head and each class's mean feature."""
        anchor = self._history.anchor
        if self._before is None or self._before[0] is not anchor:
            maps, means = [], []
            with Anchored(self.model, anchor):
                for index in range(self._n_slices()):
                    classes = self._maps(index)[0]
                    describe = self._describe(index)
                    per_class = {}
                    for c in np.unique(classes):
                        mask = classes == c
                        step = max(1, int(mask.sum()) // 20000)  # a sample is enough
                        ys, xs = np.nonzero(mask)
                        sample = np.zeros_like(mask)
                        sample[ys[::step], xs[::step]] = True
                        per_class[int(c)] = describe(sample).mean(1)
                    maps.append(classes)
                    means.append(per_class)
            self._before = (anchor, maps, means)
        return self._before[1], self._before[2]

    def _accept_masks(self) -> list[np.ndarray | None]:
        """Per slice, where the trust region keeps the tuned head (None: everywhere)."""
        if self._accept is not None and self._accept[0] == self._version:
            return self._accept[1]
        n = self._n_slices()
        masks: list[np.ndarray | None] = [None] * n
        cons = self._history.constraints
        settings = cons.settings if cons is not None else None
        if settings is not None and settings.trust_region:
            before, means = self._pretrained_maps()
            scribbles = cons.scribbles if self.image_info.is_3d else cons.scribbles[None]
            for index in range(n):
                after, prob = self._maps(index)
                masks[index] = accepted_changes(
                    before[index],
                    after,
                    scribbles[index],
                    self._describe(index),
                    means[index],
                    prob,
                    reach=settings.trust_reach,
                    confidence=settings.spread_confidence,
                    margin=settings.spread_margin,
                    spread=settings.spread,
                    local_similar=settings.local_similar,
                )
                if settings.free_types:
                    masks[index] |= (before[index] > 0) & (after > 0)
        self._accept = (self._version, masks)
        return masks

    def _compute_class_map(self) -> np.ndarray:
        """Decide the classes of the whole image (int32).

        The model's class rule on the current head, the trust region (or the CRF on the
        trust region's log-probabilities), one class per nucleus, then the pins.
        """
        n = self._n_slices()
        height, width = self.spatial_shape[-2:]
        class_map = np.empty((n, height, width), dtype=np.int32)
        accept = self._accept_masks()
        cons = self._history.constraints
        crf = self._crf_applies(cons.settings if cons is not None else None)
        for index in range(n):
            if crf:
                class_map[index] = class_map_of(self.model, self._slice_logits(index)[0])
                continue
            after = self._maps(index)[0]
            if accept[index] is not None:
                before = self._pretrained_maps()[0][index]
                after = np.where(accept[index], after, before)
            class_map[index] = after
        if cons is not None and cons.settings.type_by_instance and self.n_classes > 2:
            scribbles = cons.scribbles if self.image_info.is_3d else cons.scribbles[None]
            labels = self._instance_labels(class_map)
            for index in range(n):
                class_map[index] = type_by_instance(
                    labels[index], class_map[index], scribbles[index]
                )
                if cons.settings.type_classifier != "off":
                    extra = None
                    if cons.settings.type_classifier == "both":
                        ys, xs = np.nonzero(np.ones(labels[index].shape, dtype=bool))
                        extra = self._pixel_features(index, ys, xs).T.reshape(
                            *labels[index].shape, -1
                        )
                    prior = None
                    if cons.settings.type_classifier_prior > 0:
                        logp = self._slice_logits(index)[0]
                        prior = (
                            torch.cat([logp[:1], logp[1:].log_softmax(0)]).numpy()
                            * cons.settings.type_classifier_prior
                        )
                    class_map[index] = classify_types(
                        self._scaled_plane(index), labels[index], class_map[index],
                        scribbles[index], seed=cons.settings.seed, extra=extra,
                        margin=cons.settings.type_classifier_margin, prior=prior,
                    )  # fmt: skip
                if cons.settings.type_spread:
                    class_map[index] = spread_types(
                        labels[index], class_map[index], scribbles[index],
                        self._describe(index), margin=cons.settings.type_spread_margin,
                    )  # fmt: skip
        return self._with_pins(class_map if self.image_info.is_3d else class_map[0])

    def _with_pins(self, class_map: np.ndarray) -> np.ndarray:
        """Show the current state's pinned scribbles as their class (in place)."""
        pins = self._history.pins
        if pins is not None:
            pinned = pins > 0
            class_map[pinned] = pins[pinned] - 1
        return class_map

    def _preview(self) -> np.ndarray:
        """Return the tuned head's classes with this refinement's pins: a cheap live view.

        The trust region, the CRF and per-nucleus typing apply to the final prediction
        only; a preview shows how the head itself is moving.
        """
        n = self._n_slices()
        planes = np.stack([self._maps(index)[0] for index in range(n)])
        return self._with_pins(planes if self.image_info.is_3d else planes[0])

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
        if self._prediction is None or self._prediction[0] != self._version:
            class_map = self._compute_class_map()
            class_map.setflags(write=False)
            self._prediction = (self._version, class_map)
            release_free_memory()  # else the process keeps what numpy and torch freed
        return self._prediction[1]

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
        return self._slice_logits(index)

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
        class_map = self.prediction
        planes = class_map if self.image_info.is_3d else class_map[None]
        labels = self._instance_labels(planes)
        result = labels if self.image_info.is_3d else labels[0]
        return result, self._instance_classes(result, class_map)

    def _instance_labels(self, planes: np.ndarray) -> np.ndarray:
        """Instances (N, Y, X) of class maps (N, Y, X), ids unique over the stack."""
        from .postprocess import class_map_to_instances

        method = self.model.instances
        if getattr(method, "__func__", None) is SegmentationModel.instances:
            # no model-specific post-processing: one watershed over the image or stack
            whole = planes if self.image_info.is_3d else planes[0]
            result = np.asarray(class_map_to_instances(whole)).astype(np.int32)
            return result if self.image_info.is_3d else result[None]
        labels = []
        offset = 0
        for index, plane in enumerate(planes):
            one_feats = {k: v[index : index + 1] for k, v in self.features.items()}
            own = method(plane, self._slice_logits(index), one_feats)
            if own is None:
                own = class_map_to_instances(plane)
            own = np.asarray(own).astype(np.int32)
            if offset:
                own = np.where(own > 0, own + offset, 0).astype(np.int32)
            offset = max(offset, int(own.max(initial=0)))
            labels.append(own)
        return np.stack(labels)

    def _instance_classes(self, labels: np.ndarray, class_map: np.ndarray) -> dict[int, int]:
        rule = getattr(self.model, "instance_types", None)
        if rule is None:
            return instance_types(labels, class_map)
        # the adapter's rule is 2D: apply it slice by slice (ids are unique over a stack)
        plane_shape = labels.shape[-2:]
        planes = zip(
            labels.reshape(-1, *plane_shape), class_map.reshape(-1, *plane_shape), strict=True
        )
        return {int(k): int(v) for lab, cls in planes for k, v in rule(lab, cls).items()}

    # ------------------------------------------------------------------ history
    def undo(self) -> bool:
        """Go back to the head before the last change (refinement, class, reset).

        Returns
        -------
        bool
            False when there was nothing to undo.
        """
        self._check_open()
        done = self._history.undo()
        if done:
            self._changed()
        return done

    def redo(self) -> bool:
        """Re-apply the last undone change.

        Returns
        -------
        bool
            False when there was nothing to redo.
        """
        self._check_open()
        done = self._history.redo()
        if done:
            self._changed()
        return done

    def reset(self) -> bool:
        """Restore the pre-trained head exactly (undoable).

        Returns
        -------
        bool
            False when the head already is the pre-trained one.
        """
        self._check_open()
        done = self._history.reset()
        if done:
            self._changed()
        return done

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
        anchor = {}
        for pname, p in self.model.head_module.named_parameters():
            ref = old_anchor.get(pname)
            current = p.detach().clone()
            if ref is None or ref.shape == current.shape:
                anchor[pname] = current if ref is None else ref
                continue
            axis = next(
                i for i, (a, b) in enumerate(zip(ref.shape, current.shape, strict=True)) if a != b
            )
            grown = current.narrow(axis, ref.shape[axis], current.shape[axis] - ref.shape[axis])
            anchor[pname] = torch.cat([ref.to(current.device), grown], dim=axis)
        self._history.push(f"add class {name!r}", anchor=anchor)
        self._changed()
        return self.n_classes - 1

    def save_model(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the network with its head as tuned now, for ``load_model`` to read back.

        The format follows the model (:attr:`SegmentationModel.save_format`): the plugin's
        ``.safetensors`` for HoVer-Net models, TorchScript for TorchScript files, a
        ``.safetensors`` state dict for other ``nn.Module`` networks. The file holds the
        tuned network, which predicts as this session's head does; the session's result also
        applies the scribbles, the trust region and the edge-aware smoothing on top.

        Parameters
        ----------
        path : str or os.PathLike
            Output file, with a suffix the format takes.
        overwrite : bool
            Replace an existing file.

        Returns
        -------
        Path
            The file written.

        Raises
        ------
        ValueError
            For a model that cannot be saved, a suffix the format does not take, a missing
            folder or an existing file without ``overwrite``.
        """
        self._check_open()
        model = self.model
        target = check_target(model, path, overwrite)
        model.save(target, {"adapted": self._adapted()})
        return target

    def _adapted(self) -> dict[str, object]:
        """Return what a saved or exported model records about its tuning."""
        return {
            "from": self.model.name,
            "by": f"napari-scribble-refine {_package_version()}",
            "image_shape": list(self.spatial_shape),
            "steps": self.history_labels[1 : self.history_position + 1],
            "note": "the head was tuned to one image by its scribbles; check it on others",
        }

    def export_bioimageio(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        license: str | None = None,  # noqa: A002 - the rdf's field name
        authors: list[str] | None = None,
    ) -> Path:
        """Write the network with its head as tuned now as a bioimage.io package (``.zip``).

        Built-in (same-padded HoVer-Net) models only, for now. The package runs in other
        bioimage.io tools and ``load_model(path, allow_code=True)`` reads it back; see
        :mod:`~napari_scribble_refine.core.models.bioimageio_export` for what it holds.

        Parameters
        ----------
        path : str or os.PathLike
            Output ``.zip``.
        overwrite : bool
            Replace an existing file.
        license : str, optional
            SPDX identifier (default BSD-3-Clause; required when the weights carry a
            condition without one, such as ``hovernet-he``'s research-use condition).
        authors : list of str, optional
            Author names for the package.

        Returns
        -------
        Path
            The package written.

        Raises
        ------
        ValueError
            For a model that cannot be exported, a bad path, or a missing licence.
        ImportError
            Without ``bioimageio.spec`` (the extra ``bioimageio``).
        """
        from .models.bioimageio_export import export_hovernet_package
        from .models.hovernet_adapter import HoVerNetModel

        self._check_open()
        if not isinstance(self.model, HoVerNetModel):
            raise ValueError(
                f"{self.model.name}: export_bioimageio writes HoVer-Net models only yet; "
                "save_model writes this one in its own format"
            )
        target = check_path(path, (".zip",), "a bioimage.io package", overwrite)
        image = self.image if not self.image_info.is_3d else self.image[0]
        return export_hovernet_package(
            self.model, image, target, self._adapted(), licence=license, authors=authors
        )

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
            The scribbles the loss runs over (grown when region growing is on).
        grown : numpy.ndarray or None
            The grown scribbles, or None when growing is off.
        """
        cfg = config if config is not None else self.config
        clean = validate_scribbles(scribbles, self.spatial_shape, self.n_classes)
        if not cfg.region_growing or not clean.any():
            return clean, None
        if self._grow_range is None:
            from .region_growing import robust_intensity_range

            channel_axis = -1 if self.image_info.is_rgb else None
            self._grow_range = robust_intensity_range(self._image, channel_axis=channel_axis)
        grown = grow_scribbles(
            self._image,
            clean,
            threshold=cfg.grow_threshold,
            max_distance=cfg.grow_max_distance,
            intensity_range=self._grow_range,
            max_grown_ratio=cfg.grow_cap or None,
        )
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
            return self._no_op()
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
        current = self._history.constraints
        if current is not None and np.array_equal(current.scribbles, used):
            marks = current.scribbles  # the history shares one array between equal entries
        else:  # a copy (later edits of the layer change nothing), 1 byte per pixel
            marks = used.astype(np.uint8 if self.n_classes < 255 else np.int32)
            marks.setflags(write=False)
        constraints = Constraints(marks, bool(cfg.pin_scribbles), cfg)
        every = cfg.preview_every if previews else 0
        return self._loop(cfg, batches, n_scribbled, token, grown, constraints, every)

    def _stale_constraints(self, constraints: Constraints, violations: int) -> bool:
        """Whether a refinement that took no step must still record its scribbles.

        Parameters
        ----------
        constraints : Constraints
            This refinement's scribbles and settings.
        violations : int
            Its scribbled pixels that the head predicts wrongly.

        Returns
        -------
        bool
            True when the current state records other scribbles or settings; without
            recorded scribbles, only when pinning would change what is shown (some of
            ``constraints`` are not predicted as scribbled).
        """
        current = self._history.constraints
        if current is None:
            return constraints.pinned and violations > 0
        return (  # refine() reuses the current array when the scribbles are equal
            current.scribbles is not constraints.scribbles
            or current.pinned != constraints.pinned
            or current.settings != constraints.settings
        )

    def _no_op(self) -> Generator[RefineStep, None, RefineResult]:
        prediction = self.predict()
        yield RefineStep(0, 0.0, 0, 0, prediction, True)
        return RefineResult(
            iterations=0,
            stop_reason="no_scribbles",
            loss=0.0,
            violations=0,
            n_scribbled=0,
            prediction=prediction,
            message="No scribbles: nothing to refine.",
        )

    def _loop(
        self,
        cfg: RefineConfig,
        batches: list[Batch],
        n_scribbled: int,
        token: int,
        grown: np.ndarray | None,
        constraints: Constraints,
        preview_every: int,
    ) -> Generator[RefineStep, None, RefineResult]:
        start = time.perf_counter()
        self.model.network.eval()
        params = [p for _, p in self.model.head_module.named_parameters()]
        named = list(self.model.head_module.named_parameters())
        anchor = self._history.anchor
        if cfg.optimiser == "adam":
            optimiser: MomentumSGD | Adam = Adam(params, lr=cfg.learning_rate)
        else:
            optimiser = MomentumSGD(params, lr=cfg.learning_rate, momentum=cfg.momentum)
        steps, stop_reason = 0, "max_iterations"
        loss = 0.0
        violations = n_scribbled
        # A point-wise step works on a few thousand feature vectors: one thread is fastest,
        # and several stall whenever another process holds a core (measured 0.075 s vs
        # 1.4 s per interaction on 2 busy cores).
        pointwise_cpu = self.model.head_is_pointwise and self.device.type == "cpu"
        step_threads = 1 if pointwise_cpu else None
        try:
            for iteration in range(cfg.max_iterations + 1):
                if token != self._run_token:
                    stop_reason = "superseded"
                    break
                with _torch_threads(step_threads):
                    for p in params:
                        p.requires_grad_(True)
                    optimiser.zero_grad()
                    ce, violations = loss_and_gradients(self.model, batches, n_scribbled)
                    prox = proximity(named, anchor)
                    loss = ce + cfg.proximity_weight * float(prox.detach())
                    if 1.0 - violations / n_scribbled >= cfg.stop_fraction:
                        stop_reason = "converged"
                        break
                    if iteration == cfg.max_iterations:
                        break
                    if cfg.proximity_weight > 0:
                        (cfg.proximity_weight * prox).backward()
                    if steps == 0:
                        self._history.push_live("refine", constraints)
                    optimiser.step()
                for p in params:
                    p.requires_grad_(False)
                steps += 1
                self._version += 1
                preview = None
                if preview_every and steps % preview_every == 0:
                    preview = self._preview()
                yield RefineStep(
                    steps,
                    loss,
                    violations,
                    n_scribbled,
                    preview,
                    False,
                    time.perf_counter() - start,
                )
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        if stop_reason != "superseded":
            self._history.freeze()
            if steps == 0 and self._stale_constraints(constraints, violations):
                # no step, so no new state, but the scribbles shown must be this run's
                self._history.push("refine", constraints=constraints)
                self._version += 1
        prediction = self.predict()
        elapsed = time.perf_counter() - start
        yield RefineStep(steps, loss, violations, n_scribbled, prediction, True, elapsed)
        shown = " (shown as scribbled)" if constraints.pinned and violations else ""
        messages = {
            "converged": f"All but {violations} of {n_scribbled} scribbled pixels predicted "
            f"as scribbled after {steps} step(s){shown}.",
            "max_iterations": f"Stopped after {steps} step(s) (the maximum); the tuned layers "
            f"still disagree with {violations} of {n_scribbled} scribbled pixels{shown}.",
            "superseded": f"Stopped after {steps} step(s): another operation started.",
        }
        if stop_reason == "converged" and violations == 0:
            messages["converged"] = (
                f"All {n_scribbled} scribbled pixels predicted as scribbled after {steps} step(s)."
            )
        return RefineResult(
            iterations=steps,
            stop_reason=stop_reason,
            loss=loss,
            violations=violations,
            n_scribbled=n_scribbled,
            prediction=prediction,
            message=messages[stop_reason],
            elapsed_s=time.perf_counter() - start,
            grown_scribbles=grown,
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

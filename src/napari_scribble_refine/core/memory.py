"""What a session will need in memory, what the machine has, and a refusal with the figures.

A session caches the trunk's features for every pixel (about 140 bytes per pixel for the
built-in models), so an image of 16,384² needs tens of gigabytes. Rather than let the
allocator fail half-way through the trunk run, :func:`check_fits` estimates the need before
anything large is allocated and refuses with the figures and the largest image that fits;
:func:`check_session_memory` measures the features' bytes per pixel on a small crop first.
Should the trunk run out of memory all the same, :func:`refusing_out_of_memory` turns the
allocator's error into the same refusal.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .images import ImageInfo
from .models.base import SegmentationModel

PROBE_ABOVE_PIXELS = 1024 * 1024
"""Larger images (all slices together) are checked against the memory limit first."""

SESSION_BYTES_PER_PIXEL = 48
"""Per-pixel working memory of a session besides the cached features and the image copies:
class maps, probabilities, instance labels and the trust region's masks (measured with
``hovernet-fluo`` at 8192², where the CRF is skipped: peak RSS 11.9 GB, features 9.1 GB)."""

CRF_BYTES_PER_PIXEL = 128
"""More per pixel when the edge-aware CRF runs (its maps of the whole slice; measured at
2048² and 4096²: peak RSS 1.44 GB and 5.15 GB above the model's, 309 bytes per pixel in
all, of which 136 are features and 12 the image copies)."""

FIXED_BYTES = 800 * 2**20
"""Memory that does not grow with the image: the activations of one trunk tile (1024² plus
its halo; about 0.8 GB for HoVer-Net), the head's pieces and the libraries' allocations."""


class TooLargeError(ValueError):
    """A request needs more memory than the machine has (a ``ValueError``: bad input)."""


@dataclass(frozen=True)
class MemoryNeed:
    """The memory a session on one image needs, in bytes.

    Attributes
    ----------
    features : int
        The cached trunk features.
    image : int
        The session's copy of the image and its normalised float copy.
    working : int
        Class maps, probabilities, instances, masks (:data:`SESSION_BYTES_PER_PIXEL`).
    history : int
        The undo history's budget.
    fixed : int
        What does not grow with the image (:data:`FIXED_BYTES`).
    """

    features: int
    image: int
    working: int
    history: int
    fixed: int

    @property
    def total(self) -> int:
        """All of it."""
        return self.features + self.image + self.working + self.history + self.fixed


def _cgroup_available() -> int | None:
    """Bytes the process's cgroup may still use (a container's limit), if it has a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 2**60:  # no limit
            return None
        return max(0, int(limit_text) - usage)
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate without swapping, if known.

    The smaller of the system's available memory (``MemAvailable`` in ``/proc/meminfo``,
    else free pages from ``sysconf``) and the room left under a cgroup (container) limit.

    Returns
    -------
    int or None
        Bytes, or None where the platform does not say (then no check is made).
    """
    system = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                system = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if system is None:
        try:
            system = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            system = None
    group = _cgroup_available()
    known = [b for b in (system, group) if b is not None]
    return min(known) if known else None


def session_need(
    *,
    n_pixels: int,
    slice_pixels: int,
    feature_bytes_per_pixel: float,
    image_bytes_per_pixel: float,
    history_bytes: int,
    crf: bool,
) -> MemoryNeed:
    """Estimate what a session on an image of ``n_pixels`` will hold at its peak.

    Parameters
    ----------
    n_pixels : int
        Pixels of the image (all slices of a stack).
    slice_pixels : int
        Pixels of one slice (the CRF works on one at a time).
    feature_bytes_per_pixel : float
        Bytes of cached features per pixel (measured on a small crop by the caller).
    image_bytes_per_pixel : float
        Bytes per pixel of the session's image copy plus its normalised copy.
    history_bytes : int
        The undo history's budget.
    crf : bool
        Whether the edge-aware CRF will run on this image's slices.

    Returns
    -------
    MemoryNeed
        The estimate by part.
    """
    return MemoryNeed(
        features=math.ceil(n_pixels * feature_bytes_per_pixel),
        image=math.ceil(n_pixels * image_bytes_per_pixel),
        working=n_pixels * SESSION_BYTES_PER_PIXEL
        + (slice_pixels * CRF_BYTES_PER_PIXEL if crf else 0),
        history=int(history_bytes),
        fixed=FIXED_BYTES,
    )


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_fits(
    need: MemoryNeed,
    *,
    shape: tuple[int, ...],
    spatial_shape: tuple[int, ...],
    limit: int | None,
    per_pixel: float,
    name: str = "image",
) -> None:
    """Refuse a request whose estimate exceeds the memory limit, with the figures.

    Parameters
    ----------
    need : MemoryNeed
        The estimate.
    shape : tuple of int
        The image's shape (for the message).
    spatial_shape : tuple of int
        (Y, X) or (Z, Y, X).
    limit : int or None
        Bytes available; None skips the check.
    per_pixel : float
        Bytes per pixel of the estimate (features, image copies and working memory), to
        name the largest image that fits.
    name : str
        The argument's name in the message.

    Raises
    ------
    TooLargeError
        If ``need.total`` exceeds ``limit``. The message gives the need by part, the
        limit, the largest square image (or stack depth) that fits, and what to do.
    """
    if limit is None or need.total <= limit:
        return
    pixels_that_fit = max(0, limit - need.history - need.fixed) / per_pixel
    side = int(math.sqrt(pixels_that_fit)) // 256 * 256
    if side < 256:
        fits = (
            "The undo history and the fixed share alone need more than that, so no image "
            "fits; free memory or set a smaller undo history budget (history_budget_mb)."
        )
    else:
        fits = f"The largest image that fits is about {side:,} x {side:,} pixels"
        if len(spatial_shape) == 3:
            depth = int(pixels_that_fit / (spatial_shape[1] * spatial_shape[2]))
            fits += f" (one slice), or {depth} slices of this size"
        fits += (
            ". Open it lazily instead: SlideSession(model, image) (core.slide) reads and "
            "computes only the tiles a region needs, within a memory budget; or crop the "
            "image to the region to correct, free memory, or set a smaller undo history "
            "budget (history_budget_mb)."
        )
    raise TooLargeError(
        f"{name}: a session on shape {tuple(shape)} needs about {_gb(need.total)} of memory "
        f"(cached features {_gb(need.features)}, image copies {_gb(need.image)}, working "
        f"maps {_gb(need.working)}, undo history {_gb(need.history)}, other "
        f"{_gb(need.fixed)}) but {_gb(limit)} is available. {fits}"
    )


def check_session_memory(
    model: SegmentationModel,
    image: np.ndarray,
    info: ImageInfo,
    *,
    history_budget_mb: float,
    memory_limit_mb: float | None,
    crf: bool,
) -> None:
    """Refuse an image whose session would not fit in memory, before the trunk runs.

    Images up to :data:`PROBE_ABOVE_PIXELS` pixels pass unchecked; for larger ones the
    trunk runs on a crop of at most 128² to measure the features' bytes per pixel.

    Parameters
    ----------
    model : SegmentationModel
        The adapter whose trunk the session will run.
    image : numpy.ndarray
        The image as given.
    info : ImageInfo
        Its layout.
    history_budget_mb : float
        The undo history's budget.
    memory_limit_mb : float or None
        Memory the session may use; None: what the machine has available now;
        ``math.inf``: no check.
    crf : bool
        Whether the edge-aware CRF will run on this image's slices.

    Raises
    ------
    TooLargeError
        If the estimate exceeds the limit (see :func:`check_fits`).
    """
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
    feats = compute_features(model, probe, is_3d=False, tile_size=side)
    per_pixel = sum(v.numel() * v.element_size() for v in feats.values()) / (side * side)
    image_bytes = info.n_channels * (image.dtype.itemsize + 4)  # copy + normalised copy
    n_pixels = height * width * n_slices
    need = session_need(
        n_pixels=n_pixels,
        slice_pixels=height * width,
        feature_bytes_per_pixel=per_pixel,
        image_bytes_per_pixel=image_bytes,
        history_bytes=int(history_budget_mb * 2**20),
        crf=crf,
    )
    check_fits(
        need,
        shape=tuple(image.shape),
        spatial_shape=info.spatial_shape,
        limit=limit,
        per_pixel=per_pixel + image_bytes + SESSION_BYTES_PER_PIXEL,
    )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether torch's error is an allocation failure.

    Parameters
    ----------
    error : BaseException
        A ``RuntimeError`` raised by torch.

    Returns
    -------
    bool
        True for ``torch.OutOfMemoryError`` and the CPU allocator's messages.
    """
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or any(
        s in text for s in ("can't allocate memory", "out of memory", "not enough memory")
    )


@contextmanager
def refusing_out_of_memory(shape: tuple[int, ...]) -> Iterator[None]:
    """Turn an allocation failure inside the block into a :class:`TooLargeError`.

    Parameters
    ----------
    shape : tuple of int
        The image's shape (for the message).

    Yields
    ------
    None
        Inside the block; other errors pass unchanged.

    Raises
    ------
    TooLargeError
        When the block raised ``MemoryError`` or torch's out-of-memory error.
    """
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not is_out_of_memory(err):
            raise
        raise TooLargeError(
            f"image: the trunk ran out of memory on shape {shape} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); crop the image "
            "to the region to correct, or free memory"
        ) from None


def _glibc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not Linux with glibc
        return None


_TRIM = _glibc_trim() if sys.platform.startswith("linux") else None


def release_free_memory() -> None:
    """Give the heap's freed pages back to the system (glibc's ``malloc_trim``; else nothing).

    glibc keeps memory freed by numpy and torch for reuse, so a long session's resident
    size climbs though its live memory does not (the soak benchmark: 271 MB over 1,000
    refinements, 23 MB of it live).
    """
    if _TRIM is not None:
        _TRIM(0)

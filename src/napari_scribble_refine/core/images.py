"""Image checks: which layouts the engine accepts and what it reads from them.

Accepted layouts (channels last, as napari stores them):

* ``(Y, X)`` greyscale;
* ``(Y, X, 3)`` RGB or ``(Y, X, 4)`` RGBA;
* ``(Z, Y, X)`` greyscale stacks.

Anything else is rejected with a message that says what was given and what to do.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

RGB_CHANNELS = (3, 4)
"""Lengths of a trailing colour axis: RGB and RGBA."""

RGB_GUESS_MIN_SIDE = 30
"""With ``rgb=None``, both spatial sides must be longer than this for a trailing axis of
length 3 or 4 to be read as colour (napari's own ``guess_rgb`` rule)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the engine needs to know about an accepted image.

    Attributes
    ----------
    is_rgb : bool
        True for ``(Y, X, 3)`` / ``(Y, X, 4)`` colour images.
    is_3d : bool
        True for ``(Z, Y, X)`` stacks.
    spatial_shape : tuple of int
        The shape without the colour axis: ``(Y, X)`` or ``(Z, Y, X)``. Scribbles, class maps
        and instance labels have this shape.
    n_channels : int
        1 for greyscale, 3 or 4 for colour.
    """

    is_rgb: bool
    is_3d: bool
    spatial_shape: tuple[int, ...]
    n_channels: int


def guess_rgb(shape: tuple[int, ...]) -> bool:
    """Guess whether an array of this shape is a colour image, as napari does.

    A 3-dimensional shape is read as colour when its last axis has length 3 or 4 and both
    other axes are longer than :data:`RGB_GUESS_MIN_SIDE`. So ``(512, 512, 3)`` is RGB but
    ``(3, 512, 512)`` and ``(20, 20, 3)`` are stacks. The widget does not rely on this: it
    passes napari's ``rgb`` flag explicitly.

    Parameters
    ----------
    shape : tuple of int
        Array shape.

    Returns
    -------
    bool
        True when the shape looks like ``(Y, X, 3)`` or ``(Y, X, 4)``.
    """
    return (
        len(shape) == 3
        and shape[-1] in RGB_CHANNELS
        and all(side > RGB_GUESS_MIN_SIDE for side in shape[:2])
    )


AMBIGUOUS_CHANNELS = (2, 3, 4)
"""With ``rgb=None``, a 3D array with an axis this long that is not clearly ``(Y, X, 3|4)``
colour could be channels or a short stack: the caller must say which."""


def _refuse_ambiguous(shape: tuple[int, ...], name: str) -> None:
    """Raise when a 3D shape could be colour channels or a short stack (``rgb=None``)."""
    if shape[-1] in AMBIGUOUS_CHANNELS:
        what = f"a {shape[0]}-slice (Z, Y, X) stack or a small image with {shape[-1]} channels"
    elif shape[0] in AMBIGUOUS_CHANNELS:
        what = f"a {shape[0]}-slice (Z, Y, X) stack or {shape[0]} colour channels first"
    else:
        return
    raise ValueError(
        f"{name} has shape {shape}: it could be {what}. Say which: rgb=False reads it as a "
        "(Z, Y, X) stack (command line: --no-rgb); for colour, put the channels last "
        "(np.moveaxis(image, 0, -1)) and pass rgb=True (--rgb); for two channels pick one "
        "(image[..., 0])"
    )


def image_layout(
    shape: tuple[int, ...], dtype: np.dtype, *, rgb: bool | None = None, name: str = "image"
) -> ImageInfo:
    """Check an image's shape and dtype (not its values) and describe its layout.

    The checks of :func:`validate_image` that need no pixel: a lazy image (dask, zarr, a TIFF
    opened lazily) is described without reading it.

    Parameters
    ----------
    shape : tuple of int
        Array shape, a colour axis last.
    dtype : numpy.dtype
        Array dtype.
    rgb : bool or None
        As for :func:`validate_image`.
    name : str
        Name of the argument, used in error messages.

    Returns
    -------
    ImageInfo
        Layout of the image.

    Raises
    ------
    TypeError
        If the dtype is not real numbers.
    ValueError
        If the layout is not one the engine accepts (see :func:`validate_image`).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":  # bool, complex, object, strings, dates
        raise TypeError(
            f"{name} must hold real numbers (an integer or floating-point dtype), got dtype {dtype}"
        )
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if rgb is None and ndim == 3 and not guess_rgb(shape):
        _refuse_ambiguous(shape, name)
    is_rgb = guess_rgb(shape) if rgb is None else bool(rgb)
    spatial_ndim = ndim - 1 if is_rgb else ndim
    if spatial_ndim >= 4 or (is_rgb and spatial_ndim == 3):
        raise ValueError(
            f"{name} has shape {shape}: 4D images are not supported; pick one time "
            "point/channel (accepted: (Y, X), (Y, X, 3|4) colour, (Z, Y, X) stacks)"
        )
    if is_rgb and (ndim != 3 or shape[-1] not in RGB_CHANNELS):
        raise ValueError(
            f"{name} is marked as RGB, so it must have shape (Y, X, 3) or (Y, X, 4), "
            f"got shape {shape}"
        )
    if spatial_ndim not in (2, 3):
        raise ValueError(
            f"{name} must have 2 or 3 dimensions ((Y, X), (Y, X, 3|4) colour or (Z, Y, X)), "
            f"got {ndim} dimension(s) with shape {shape}"
        )
    if 0 in shape:
        raise ValueError(f"{name} has an empty axis: shape {shape}")
    return ImageInfo(
        is_rgb=is_rgb,
        is_3d=spatial_ndim == 3,
        spatial_shape=shape[:-1] if is_rgb else shape,
        n_channels=shape[-1] if is_rgb else 1,
    )


def validate_image(image: ArrayLike, *, rgb: bool | None = None, name: str = "image") -> ImageInfo:
    """Check that an image is one the engine can segment and describe its layout.

    Parameters
    ----------
    image : array_like
        ``(Y, X)``, ``(Y, X, 3|4)`` or ``(Z, Y, X)``, integer or floating point. Never
        modified or copied.
    rgb : bool or None
        True: the last axis is colour (it must have length 3 or 4). False: no colour axis, a
        3-dimensional array is a ``(Z, Y, X)`` stack. None: guess with :func:`guess_rgb`, and
        refuse shapes that could be either (an axis of 2-4 at either end that is not clearly
        ``(Y, X, 3|4)`` colour), such as ``(3, 512, 512)`` or ``(20, 20, 3)``.
    name : str
        Name of the argument, used in error messages.

    Returns
    -------
    ImageInfo
        Layout of the image.

    Raises
    ------
    TypeError
        If the dtype is not real numbers (bool, complex, object, strings).
    ValueError
        If the number of dimensions is not 2 or 3 (a colour axis included), an axis is empty,
        ``rgb=True`` but the last axis is not 3 or 4 long, a value is NaN or infinite,
        every pixel has the same value, or the values span more than the largest float64.
    """
    array = np.asarray(image)
    dtype = array.dtype
    info = image_layout(array.shape, dtype, rgb=rgb, name=name)

    if np.issubdtype(dtype, np.floating) and not np.isfinite(array).all():
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite value(s); replace them before segmenting"
        )
    low, high = array.min(), array.max()
    if low == high:
        raise ValueError(
            f"{name} is constant (every pixel is {low.item()!r}); there is nothing to segment"
        )
    if not math.isfinite(float(high) - float(low)):  # scaling to [0, 1] would give NaN
        raise ValueError(
            f"{name} has values from {low.item()!r} to {high.item()!r}, a range wider than the "
            "largest float64 number; rescale it first (e.g. image / np.abs(image).max())"
        )

    return info


def image_for_model(
    image: ArrayLike, info: ImageInfo, *, in_channels: int, model_name: str
) -> tuple[ArrayLike, ImageInfo]:
    """Check an accepted image against a model's input and drop an RGBA image's alpha.

    Parameters
    ----------
    image : array_like
        The image, accepted by :func:`validate_image`.
    info : ImageInfo
        Its layout.
    in_channels : int
        The model's input channels (1: greyscale).
    model_name : str
        The model's name (for the message).

    Returns
    -------
    image : array_like
        The image, or its R, G, B channels when it was RGBA.
    info : ImageInfo
        Its layout after that.

    Raises
    ------
    ValueError
        If the image is colour and the model takes greyscale images.

    Warns
    -----
    UserWarning
        When the alpha channel of an RGBA image is dropped (reported at the caller of the
        function that called this one).
    """
    if info.is_rgb and in_channels == 1:
        raise ValueError(
            f"image: a colour image of shape {np.shape(image)} was given, but model "
            f"{model_name!r} takes greyscale images; choose a colour model (such as "
            "'hovernet-he') or convert the image to greyscale first "
            "(skimage.color.rgb2gray)"
        )
    if info.n_channels == 4:  # RGBA: the alpha channel is not part of the stain
        warnings.warn(
            "image: RGBA; the alpha channel is dropped and R, G, B are segmented",
            UserWarning,
            stacklevel=3,
        )
        return np.asarray(image)[..., :3], dataclasses.replace(info, n_channels=3)
    return image, info

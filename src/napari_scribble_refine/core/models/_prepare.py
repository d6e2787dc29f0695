"""Image preparation shared by the generic adapters: normalisation, channels, padding."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Normaliser = str | Callable[[np.ndarray], np.ndarray] | None
"""``"percentile"``, ``"minmax"``, ``"none"`` / None, or a callable image -> image."""

NORMALISERS = ("percentile", "minmax", "none")

PERCENTILES = (1.0, 99.8)
"""Low and high percentiles mapped to 0 and 1 by ``"percentile"`` normalisation."""


def check_normaliser(normalise: Normaliser) -> Normaliser:
    """Validate a normalisation option.

    Parameters
    ----------
    normalise : str, callable or None
        The option.

    Returns
    -------
    str, callable or None
        The same option (lower-cased when a string).

    Raises
    ------
    ValueError
        For an unknown string or another type.
    """
    if normalise is None or callable(normalise):
        return normalise
    if isinstance(normalise, str) and normalise.lower() in NORMALISERS:
        return normalise.lower()
    raise ValueError(
        f"normalise must be one of {NORMALISERS}, None or a callable image -> image, "
        f"got {normalise!r}"
    )


def normaliser_name(normalise: Normaliser) -> str:
    """Say which normalisation an adapter applies (for its description)."""
    return "a function of its own" if callable(normalise) else str(normalise)


def working_float(image: np.ndarray) -> np.ndarray:
    """Return the image in the float type its scaling uses: float64 stays, else float32.

    Values such as 1e300 or 1e-300 would overflow or flush to zero in float32 and leave a
    blank image, so float64 images are scaled in float64 and cast afterwards. So are float32
    images whose values span more than float32 holds (such as -3e38 and 3e38): their
    differences would overflow to inf and the scaled image would be NaN.
    """
    data = np.asarray(image)
    wide = data.dtype == np.float64 or (
        data.dtype == np.float32
        and data.size > 0
        and float(data.max()) - float(data.min()) > float(np.finfo(np.float32).max)
    )
    return data.astype(np.float64 if wide else np.float32, copy=False)


def normalise_array(image: np.ndarray, normalise: Normaliser) -> np.ndarray:
    """Scale an image (or stack) to the network's input range, as float32.

    Statistics are taken over the whole array (every slice of a stack, every channel of an
    RGB image together), so tiles and slices of one image are scaled alike.

    Parameters
    ----------
    image : numpy.ndarray
        Any real dtype; not modified.
    normalise : str, callable or None
        ``"percentile"``: the 1st and 99.8th percentiles map to 0 and 1; ``"minmax"``: the
        minimum and maximum map to 0 and 1; ``"none"`` / None: cast only; a callable gets
        the image and returns the scaled image.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    if callable(normalise):
        out = np.asarray(normalise(np.array(image, copy=True)), dtype=np.float32)
        if out.shape != image.shape:
            raise ValueError(
                f"the normalise callable changed the image shape from {image.shape} to {out.shape}"
            )
        return out
    if normalise in (None, "none"):
        data = np.asarray(image, dtype=np.float32)
        return data.copy() if data is image else data
    data = working_float(image)
    if normalise == "percentile":
        low, high = np.percentile(data, PERCENTILES)
    else:
        low, high = float(data.min()), float(data.max())
    if high <= low:
        low, high = float(data.min()), float(data.max())
    scale = 1.0 / (high - low) if high > low else 1.0
    return ((data - low) * scale).astype(np.float32, copy=False)


def to_input_tensor(image: np.ndarray, in_channels: int, device: torch.device) -> torch.Tensor:
    """Turn a scaled (Y, X) or (Y, X, C) image into an input tensor [1, in_channels, Y, X].

    Greyscale images given to colour models are repeated over the channels; an alpha
    channel is dropped. Colour images for greyscale models are an error: averaging the
    channels would hide a wrong model choice.

    Parameters
    ----------
    image : numpy.ndarray
        float32 (Y, X) or (Y, X, C).
    in_channels : int
        Channels the network expects.
    device : torch.device
        Where the tensor goes.

    Returns
    -------
    torch.Tensor
        [1, in_channels, Y, X] float32.
    """
    if image.ndim == 2:
        chw = image[None]
    elif image.ndim == 3:
        chw = np.moveaxis(image, -1, 0)
        if chw.shape[0] == 4:
            chw = chw[:3]
    else:
        raise ValueError(f"expected a (Y, X) or (Y, X, C) image, got shape {image.shape}")
    n = chw.shape[0]
    if n != in_channels:
        if n != 1:
            raise ValueError(
                f"image: the model takes {in_channels} channel(s) but the image has {n}; "
                "choose a model made for this kind of image"
            )
        chw = np.repeat(chw, in_channels, axis=0)
    tensor = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))
    return tensor[None].to(device)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad [N, C, H, W] at the bottom and right so H and W are multiples of ``multiple``.

    Reflection padding where the image is large enough, replication otherwise.

    Parameters
    ----------
    x : torch.Tensor
        Input batch.
    multiple : int
        Required divisor of H and W.

    Returns
    -------
    torch.Tensor
        The padded batch (``x`` itself when no padding is needed).
    """
    if multiple <= 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def input_batch(
    images: Sequence[np.ndarray],
    normalise: Callable[[np.ndarray], np.ndarray] | None,
    in_channels: int,
    device: torch.device,
) -> torch.Tensor:
    """Stack 2D images of one size into an input batch [B, in_channels, Y, X].

    Parameters
    ----------
    images : sequence of numpy.ndarray
        (Y, X) or (Y, X, C) images of equal shape.
    normalise : callable or None
        The adapter's ``normalise_image``; None when the images are normalised already.
    in_channels : int
        Channels the network takes.
    device : torch.device
        Where the batch goes.

    Returns
    -------
    torch.Tensor
        The batch (float32).
    """
    scaled = images if normalise is None else [normalise(img) for img in images]
    return torch.cat([to_input_tensor(img, in_channels, device) for img in scaled])

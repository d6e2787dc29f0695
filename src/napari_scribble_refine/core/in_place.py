"""Models tuned in place (``copy_model=False``): one open session per network at a time.

Two sessions tuning one network in place would change each other's results, so a session
claims the network when it starts and gives it back when it closes (or is deleted: the
registry holds weak references only).
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

import numpy as np
import torch

from .models.base import SegmentationModel

__all__ = ["claim_in_place", "release_in_place"]


class Tuner(Protocol):
    """What the registry reads of a session that tunes a model in place."""

    _closed: bool

    @property
    def image(self) -> np.ndarray:
        """The session's image (its shape names the session in the refusal)."""
        ...


_IN_PLACE: weakref.WeakKeyDictionary[torch.nn.Module, weakref.ref[Tuner]] = (
    weakref.WeakKeyDictionary()
)
"""Networks tuned in place (``copy_model=False``) and the open session tuning each."""
_IN_PLACE_LOCK = threading.Lock()


def claim_in_place(model: SegmentationModel, session: Tuner | None) -> None:
    """Refuse a model another open session tunes in place; record ``session`` as its tuner.

    Parameters
    ----------
    model : SegmentationModel
        The model to tune in place.
    session : Tuner or None
        The session that tunes it; None only checks.

    Raises
    ------
    ValueError
        If another open session tunes ``model``'s network in place.
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


def release_in_place(model: SegmentationModel, session: Tuner) -> None:
    """Give ``model`` back to other sessions if ``session`` holds it.

    Parameters
    ----------
    model : SegmentationModel
        The model tuned in place.
    session : Tuner
        The session that closes.
    """
    with _IN_PLACE_LOCK:
        ref = _IN_PLACE.get(model.network)
        if ref is not None and ref() is session:
            del _IN_PLACE[model.network]

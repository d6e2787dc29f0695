"""The head's logits over an image's slices, kept for one head state while they fit.

The final prediction reads the current head's logits three times (the trust region, the
CRF, the class map) and the pre-trained head's twice, once per refinement; keeping them
runs each head once per state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["LOGITS_CACHE_PIXELS", "KeptLogits"]

LOGITS_CACHE_PIXELS = 2048 * 2048
"""Slices are kept while those kept hold at most this many pixels in all; larger images
run the head piece by piece for each use."""


class KeptLogits:
    """Logits [1, C, Y, X] of one head state's slices, kept while they fit.

    Parameters
    ----------
    slice_pixels : int
        Pixels of one slice.
    budget_pixels : int, optional
        The most pixels kept in all (default :data:`LOGITS_CACHE_PIXELS`, read when the
        object is made).
    """

    def __init__(self, slice_pixels: int, budget_pixels: int | None = None) -> None:
        self.slice_pixels = slice_pixels
        self.budget_pixels = LOGITS_CACHE_PIXELS if budget_pixels is None else budget_pixels
        self._state: object = None
        self._slices: dict[int, torch.Tensor] = {}

    def _for(self, state: object) -> dict[int, torch.Tensor]:
        """Return the slices kept for ``state`` (a state number, or an anchor by identity)."""
        same = self._state == state if isinstance(state, int) else self._state is state
        if not same:
            self._state, self._slices = state, {}
        return self._slices

    def keeps(self, state: object, index: int) -> bool:
        """Return whether slice ``index`` of ``state`` is kept, or would fit beside those kept."""
        kept = self._for(state)
        return index in kept or (len(kept) + 1) * self.slice_pixels <= self.budget_pixels

    def get(self, state: object, index: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Return slice ``index``'s logits of ``state``, kept or computed (and kept if they fit).

        Parameters
        ----------
        state : object
            The head state the logits belong to.
        index : int
            The slice.
        compute : callable
            Runs the head in that state on the slice.

        Returns
        -------
        torch.Tensor
            [1, C, Y, X] on the CPU.
        """
        if index not in self._for(state):
            logits = compute()
            if not self.keeps(state, index):
                return logits
            self._slices[index] = logits
        return self._slices[index]

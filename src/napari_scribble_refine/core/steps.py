"""What a refinement reports: one record per optimiser step, one result at the end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RefineStep:
    """Progress of one refinement, yielded after each optimiser step and once at the end.

    Attributes
    ----------
    iteration : int
        Optimiser steps taken so far (0 in the final record of a refinement that took none).
    loss : float
        Cross-entropy on the scribbled pixels plus the proximity term, measured on the
        weights *before* this step (in the final record: on the final weights).
    violations : int
        Scribbled pixels whose predicted class was not their scribbled class, measured with
        ``loss``.
    n_scribbled : int
        Scribbled pixels the loss runs over (after region growing).
    prediction : numpy.ndarray or None
        The whole image's class map after this step (0 = background, c = class c), every
        ``preview_every`` steps (the tuned head's own classes with the pins) and in the
        final record (the refined prediction); None otherwise. Never a tensor.
    finished : bool
        True only in the final record.
    elapsed_s : float
        Seconds since the refinement started.
    """

    iteration: int
    loss: float
    violations: int
    n_scribbled: int
    prediction: np.ndarray | None
    finished: bool
    elapsed_s: float = 0.0

    @property
    def fraction_correct(self) -> float:
        """Fraction of scribbled pixels predicted as their class (1.0 when none)."""
        if self.n_scribbled == 0:
            return 1.0
        return 1.0 - self.violations / self.n_scribbled


@dataclass(frozen=True)
class RefineResult:
    """Outcome of one refinement, returned by the ``refine()`` generator.

    Attributes
    ----------
    iterations : int
        Optimiser steps taken.
    stop_reason : str
        ``"converged"`` (the stop fraction was reached), ``"max_iterations"``,
        ``"no_scribbles"`` (nothing to do) or ``"superseded"`` (another session operation
        started before the loop ended; its steps so far are kept).
    loss : float
        Loss on the final weights (0.0 when nothing was scribbled).
    violations : int
        Scribbled pixels still predicted wrongly.
    n_scribbled : int
        Scribbled pixels the loss ran over (after region growing).
    prediction : numpy.ndarray
        The whole image's class map with the final weights.
    message : str
        One sentence for the user.
    elapsed_s : float
        Seconds the refinement took, final prediction included.
    grown_scribbles : numpy.ndarray or None
        The scribbles after region growing (None when growing was off).
    """

    iterations: int
    stop_reason: str
    loss: float
    violations: int
    n_scribbled: int
    prediction: np.ndarray
    message: str
    elapsed_s: float = 0.0
    grown_scribbles: np.ndarray | None = None

    @property
    def converged(self) -> bool:
        """True when every scribble (or the configured fraction) is predicted correctly."""
        return self.stop_reason == "converged"

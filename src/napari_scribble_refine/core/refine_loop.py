"""The refinement loop of Algorithm 1: steps on the objective until the scribbles are predicted.

:func:`refinement_loop` measures the loss of :mod:`.objective` (plus the proximity of
:mod:`.optimiser`), stops when enough scribbled pixels are predicted as scribbled
(``stop_fraction``), after ``max_iterations`` steps or when another operation started, and
otherwise takes an optimiser step; it yields a :class:`~.steps.RefineStep` after each step,
records the tuned head in the session's history and ends with a :class:`~.steps.RefineResult`
whose message says why it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .config import RefineConfig
from .history import Constraints, HeadHistory
from .models.base import SegmentationModel
from .objective import Batch, loss_and_gradients
from .optimiser import Adam, MomentumSGD, proximity
from .steps import RefineResult, RefineStep

__all__ = ["no_op_refinement", "refinement_loop", "stale_constraints", "torch_threads"]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch's CPU operations on ``n`` threads inside the block (None: as they are).

    Parameters
    ----------
    n : int or None
        Threads inside the block; None leaves torch's setting alone.

    Yields
    ------
    None
        Inside the block; the previous thread count is restored after it.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stale_constraints(
    current: Constraints | None, constraints: Constraints, violations: int
) -> bool:
    """Whether a refinement that took no step must still record its scribbles.

    Parameters
    ----------
    current : Constraints or None
        What the history's current state records (None: no scribbles).
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
    if current is None:
        return constraints.pinned and violations > 0
    return (  # a session reuses the current array when the scribbles are equal
        current.scribbles is not constraints.scribbles
        or current.pinned != constraints.pinned
        or current.settings != constraints.settings
    )


def no_op_refinement(
    predict: Callable[[], np.ndarray],
) -> Generator[RefineStep, None, RefineResult]:
    """Report a refinement without scribbles: one final record, nothing tuned.

    Parameters
    ----------
    predict : callable
        The current class map.

    Yields
    ------
    RefineStep
        The final record (``finished=True``, no steps).

    Returns
    -------
    RefineResult
        Stop reason ``"no_scribbles"``.
    """
    prediction = predict()
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


def _stop_message(
    stop_reason: str, steps: int, violations: int, n_scribbled: int, pinned: bool
) -> str:
    """Say in words why a refinement stopped and how far it got."""
    shown = " (shown as scribbled)" if pinned and violations else ""
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
    return messages[stop_reason]


def refinement_loop(
    model: SegmentationModel,
    history: HeadHistory,
    batches: list[Batch],
    n_scribbled: int,
    cfg: RefineConfig,
    constraints: Constraints,
    *,
    grown: np.ndarray | None,
    device: torch.device,
    preview_every: int,
    superseded: Callable[[], bool],
    head_changed: Callable[[], None],
    preview: Callable[[], np.ndarray],
    predict: Callable[[], np.ndarray],
) -> Generator[RefineStep, None, RefineResult]:
    """Tune the head on the batches until the scribbles are predicted (Algorithm 1).

    Before each step the loss (cross-entropy plus ``proximity_weight`` times the proximity
    to the history's anchor) and the violations are measured; the loop stops when at least
    ``stop_fraction`` of the scribbled pixels are predicted as scribbled, after
    ``max_iterations`` steps, or when ``superseded()`` says another operation started. The
    first step opens a live history entry for ``constraints``; at the end it is frozen.

    Parameters
    ----------
    model : SegmentationModel
        The adapter whose head is tuned in place.
    history : HeadHistory
        The session's head states.
    batches : list of Batch
        From :func:`build_batches`.
    n_scribbled : int
        Scribbled pixels the loss runs over (> 0).
    cfg : RefineConfig
        This refinement's settings.
    constraints : Constraints
        The scribbles and settings the new head state records.
    grown : numpy.ndarray or None
        The grown scribbles, reported in the result.
    device : torch.device
        Where the head runs (point-wise heads step on one CPU thread).
    preview_every : int
        Put :func:`preview`'s class map in every ``preview_every``-th step (0: never).
    superseded : callable
        True once another operation started: the loop then takes no further step.
    head_changed : callable
        Called after each step (and after recording scribbles without a step).
    preview : callable
        The tuned head's class map (a live view).
    predict : callable
        The final class map, for the last record and the result.

    Yields
    ------
    RefineStep
        One record after each optimiser step and a final one (``finished=True``).

    Returns
    -------
    RefineResult
        The outcome.
    """
    start = time.perf_counter()
    model.network.eval()
    params = [p for _, p in model.head_module.named_parameters()]
    named = list(model.head_module.named_parameters())
    anchor = history.anchor
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
    step_threads = 1 if model.head_is_pointwise and device.type == "cpu" else None
    try:
        for iteration in range(cfg.max_iterations + 1):
            if superseded():
                stop_reason = "superseded"
                break
            with torch_threads(step_threads):
                for p in params:
                    p.requires_grad_(True)
                optimiser.zero_grad()
                ce, violations = loss_and_gradients(model, batches, n_scribbled)
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
                    history.push_live("refine", constraints)
                optimiser.step()
            for p in params:
                p.requires_grad_(False)
            steps += 1
            head_changed()
            shown = preview() if preview_every and steps % preview_every == 0 else None
            elapsed = time.perf_counter() - start
            yield RefineStep(steps, loss, violations, n_scribbled, shown, False, elapsed)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    if stop_reason != "superseded":
        history.freeze()
        if steps == 0 and stale_constraints(history.constraints, constraints, violations):
            # no step, so no new state, but the scribbles shown must be this run's
            history.push("refine", constraints=constraints)
            head_changed()
    prediction = predict()
    elapsed = time.perf_counter() - start
    yield RefineStep(steps, loss, violations, n_scribbled, prediction, True, elapsed)
    return RefineResult(
        iterations=steps,
        stop_reason=stop_reason,
        loss=loss,
        violations=violations,
        n_scribbled=n_scribbled,
        prediction=prediction,
        message=_stop_message(stop_reason, steps, violations, n_scribbled, constraints.pinned),
        elapsed_s=time.perf_counter() - start,
        grown_scribbles=grown,
    )

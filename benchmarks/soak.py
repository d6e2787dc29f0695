"""Soak test: many refinements on one session, with undo, redo, reset and new classes.

Usage::

    python benchmarks/soak.py [--refinements 1000] [--size 512] [--seed 0] [--iterations M]
        [--history-budget-mb MB] [--trace FILE] [--tracemalloc]

One :class:`~napari_scribble_refine.core.session.RefineSession` of the built-in
``hovernet-fluo`` model on a synthetic fluorescence image (``size``², seeded) runs
``--refinements`` refinements. Before each one a robot user
(:class:`~napari_scribble_refine.evaluation.robot.RobotUser`) adds one short stroke per class on
the largest remaining error of the current prediction to the scribbles of the current
episode; when it finds no error large enough, a few random short strokes are drawn instead.
The user's target is the ground truth with every fifth nucleus called background (debris),
so the head always has something to learn, and the nuclei of every added class (nucleus
ids 1 and 2 modulo 5) called that class. Between refinements, in a pattern fixed by
``--seed``:

* after about one refinement in five, :meth:`undo`; after some of those a :meth:`redo`,
  after some others a second :meth:`undo` (which may take back an added class);
* at refinements 30 and 60 of every hundred, :meth:`add_class` (at most two added classes
  at a time; later robot strokes paint them);
* after every hundredth refinement, :meth:`reset`, and the scribbles start afresh (a new
  episode).

Timing. Every refinement and every other operation is timed with the prediction it leaves
(``predict()``, as a viewer would show it). The refinement is iterated step by step, so its
preparation (validation, region growing, batches), each optimiser step and its finish (the
final prediction: trust region, CRF, instance typing, pins) are timed separately, and its
CPU time (``time.process_time``, all threads) is recorded beside the wall time. The first
``WARMUP`` refinements (allocator, caches and lazy imports warm up there) and the
operations between them are left out: ``slowest_vs_median`` is the slowest post-warm-up
refinement over their median. Refinements take between 0 and M optimiser steps, so
``slowest_vs_median_per_step`` divides each refinement's time by its steps (refinements
with at least one step) and ``optimiser_step_slowest_vs_median`` compares the individually
timed optimiser steps. Neither is equal work either: a step's loss runs over all scribbled
pixels, which grow through an episode. Other processes stretch wall times (torch's threads
wait for a busy core); the load average is reported before and after.

Memory. The process's resident set size (after ``gc.collect()``) once the warm-up is done
(``rss_start_mb``), every ``PROGRESS_EVERY`` refinements (``rss_trace_mb``) and at the end
(``rss_end_mb``). The ``*_trimmed_mb`` readings follow glibc's ``malloc_trim`` (taken right
after the plain readings at the end of the warm-up and at the end), which returns freed
heap pages: growth that vanishes there was held by the allocator, not by live objects. The
undo history keeps every state within its budget (``--history-budget-mb``, by default the
library's), so its size and its growth since the warm-up are reported beside the RSS.

``--trace FILE`` writes one CSV row per refinement; ``--tracemalloc`` adds the lines that
allocated the most Python/NumPy memory still alive at the end (torch's CPU tensors are not
traced; tracemalloc's own records inflate the RSS). Prints one JSON object on stdout;
progress lines go to stderr. Torch's thread count is left as the library sets it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.history import DEFAULT_BUDGET_MB
from napari_scribble_refine.core.models.registry import load_model
from napari_scribble_refine.core.session import RefineSession
from napari_scribble_refine.evaluation.robot import RobotUser
from napari_scribble_refine.synthetic.scenes import SyntheticSample, synthetic_fluorescence

WARMUP = 20
"""Refinements left out of the timing figures; the start RSS is read after them."""

PROGRESS_EVERY = 50
"""A progress line (and an RSS reading) every this many refinements."""

RESET_EVERY = 100
"""Reset after every this many refinements (a new episode, fresh scribbles)."""

ADD_CLASS_AT = (30, 60)
"""Refinements within each episode after which a class is added."""

MAX_EXTRA_CLASSES = 2
"""At most this many added classes at a time."""

UNDO_P, REDO_P, SECOND_UNDO_P = 0.2, 0.4, 0.25
"""Chance of an undo after a refinement; of a redo, else of a second undo, after it."""

RANDOM_STROKES = 3
"""Random strokes drawn when the robot finds no error region large enough."""

GOAL_RSS_MB, GOAL_RATIO = 100.0, 3.0
"""Goals: RSS growth below this many MB, slowest time below this many medians."""


def rss_mb() -> float:
    """Resident set size of this process in MB, after a garbage collection."""
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def rounded(value: float | None, digits: int = 1) -> float | None:
    """Round a number; None stays None."""
    return None if value is None else round(value, digits)


def malloc_trim() -> bool:
    """Return freed heap pages to the system (glibc only); True when it ran."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) >= 0)
    except (OSError, AttributeError):
        return False


def target_classes(sample: SyntheticSample, n_classes: int) -> np.ndarray:
    """Return the class map the simulated user wants for a session of ``n_classes``.

    Parameters
    ----------
    sample : SyntheticSample
        The image's ground truth.
    n_classes : int
        Classes of the session now (background included; 2 + the added ones).

    Returns
    -------
    numpy.ndarray
        uint8 (Y, X): the nuclei as class 1, except every fifth nucleus (id divisible by 5)
        as background and, for added class c >= 2, the nuclei with id % 5 == c - 1 as c.
    """
    ids = sample.instances.astype(np.int64)
    target = (sample.types > 0).astype(np.uint8)
    target[(ids > 0) & (ids % 5 == 0)] = 0
    for c in range(2, n_classes):
        target[(ids > 0) & (ids % 5 == c - 1)] = c
    return target


def random_strokes(
    rng: np.random.Generator, target: np.ndarray, scribbles: np.ndarray, n: int
) -> int:
    """Paint ``n`` short random straight strokes (width 3) of the target's classes in place.

    Each stroke starts at a random unscribbled pixel of a random class present in
    ``target``, runs 8-30 px in a random direction and paints only unscribbled pixels of
    that class.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the strokes.
    target : numpy.ndarray
        The wanted class map (0 = background).
    scribbles : numpy.ndarray
        uint8 scribbles (0 none, c + 1 class c), changed in place.
    n : int
        Number of strokes.

    Returns
    -------
    int
        Pixels painted.
    """
    height, width = target.shape
    painted = 0
    classes = np.unique(target)
    for _ in range(n):
        c = int(rng.choice(classes))
        ys, xs = np.nonzero((target == c) & (scribbles == 0))
        if ys.size == 0:
            continue
        i = int(rng.integers(ys.size))
        angle = rng.uniform(0, 2 * np.pi)
        t = np.arange(int(rng.integers(8, 31)))
        cy = np.round(ys[i] + t * np.sin(angle)).astype(int)
        cx = np.round(xs[i] + t * np.cos(angle)).astype(int)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                py, px = np.clip(cy + dy, 0, height - 1), np.clip(cx + dx, 0, width - 1)
                ok = (target[py, px] == c) & (scribbles[py, px] == 0)
                scribbles[py[ok], px[ok]] = c + 1
                painted += int(ok.sum())
    return painted


@dataclass
class Refinement:
    """Timings of one refinement (seconds)."""

    total: float
    cpu: float
    prepare: float
    steps: list[float]
    finish: float
    iterations: int
    stop_reason: str
    n_classes: int
    n_scribbled: int


def timed_refinement(session: RefineSession, scribbles: np.ndarray) -> Refinement:
    """Run one refinement step by step, timing its preparation, steps and finish.

    Parameters
    ----------
    session : RefineSession
        The session.
    scribbles : numpy.ndarray
        The scribbles (0 none, c + 1 class c).

    Returns
    -------
    Refinement
        Its timings and outcome (as :meth:`RefineSession.run`, without previews).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    generator = session.refine(scribbles, previews=False)
    prepare = time.perf_counter() - t0
    steps: list[float] = []
    finish = 0.0
    t = time.perf_counter()
    while True:
        try:
            step = next(generator)
        except StopIteration as stop:
            result = stop.value
            break
        now = time.perf_counter()
        if step.finished:
            finish = now - t
        else:
            steps.append(now - t)
        t = now
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Refinement(
        total,
        cpu,
        prepare,
        steps,
        finish,
        result.iterations,
        result.stop_reason,
        session.n_classes,
        result.n_scribbled,
    )


@dataclass
class Soak:
    """What the soak loop records."""

    refinements: list[Refinement] = field(default_factory=list)
    op_seconds: dict[str, list[float]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    rss_trace_mb: list[float] = field(default_factory=list)
    warnings: Counter = field(default_factory=Counter)
    robot_strokes: int = 0
    random_strokes: int = 0
    rss_start_mb: float = 0.0
    rss_start_trimmed_mb: float | None = None
    history_start_mb: float = 0.0
    tracemalloc_start: tracemalloc.Snapshot | None = None


def ratio(values: list[float]) -> tuple[float, float, float]:
    """Return (median, max, max / median) of some times."""
    if not values:
        return 0.0, 0.0, 0.0
    median = statistics.median(values)
    return median, max(values), max(values) / median if median > 0 else float("inf")


def soak(
    session: RefineSession,
    sample: SyntheticSample,
    n_refinements: int,
    seed: int,
    use_tracemalloc: bool = False,
) -> Soak:
    """Run the soak loop (see the module docstring) on one session.

    Parameters
    ----------
    session : RefineSession
        A fresh session on ``sample.image``.
    sample : SyntheticSample
        The image's ground truth.
    n_refinements : int
        Refinements to run.
    seed : int
        Seeds the operation pattern, the robot and the random strokes.
    use_tracemalloc : bool
        Start tracemalloc once the warm-up is done (slower; see ``--tracemalloc``).

    Returns
    -------
    Soak
        The records.
    """
    out = Soak()
    rng = np.random.default_rng(seed)
    scribbles = np.zeros(session.spatial_shape, np.uint8)
    episode, k, added = 0, 0, 0
    robot_key, robot = (-1, -1), None
    start = time.perf_counter()
    prediction = session.prediction

    def operation(name: str, op: object) -> None:
        nonlocal prediction
        t = time.perf_counter()
        done = op()  # type: ignore[operator]
        prediction = session.prediction
        seconds = time.perf_counter() - t
        out.counts[name if done is not False else f"{name}_noop"] += 1
        if len(out.refinements) > WARMUP and done is not False:
            out.op_seconds.setdefault(name, []).append(seconds)

    def count_warning(message: Warning | str, category: type[Warning], *_: object) -> None:
        out.warnings[f"{category.__name__}: {str(message)[:60]}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = count_warning
        for i in range(1, n_refinements + 1):
            n_classes = session.n_classes
            scribbles[scribbles > n_classes] = 0  # classes taken back by an undo
            target = target_classes(sample, n_classes)
            if robot is None or robot_key != (episode, n_classes):
                robot_key = (episode, n_classes)
                robot = RobotUser(target, n_classes, seed=seed + 1000 * episode)
            k += 1
            scribbles, strokes = robot.interact(prediction, scribbles, k)
            out.robot_strokes += len(strokes)
            if not strokes:
                random_strokes(rng, target, scribbles, RANDOM_STROKES)
                out.random_strokes += RANDOM_STROKES

            refinement = timed_refinement(session, scribbles)
            prediction = session.prediction
            out.refinements.append(refinement)
            out.counts["refinements"] += 1
            out.counts[f"stop_{refinement.stop_reason}"] += 1

            if rng.random() < UNDO_P:
                operation("undo", session.undo)
                if rng.random() < REDO_P:
                    operation("redo", session.redo)
                elif rng.random() < SECOND_UNDO_P:
                    operation("undo", session.undo)
            if i % RESET_EVERY in ADD_CLASS_AT and session.n_classes < 2 + MAX_EXTRA_CLASSES:
                added += 1
                name = f"extra {added}"
                operation("add_class", lambda name=name: session.add_class(name, init_from=1))
            if i % RESET_EVERY == 0:
                operation("reset", session.reset)
                scribbles = np.zeros(session.spatial_shape, np.uint8)
                episode, k = episode + 1, 0

            if i == WARMUP:
                out.rss_start_mb = rss_mb()
                out.rss_start_trimmed_mb = rss_mb() if malloc_trim() else None
                out.history_start_mb = session._history.nbytes / 2**20
                if use_tracemalloc:
                    tracemalloc.start(10)
                    out.tracemalloc_start = tracemalloc.take_snapshot()
            if i % PROGRESS_EVERY == 0 or i == n_refinements:
                rss = rss_mb()
                out.rss_trace_mb.append(round(rss, 1))
                recent = [r.total for r in out.refinements[-PROGRESS_EVERY:]]
                print(
                    f"[soak] {i}/{n_refinements} refinements, {time.perf_counter() - start:.0f} s,"
                    f" last {len(recent)}: median {statistics.median(recent):.3f} s, max "
                    f"{max(recent):.3f} s; RSS {rss:.1f} MB; classes {session.n_classes}; "
                    f"history {len(session.history_labels)} entries",
                    file=sys.stderr,
                    flush=True,
                )
    return out


def tracemalloc_top(start: tracemalloc.Snapshot, n: int = 10) -> list[str]:
    """Return the ``n`` source lines whose live allocations grew most since ``start``."""
    end = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = end.compare_to(start, "lineno")
    return [
        f"{s.traceback[0].filename}:{s.traceback[0].lineno}: {s.size_diff / 2**20:+.2f} MB "
        f"({s.count_diff:+d} blocks)"
        for s in stats[:n]
    ]


def write_trace(path: str, refinements: list[Refinement]) -> None:
    """Write one CSV row per refinement: its index (1-based), timings and outcome.

    Parameters
    ----------
    path : str
        The CSV file.
    refinements : list of Refinement
        All refinements, warm-up included.
    """
    columns = "index,total_s,cpu_s,prepare_s,steps_s,max_step_s,finish_s,iterations,"
    rows = [columns + "stop_reason,n_classes,n_scribbled"]
    for i, r in enumerate(refinements, 1):
        rows.append(
            f"{i},{r.total:.5f},{r.cpu:.5f},{r.prepare:.5f},{sum(r.steps):.5f},"
            f"{max(r.steps, default=0.0):.5f},{r.finish:.5f},{r.iterations},{r.stop_reason},"
            f"{r.n_classes},{r.n_scribbled}"
        )
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--refinements", type=int, default=1000)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--iterations",
        type=int,
        default=RefineConfig().max_iterations,
        help="max_iterations (M) of every refinement (default: RefineConfig's)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--history-budget-mb",
        type=float,
        default=DEFAULT_BUDGET_MB,
        help="the session's undo-history budget (default: the library's)",
    )
    p.add_argument(
        "--trace", help="write one CSV row per refinement (index, timings, steps) to this file"
    )
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="report the lines whose Python/NumPy allocations grew most after the warm-up",
    )
    args = p.parse_args(argv)
    if args.refinements <= WARMUP:
        p.error(f"--refinements must be more than the {WARMUP} warm-up refinements")

    load_before = os.getloadavg()
    wall = time.perf_counter()
    sample = synthetic_fluorescence(
        (args.size, args.size), seed=args.seed, radius=10.0, coverage=0.25, brightfield=False
    )
    config = RefineConfig(max_iterations=args.iterations, seed=args.seed, device=args.device)
    model = load_model("hovernet-fluo")
    t = time.perf_counter()
    session = RefineSession(model, sample.image, config, history_budget_mb=args.history_budget_mb)
    setup_s = time.perf_counter() - t
    rss_setup = rss_mb()

    record = soak(session, sample, args.refinements, args.seed, args.tracemalloc)
    rss_end = rss_mb()
    trimmed = malloc_trim()
    rss_trimmed = rss_mb() if trimmed else None
    top = tracemalloc_top(record.tracemalloc_start) if record.tracemalloc_start else None

    timed = record.refinements[WARMUP:]
    totals = [r.total for r in timed]
    median, slowest, slowest_ratio = ratio(totals)
    per_step = [r.total / r.iterations for r in timed if r.iterations > 0]
    ps_median, ps_slowest, ps_ratio = ratio(per_step)
    steps = [s for r in timed for s in r.steps]
    st_median, st_slowest, st_ratio = ratio(steps)
    fin_median, fin_slowest, fin_ratio = ratio([r.finish for r in timed])
    cpu_median, cpu_slowest, cpu_ratio = ratio([r.cpu for r in timed])
    worst = max(range(len(timed)), key=lambda j: timed[j].total)
    by_classes = {
        str(n): round(statistics.median([r.total for r in timed if r.n_classes == n]), 4)
        for n in sorted({r.n_classes for r in timed})
    }
    history = session._history
    rss_growth = rss_end - record.rss_start_mb
    report = {
        "refinements": record.counts["refinements"],
        "undos": record.counts["undo"],
        "redos": record.counts["redo"],
        "resets": record.counts["reset"],
        "classes_added": record.counts["add_class"],
        "noop_operations": {k: v for k, v in record.counts.items() if k.endswith("_noop")},
        "stop_reasons": {
            k[5:]: v for k, v in sorted(record.counts.items()) if k.startswith("stop_")
        },
        "rss_start_mb": round(record.rss_start_mb, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_growth, 1),
        "rss_start_trimmed_mb": rounded(record.rss_start_trimmed_mb),
        "rss_end_trimmed_mb": rounded(rss_trimmed),
        "rss_growth_trimmed_mb": rounded(
            None
            if rss_trimmed is None or record.rss_start_trimmed_mb is None
            else rss_trimmed - record.rss_start_trimmed_mb
        ),
        "rss_after_setup_mb": round(rss_setup, 1),
        "rss_trace_mb": record.rss_trace_mb,
        "history_entries": len(session.history_labels),
        "history_mb": round(history.nbytes / 2**20, 2),
        "history_growth_mb": round(history.nbytes / 2**20 - record.history_start_mb, 2),
        "history_dropped": history.dropped,
        "history_budget_mb": args.history_budget_mb,
        "timed_refinements": len(timed),
        "warmup_refinements": WARMUP,
        "median_refinement_s": round(median, 4),
        "slowest_refinement_s": round(slowest, 4),
        "slowest_vs_median": round(slowest_ratio, 2),
        "p90_refinement_s": round(float(np.percentile(totals, 90)), 4),
        "p99_refinement_s": round(float(np.percentile(totals, 99)), 4),
        "slowest_refinement": {
            "index": WARMUP + worst + 1,
            "iterations": timed[worst].iterations,
            "n_classes": timed[worst].n_classes,
            "prepare_s": round(timed[worst].prepare, 4),
            "steps_s": round(sum(timed[worst].steps), 4),
            "finish_s": round(timed[worst].finish, 4),
            "cpu_s": round(timed[worst].cpu, 4),
        },
        "median_refinement_s_by_n_classes": by_classes,
        "median_iterations": statistics.median([r.iterations for r in timed]),
        "median_per_step_s": round(ps_median, 5),
        "slowest_per_step_s": round(ps_slowest, 5),
        "slowest_vs_median_per_step": round(ps_ratio, 2),
        "optimiser_steps": len(steps),
        "median_optimiser_step_s": round(st_median, 5),
        "slowest_optimiser_step_s": round(st_slowest, 5),
        "optimiser_step_slowest_vs_median": round(st_ratio, 2),
        "optimiser_step_p99_vs_median": round(float(np.percentile(steps, 99)) / st_median, 2)
        if steps
        else None,
        "median_refinement_cpu_s": round(cpu_median, 4),
        "slowest_refinement_cpu_s": round(cpu_slowest, 4),
        "slowest_vs_median_cpu": round(cpu_ratio, 2),
        "median_finish_s": round(fin_median, 4),
        "slowest_finish_s": round(fin_slowest, 4),
        "finish_slowest_vs_median": round(fin_ratio, 2),
        "operations_s": {
            name: {
                "n": len(secs),
                "median": round(statistics.median(secs), 4),
                "max": round(max(secs), 4),
            }
            for name, secs in sorted(record.op_seconds.items())
        },
        "robot_strokes": record.robot_strokes,
        "random_strokes": record.random_strokes,
        "warnings": dict(record.warnings),
        "goals": {
            "rss_growth_under_100mb": bool(rss_growth < GOAL_RSS_MB),
            "slowest_under_3x_median": bool(slowest_ratio < GOAL_RATIO),
            "slowest_per_step_under_3x_median": bool(ps_ratio < GOAL_RATIO),
            "slowest_optimiser_step_under_3x_median": bool(st_ratio < GOAL_RATIO),
        },
        "size": args.size,
        "seed": args.seed,
        "max_iterations": args.iterations,
        "device": str(session.device),
        "setup_s": round(setup_s, 3),
        "wall_s": round(time.perf_counter() - wall, 1),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if top is not None:
        report["tracemalloc_top"] = top
    if args.trace:
        write_trace(args.trace, record.refinements)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

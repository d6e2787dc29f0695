"""Performance figures: seconds per interaction versus image size, and the core benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.session import RefineSession
from napari_scribble_refine.evaluation.robot import RobotUser
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

INTERACTIONS = 3
"""Robot interactions timed per size."""


def size_scaling(sizes: list[int], threads: int, model, seed: int = 0) -> list[dict]:
    """Time our method on synthetic fluorescence images of growing size.

    For each side s: a synthetic s x s image, the built-in fluorescence model, the session's
    setup (the cached trunk pass) and ``INTERACTIONS`` robot interactions.

    Parameters
    ----------
    sizes : list of int
        Image sides.
    threads : int
        Torch threads (recorded only; the caller sets them).
    model : SegmentationModel
        The greyscale model.
    seed : int
        Seed of the synthetic images and the robot.

    Returns
    -------
    list of dict
        One row per size: ``side``, ``threads``, ``setup_sec``, ``sec`` (per interaction),
        ``sec_median``, ``sec_p90`` (90th percentile of ``sec``, linear interpolation), or
        ``error`` when the size failed (e.g. out of memory).
    """
    rows = []
    for side in sizes:
        row: dict = {"side": side, "threads": threads}
        try:
            sample = synthetic_fluorescence(
                (side, side), seed=seed, radius=10.0, coverage=0.25, brightfield=False
            )
            t0 = time.perf_counter()
            session = RefineSession(model, sample.image, RefineConfig(seed=seed, device="cpu"))
            pred = session.predict()
            row["setup_sec"] = time.perf_counter() - t0
            gt = (sample.types > 0).astype(np.uint8)
            robot = RobotUser(gt, 2, seed=seed)
            scribbles = np.zeros(gt.shape, np.uint8)
            secs = []
            for k in range(1, INTERACTIONS + 1):
                scribbles, strokes = robot.interact((pred > 0).astype(np.uint8), scribbles, k)
                if not strokes:
                    break
                t = time.perf_counter()
                pred = session.run(scribbles.astype(np.int32)).prediction
                secs.append(time.perf_counter() - t)
            row["sec"] = secs
            row["sec_median"] = float(np.median(secs)) if secs else None
            row["sec_p90"] = float(np.percentile(secs, 90)) if secs else None
            del session
        except (MemoryError, RuntimeError) as err:  # torch raises RuntimeError on OOM
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(row)
        print(f"size {side}: {row}", flush=True)
    return rows


def core_benchmark(repo: Path, threads: int, timeout: float = 600.0) -> dict | None:
    """Run ``benchmarks/bench_refine.py`` in a subprocess and return the JSON it prints.

    Returns
    -------
    dict or None
        Its results (the last JSON line of its output), ``{"error": ...}`` if it failed, or
        None if the script is missing.
    """
    script = repo / "benchmarks" / "bench_refine.py"
    if not script.is_file():
        return None
    cmd = [sys.executable, str(script), "--threads", str(threads)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=repo, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "command": " ".join(cmd[1:])}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {
        "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}",
        "command": " ".join(cmd[1:]),
    }

"""Try each bad input of the hardening issue and write what the user sees to docs/reliability.md.

Every row is produced by running the case now: the message is the exception's text (or the
warning's, or the command line's stderr) verbatim, and "nothing lost" is checked by
comparing the caller's arrays, files and session state before and after. Run from the
repository root::

    python scripts/reliability_table.py          # writes docs/reliability.md
    python scripts/reliability_table.py --check  # exits 1 if a row's check failed
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from napari_scribble_refine.cli import main as cli
from napari_scribble_refine.core import RefineConfig, RefineSession, SlideSession, load_model
from napari_scribble_refine.core.models.hovernet import HoVerNet, HoVerNetConfig
from napari_scribble_refine.core.models.hovernet_checkpoint import save_hovernet_safetensors
from napari_scribble_refine.core.scribbles import grow_scribbles
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

ROOT = Path(__file__).resolve().parents[1]
Row = tuple[str, str, str, bool]
"""(the input tried, what the user sees, how nothing was lost, whether that check held)."""


def _raised(call: Callable[[], object]) -> str:
    """Run ``call`` and return ``Type: message`` of what it raised ('' if nothing)."""
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the table reports whatever is raised
        return f"{type(err).__name__}: {err}"
    return ""


def _warned(call: Callable[[], object]) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return " / ".join(f"{w.category.__name__}: {w.message}" for w in caught)


def _cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status = cli(args)
    return status, err.getvalue().strip()


def _session_state(session: RefineSession) -> tuple:
    return (session.history_position, len(session.history_labels), session.prediction.tobytes())


def cases(tmp: Path) -> list[Row]:
    """Run every case; return the table's rows."""
    rows: list[Row] = []
    fluo = load_model("hovernet-fluo")
    sample = synthetic_fluorescence((128, 128), seed=5)
    image = sample.image
    image_before = image.copy()
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[:4] = 1
    scribbles[sample.instances == sample.instances.max()] = 2
    session = RefineSession(fluo, image, RefineConfig(max_iterations=5))
    session.run(scribbles)
    state = _session_state(session)

    def kept(*arrays: tuple[np.ndarray, np.ndarray]) -> bool:
        return all(np.array_equal(a, b) for a, b in arrays)

    # 1. a small model file claiming huge layers
    net = HoVerNet(HoVerNetConfig.small())
    path = save_hovernet_safetensors(net, tmp / "ok.safetensors", ["background", "nucleus"])
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in list(f.keys())[:3]}
    claim = json.loads(meta["config"])
    claim["stem_channels"] = 1_000_000
    claim["block_mid"] = [1_000_000] * len(claim["block_mid"])
    meta["config"] = json.dumps(claim)
    liar = tmp / "liar.safetensors"
    save_file(tensors, str(liar), metadata=meta)
    liar_bytes = liar.read_bytes()
    seen = _raised(lambda: load_model(liar))
    rows.append(
        (
            f"`load_model` on a {liar.stat().st_size:,}-byte `.safetensors` whose metadata "
            "claims 1,000,000-wide layers",
            seen,
            "file unchanged; nothing allocated",
            liar.read_bytes() == liar_bytes,
        )
    )

    # 2. images too large for memory
    huge = np.zeros((32768, 32768), np.uint8)
    huge[:100, :100] = 200
    seen = _raised(lambda: RefineSession(fluo, huge))
    rows.append(("`RefineSession` on a 32,768² image", seen, "image unchanged", huge.sum() > 0))
    big_tif = tmp / "huge.tif"
    tifffile.imwrite(big_tif, shape=(300_000, 300_000), dtype=np.uint8, bigtiff=True)
    status, err = _cli(["predict", str(big_tif), "--out", str(tmp / "r")])
    rows.append(
        (
            "`scribble-refine predict` on a 300,000² TIFF",
            f"exit {status}: {err}",
            "no output written",
            not list(tmp.glob("r_*")),
        )
    )

    # 2b. a slide asked for too much at once
    import dask.array as da

    slide_image = (
        da.zeros((20000, 20000), dtype=np.uint8, chunks=1024)
        + (da.arange(20000, chunks=1024) % 251).astype(np.uint8)[None, :]
    )
    slide = SlideSession(fluo, slide_image)
    seen = _raised(lambda: slide.predict())
    rows.append(
        (
            "`SlideSession.predict()` without a region on a 20,000² dask image",
            seen,
            "no tile computed",
            slide.features.computed == 0,
        )
    )
    far = np.zeros((20000, 20000), np.uint8)
    far[100, 100] = far[19000, 19000] = 2
    seen = _raised(lambda: slide.run(far))
    rows.append(
        (
            "`SlideSession.run` with scribbles 19,000 px apart and no region",
            seen,
            "scribbles unchanged; no tile computed",
            int(far.sum()) == 4 and slide.features.computed == 0,
        )
    )

    # 3. Fortran-order scribbles
    grown_c = grow_scribbles(image, scribbles, threshold=0.05, max_distance=10)
    fortran = np.asfortranarray(scribbles)
    grown_f = grow_scribbles(image, fortran, threshold=0.05, max_distance=10)
    rows.append(
        (
            "scribbles in Fortran order (`x.T`, `scipy.io.loadmat`) to `grow_scribbles`",
            f"(no message) grown pixels: {np.count_nonzero(grown_f):,} in Fortran order, "
            f"{np.count_nonzero(grown_c):,} in C order",
            "same result as C order; scribbles unchanged",
            np.array_equal(grown_c, grown_f) and np.array_equal(fortran, scribbles),
        )
    )

    # 4. infinite settings
    for field in ("learning_rate", "proximity_weight", "keep_weight", "grown_weight"):
        seen = _raised(lambda f=field: session.run(scribbles, config=RefineConfig(**{f: np.inf})))
        rows.append(
            (
                f"`RefineConfig({field}=inf)`",
                seen,
                "session unchanged",
                _session_state(session) == state,
            )
        )
    tifffile.imwrite(tmp / "img.tif", image)
    tifffile.imwrite(tmp / "scr.tif", scribbles)
    status, err = _cli(
        ["refine", str(tmp / "img.tif"), str(tmp / "scr.tif"), "--learning-rate", "inf"]
        + ["--out", str(tmp / "inf")]
    )
    rows.append(
        (
            "`scribble-refine refine ... --learning-rate inf`",
            f"exit {status}: {err}",
            "no output written",
            not list(tmp.glob("inf_*")),
        )
    )

    # 5. layouts
    for shape in ((3, 64, 64), (64, 64, 2), (20, 20, 3)):
        odd = np.random.default_rng(0).random(shape).astype(np.float32)
        odd_before = odd.copy()
        seen = _raised(lambda o=odd: RefineSession(fluo, o))
        rows.append(
            (
                f"an image of shape {shape}, no `rgb=`",
                seen,
                "image unchanged",
                kept((odd, odd_before)),
            )
        )
    he = load_model("hovernet-he")
    rgba = np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8)
    rgba_before = rgba.copy()
    seen = _warned(lambda: RefineSession(he, rgba))
    rows.append(("an RGBA image", seen, "image unchanged", kept((rgba, rgba_before))))
    for scale in (1e300, 1e-300):
        scaled = image.astype(np.float64) * scale
        scaled_before = scaled.copy()
        prediction = RefineSession(fluo, scaled).predict()
        plain = RefineSession(fluo, image).predict()
        rows.append(
            (
                f"a float64 image scaled by {scale:g}",
                f"(no message) the prediction equals the unscaled image's: "
                f"{np.array_equal(prediction, plain)}",
                "image unchanged",
                kept((scaled, scaled_before)) and np.array_equal(prediction, plain),
            )
        )

    # 6. settings of the wrong type, and changing a checked config
    for changes in ({"max_iterations": 2.5}, {"seed": -1}, {"learning_rate": "0.1"}):
        seen = _raised(lambda c=changes: RefineConfig(**c))
        text = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        rows.append((f"`RefineConfig({text})`", seen, "nothing started", True))
    config = RefineConfig()
    seen = _raised(lambda: setattr(config, "learning_rate", 5.0))
    rows.append(
        ("`config.learning_rate = 5.0` on a checked config", seen, "config unchanged",
         config.learning_rate == RefineConfig.learning_rate)
    )  # fmt: skip

    # 7. history over its budget
    small = RefineSession(fluo, image, RefineConfig(max_iterations=2), history_budget_mb=0.02)
    seen = _warned(lambda: [small.run(np.roll(scribbles, k, axis=1)) for k in range(5)])
    can_reset = small.reset()
    rows.append(
        (
            "refinements beyond `history_budget_mb` (0.02 MB)",
            seen.split(" / ")[0] if seen else "(no warning)",
            "newest states and reset kept",
            bool(seen) and can_reset,
        )
    )

    # 8. command line
    status, err = _cli(["predict", str(tmp / "img.tif"), "--out", str(tmp / "no" / "such" / "r")])
    rows.append(
        (
            "`--out` in a folder that does not exist",
            f"exit {status}: {err}",
            "refused before any work",
            not (tmp / "no").exists(),
        )
    )
    data = (tmp / "img.tif").read_bytes()
    (tmp / "cut.tif").write_bytes(data[: len(data) // 3])
    status, err = _cli(["predict", str(tmp / "cut.tif"), "--out", str(tmp / "cut")])
    rows.append(("a truncated TIFF", f"exit {status}: {err}", "no output written",
                 not list(tmp.glob("cut_*"))))  # fmt: skip

    class Buggy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.final = torch.nn.Conv2d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] > 64:
                raise RuntimeError("this model has a bug")
            return self.final(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Buggy()), str(tmp / "buggy.pt"))
    status, err = _cli(
        ["predict", str(tmp / "img.tif"), "--model", str(tmp / "buggy.pt"), "--allow-code"]
        + ["--out", str(tmp / "bug")]
    )
    log = err.split("The details are in ")[-1].split(";")[0]
    rows.append(
        (
            "a TorchScript model whose code fails on the image (an unexpected error)",
            f"exit {status}: {err.replace(log, '/tmp/scribble-refine-<time>-<pid>.log')}",
            "the traceback is in the log",
            Path(log).is_file() and "Traceback" in Path(log).read_text(),
        )
    )
    Path(log).unlink(missing_ok=True)

    # 9. two sessions tuning one model in place
    shared = copy.deepcopy(fluo)
    first = RefineSession(shared, image, copy_model=False)
    seen = _raised(lambda: RefineSession(shared, image, copy_model=False))
    rows.append(
        (
            "a second `RefineSession(model, ..., copy_model=False)` while the first is open",
            seen,
            "the first session unchanged",
            first.can_undo is False and first.history_position == 0,
        )
    )

    # bad scribbles on a refined session
    for name, bad in (
        ("scribbles of another shape", np.ones((64, 64), np.uint8)),
        ("scribbles with a class the model lacks (5)", np.full(image.shape, 5, np.uint8)),
        ("float scribbles with NaN", np.full(image.shape, np.nan)),
    ):
        bad_before = bad.copy()
        seen = _raised(lambda b=bad: session.run(b))
        rows.append(
            (
                name,
                seen,
                "scribbles and session unchanged",
                np.array_equal(bad, bad_before, equal_nan=True)
                and _session_state(session) == state,
            )
        )
    assert np.array_equal(image, image_before)
    return rows


def render(rows: list[Row]) -> str:
    """Return the markdown page of the rows."""
    lines = [
        "# Reliability: bad input and what the user sees",
        "",
        "Each row was run by `python scripts/reliability_table.py` (which writes this page);",
        'the message is verbatim. "Nothing lost" was checked by comparing the caller\'s',
        "arrays, files and the session's history and prediction before and after.",
        "Fuzzed cases: `tests/test_fuzz*.py` (Hypothesis). Soak: `python benchmarks/soak.py`.",
        "",
        "| bad input | what the user sees | nothing lost | held |",
        "|---|---|---|---|",
    ]
    for case, seen, lost, held in rows:
        seen = " ".join(seen.split()).replace("|", "\\|")
        lines.append(f"| {case} | {seen} | {lost} | {'yes' if held else '**NO**'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the cases and write the page (``--check``: only report failures)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 on a failure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [(c, seen.replace(folder, "<tmp>"), *rest) for c, seen, *rest in cases(Path(folder))]
    failed = [r[0] for r in rows if not r[3]]
    if not args.check:
        out = ROOT / "docs" / "reliability.md"
        out.write_text(render(rows))
        print(f"wrote {out} ({len(rows)} rows)")
    for case in failed:
        print(f"FAILED: {case}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line entry points: a scripted demo, batch prediction and scribble refinement.

``scribble-refine demo`` (also ``python -m napari_scribble_refine.cli demo``) runs the main
job end to end on synthetic sample data with the built-in models: predict, let a robot user
scribble on the largest errors, refine, and print Dice and seconds per interaction.
``predict`` and ``refine`` do the same steps on the user's own TIFF files; ``slide`` refines
a whole slide lazily and writes its result tile by tile; ``apply`` predicts many files with
one model (a tuned one too) on dask.distributed workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import tifffile
from tqdm import tqdm

from . import slide_cli
from .core import RefineConfig, RefineResult, RefineSession, load_model
from .core.images import validate_image
from .core.models.base import SegmentationModel
from .core.models.bioimageio_package import is_bioimageio_source
from .core.models.registry import default_model, is_torchscript
from .core.models.saving import check_path, check_target, saved_settings
from .evaluation.metrics import dice, per_class_dice
from .evaluation.robot import RobotUser
from .image_files import read_image
from .instance_files import write_instances
from .synthetic.scenes import synthetic_fluorescence, synthetic_he

DEMO_SEED = 20261126

DEMO_SYNONYMS = {"lymphocyte": "inflammatory", "stromal": "spindle"}
"""Synthetic H&E classes under the names of the built-in H&E model's (CoNSeP's) types."""


def _truth_in_model_classes(
    types: np.ndarray, sample_classes: list[str], model_classes: list[str]
) -> np.ndarray:
    """Renumber a synthetic sample's class map into the model's classes, by name."""
    lut = np.zeros(len(sample_classes), np.int32)
    for i, name in enumerate(sample_classes[1:], start=1):
        wanted = DEMO_SYNONYMS.get(name, name)
        lut[i] = model_classes.index(wanted) if wanted in model_classes else 1
    return lut[types]


"""Seed of the demo images; training uses other seeds, so these images are unseen."""


def _write(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, array, compression="zlib")


def _write_instances(prefix: str, session: RefineSession) -> str:
    """Write the instances as TIFF labels, a CSV of types and GeoJSON; name the files."""
    instances, classes = session.instances()
    files = write_instances(prefix, instances, classes, session.class_names)
    return ", ".join(str(f) for f in files)


class _Progress:
    """Progress bars on stderr (shown on a terminal only, as tqdm decides)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def bar(self, description: str, total: int, unit: str = "step") -> tqdm:
        """Return a bar counting ``total`` pieces of work (``unit`` each)."""
        return tqdm(
            total=total,
            desc=description,
            unit=unit,
            leave=False,
            file=sys.stderr,
            disable=None if self.enabled else True,
        )

    def counter(self, description: str, unit: str = "step") -> Callable[[int, int], None]:
        """Return a ``progress(done, total)`` callback drawing one bar."""
        state: dict[str, tqdm] = {}

        def update(done: int, total: int) -> None:
            if "bar" not in state:
                state["bar"] = self.bar(description, total, unit)
            bar = state["bar"]
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        return update

    def note(self, text: str) -> None:
        """Announce a stage without a count (above the bars, on a terminal)."""
        if self.enabled and sys.stderr.isatty():
            tqdm.write(text, file=sys.stderr)


def run_demo(out: Path, interactions: int = 3, size: int = 512) -> dict:
    """Predict, scribble with a robot user and refine on synthetic samples.

    The samples have larger nuclei than the built-in models were trained on, so their first
    predictions have errors to correct.

    Parameters
    ----------
    out : pathlib.Path
        Folder for the TIFF results (created).
    interactions : int
        Robot interactions per sample.
    size : int
        Side of the square demo images in pixels.

    Returns
    -------
    dict
        Per sample: Dice before and after each interaction and seconds per interaction.
    """
    if size < 64:
        raise ValueError(f"--size must be at least 64 (pixels per side), got {size}")
    if interactions < 0:
        raise ValueError(f"--interactions must be 0 or more, got {interactions}")
    out.mkdir(parents=True, exist_ok=True)
    # Larger nuclei than the models were trained on: a domain shift they get partly wrong,
    # which is where scribble corrections earn their keep.
    samples = {
        "fluorescence": (
            "hovernet-fluo",
            synthetic_fluorescence((size, size), seed=DEMO_SEED, radius=32.0),
        ),
        "he": ("hovernet-he", synthetic_he((size, size), seed=DEMO_SEED, scale=2.0)),
    }
    summary: dict = {}
    for label, (model_name, sample) in samples.items():
        t0 = time.perf_counter()
        session = RefineSession(load_model(model_name), sample.image, RefineConfig(seed=0))
        truth = _truth_in_model_classes(sample.types, sample.class_names, session.class_names)
        prediction = session.predict()
        opened = time.perf_counter() - t0
        n_classes = session.n_classes
        robot = RobotUser(truth, n_classes, seed=0)
        scribbles = np.zeros(truth.shape, np.uint8)
        dices = [dice(prediction > 0, truth > 0)]
        class_dices = [float(np.nanmean(per_class_dice(prediction, truth, n_classes)[1:]))]
        seconds = []
        print(
            f"\n{label}: model {model_name} on a {size}x{size} synthetic image "
            f"(device {session.device}; load + first prediction {opened:.2f} s)"
        )
        print(f"  k=0  foreground Dice {dices[0]:.3f}  mean class Dice {class_dices[0]:.3f}")
        for k in range(1, interactions + 1):
            scribbles, strokes = robot.interact(prediction, scribbles, k)
            t0 = time.perf_counter()
            result = session.run(scribbles)
            seconds.append(time.perf_counter() - t0)
            prediction = result.prediction
            dices.append(dice(prediction > 0, truth > 0))
            class_dices.append(float(np.nanmean(per_class_dice(prediction, truth, n_classes)[1:])))
            print(
                f"  k={k}  foreground Dice {dices[-1]:.3f}  mean class Dice "
                f"{class_dices[-1]:.3f}  {seconds[-1]:.2f} s  ({len(strokes)} strokes, "
                f"{result.iterations} steps, {result.violations} violations left)"
            )
        instances, _ = session.instances()
        stem = out / label
        _write(stem.with_name(f"{label}_image.tif"), sample.image)
        _write(stem.with_name(f"{label}_truth_classes.tif"), truth.astype(np.uint8))
        _write(stem.with_name(f"{label}_scribbles.tif"), scribbles)
        _write(stem.with_name(f"{label}_prediction.tif"), prediction.astype(np.uint8))
        _write(stem.with_name(f"{label}_instances.tif"), instances.astype(np.uint32))
        summary[label] = {
            "model": model_name,
            "dice": [round(d, 4) for d in dices],
            "mean_class_dice": [round(d, 4) for d in class_dices],
            "seconds_per_interaction": [round(s, 3) for s in seconds],
        }
    print("\n" + json.dumps(summary))
    print(f"TIFF results written to {out}/")
    return summary


def _model_for(args: argparse.Namespace, image: np.ndarray) -> SegmentationModel:
    """Load the model the user named, else the built-in one that suits the image."""
    name = args.model
    is_rgb = validate_image(image, rgb=args.rgb).is_rgb
    if name is None:
        name = default_model(is_rgb)
        print(f"model: {name} (chosen for this image; --model picks another)")
    kwargs: dict = {}
    if args.class_names:
        kwargs["class_names"] = [c.strip() for c in args.class_names.split(",")]
    if args.allow_code and is_torchscript(name):
        saved = saved_settings(name)  # a model saved by --save-model knows its settings
        kwargs["head"] = args.head
        kwargs["in_channels"] = args.in_channels or saved.get("in_channels", 3 if is_rgb else 1)
        kwargs["size_multiple"] = args.size_multiple  # None: the file's saved value, else 1
    elif args.allow_code and is_bioimageio_source(name):  # the package gives its channels
        kwargs["head"] = args.head
        if args.in_channels:
            raise ValueError("--in-channels: a bioimage.io package gives its own; leave it out")
    elif args.head or args.in_channels or args.class_names:
        raise ValueError(
            "--head, --in-channels and --class-names apply to TorchScript models and "
            "bioimage.io packages only (with --allow-code); the built-in and HoVer-Net models "
            "know their own"
        )
    model = load_model(name, allow_code=args.allow_code, **kwargs)
    print(model.description)
    return model


def _session(
    args: argparse.Namespace, image: np.ndarray, config: RefineConfig, progress: _Progress
) -> RefineSession:
    model = _model_for(args, image)
    return RefineSession(
        model, image, config, rgb=args.rgb, progress=progress.counter("running the network")
    )


def _check_out(prefix: str) -> None:
    """Refuse an ``--out`` prefix whose folder is missing or not writable, before any work."""
    folder = Path(prefix).parent
    if not folder.is_dir():
        raise ValueError(
            f"--out {prefix}: the folder {folder} does not exist; create it or give another "
            "--out prefix"
        )
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--out {prefix}: the folder {folder} is not writable; give another --out")


def _predict(args: argparse.Namespace, progress: _Progress) -> None:
    _check_out(args.out)
    image = read_image(args.image, "image")
    session = _session(args, image, RefineConfig(device=args.device), progress)
    progress.note("predicting classes ...")
    _write(Path(f"{args.out}_classes.tif"), session.predict().astype(np.uint8))
    progress.note("separating nuclei ...")
    written = _write_instances(args.out, session)
    print(f"classes {session.class_names}; wrote {args.out}_classes.tif, {written}")


def _refine(args: argparse.Namespace, progress: _Progress) -> None:
    _check_out(args.out)
    image = read_image(args.image, "image")
    scribbles = read_image(args.scribbles, "scribbles")
    config = RefineConfig(
        max_iterations=args.iterations,
        learning_rate=args.learning_rate,
        region_growing=not args.no_region_growing,
        device=args.device,
    )
    session = _session(args, image, config, progress)
    if args.save_model:  # refuse before the work, not after it
        try:
            check_target(session.model, args.save_model, overwrite=True)
        except ValueError as err:
            raise ValueError(f"--save-model: {err}") from err
    package = None
    if args.export_bioimageio:
        try:
            package = check_path(args.export_bioimageio, (".zip",), "a bioimage.io package", True)
        except ValueError as err:
            raise ValueError(f"--export-bioimageio: {err}") from err
    result = _run_with_bar(session, scribbles, progress)
    print(result.message)
    _write(Path(f"{args.out}_classes.tif"), result.prediction.astype(np.uint8))
    progress.note("separating nuclei ...")
    print(f"wrote {args.out}_classes.tif, {_write_instances(args.out, session)}")
    if args.save_model:
        saved = session.save_model(args.save_model, overwrite=True)
        print(f"saved the refined model to {saved}")
    if package is not None:
        session.export_bioimageio(package, overwrite=True, license=args.license)
        print(f"exported the refined model as a bioimage.io package: {package}")
    for other in args.apply_to or []:
        target = RefineSession(
            session.model,
            read_image(other, "--apply-to"),
            config,
            rgb=args.rgb,
            progress=progress.counter(f"applying to {Path(other).name}"),
        )
        name = f"{args.out}_{Path(other).stem}_classes.tif"
        _write(Path(name), target.predict().astype(np.uint8))
        print(f"applied the refined model to {other}: {name}")


def _apply(args: argparse.Namespace, progress: _Progress) -> int:
    """Apply one model to many images on dask workers; 3 when some images failed."""
    out = Path(args.out)
    if not out.is_dir():
        what = "is a file, not a folder" if out.exists() else "does not exist"
        raise ValueError(f"--out {args.out}: the folder {what}; create it or give another --out")
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {args.out}: the folder is not writable; give another --out")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be 1 or more, got {args.workers}")
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("--workers sets the local cluster's size; a --scheduler has its own")
    from .batch import apply_model  # dask.distributed loads for this command only

    progress.note(f"applying {args.model} to {len(args.images)} images ...")
    report = apply_model(
        args.model,
        args.images,
        out,
        scheduler=args.scheduler,
        n_workers=args.workers,
        allow_code=args.allow_code,
        rgb=args.rgb,
        device=args.device,
        progress=progress.counter("images", unit="image"),
    )
    print(report.summary())
    if not report.failed:
        return 0
    total = len(args.images)
    print(f"scribble-refine apply: {len(report.failed)} of {total} images failed:", file=sys.stderr)
    for path, reason in report.failed.items():
        print(f"  {path}: {reason}", file=sys.stderr)
    return 3


def _run_with_bar(
    session: RefineSession, scribbles: np.ndarray, progress: _Progress
) -> RefineResult:
    """Refine to the end, with a bar over the optimiser steps."""
    generator = session.refine(scribbles, previews=False)
    with progress.bar("refining", session.config.max_iterations) as bar:
        while True:
            try:
                step = next(generator)
            except StopIteration as stop:
                return stop.value
            bar.update(step.iteration - bar.n)


class _UsageError(ValueError):
    """A command line argparse refuses (its message, without the usage block)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2, through :func:`main`."""

    def error(self, message: str) -> NoReturn:
        """Raise the refusal instead of printing the usage and exiting."""
        raise _UsageError(f"{message} ({self.prog} --help lists the options)")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``scribble-refine``.

    Returns
    -------
    argparse.ArgumentParser
        The parser with sub-commands ``demo``, ``predict``, ``refine``, ``slide`` and
        ``apply``.
    """
    parser = _Parser(prog="scribble-refine", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="scripted refinement on synthetic samples")
    demo.add_argument("--out", default="demo_output", help="folder for the TIFF results")
    demo.add_argument("--interactions", type=int, default=3)
    demo.add_argument("--size", type=int, default=512)

    for name, text in (("predict", "segment an image"), ("refine", "refine with scribbles")):
        p = sub.add_parser(name, help=text)
        p.add_argument("image", help="image TIFF: (Y, X), (Y, X, 3) or (Z, Y, X)")
        if name == "refine":
            p.add_argument("scribbles", help="scribble TIFF: 0 none, 1 background, c+1 class c")
            p.add_argument("--iterations", type=int, default=RefineConfig.max_iterations)
            p.add_argument("--learning-rate", type=float, default=RefineConfig.learning_rate)
            p.add_argument("--no-region-growing", action="store_true")
            p.add_argument(
                "--apply-to", nargs="*", help="more images to predict with the refined model"
            )
            p.add_argument(
                "--export-bioimageio",
                default=None,
                metavar="ZIP",
                help="export the refined built-in model as a bioimage.io package (replacing ZIP)",
            )
            p.add_argument(
                "--license",
                default=None,
                help="SPDX licence of the exported package (needed for hovernet-he)",
            )
            p.add_argument(
                "--save-model",
                default=None,
                metavar="PATH",
                help="save the refined model (replacing PATH): .safetensors for HoVer-Net and "
                "built-in models, .pt for TorchScript; load it again with --model PATH",
            )
        p.add_argument(
            "--model",
            default=None,
            help="built-in name or a checkpoint path (default: hovernet-he for colour "
            "images, hovernet-fluo for grey ones)",
        )
        p.add_argument(
            "--allow-code",
            action="store_true",
            help="allow model files that execute code (TorchScript, bioimage.io packages)",
        )
        p.add_argument(
            "--head",
            default=None,
            help="TorchScript, bioimage.io: parameter-name prefix of the layer(s) to tune "
            "(default: the last layer)",
        )
        p.add_argument(
            "--in-channels",
            type=int,
            default=None,
            help="TorchScript: channels the network takes (default: 3 for colour images, 1)",
        )
        p.add_argument(
            "--class-names",
            default=None,
            help="TorchScript, bioimage.io: comma-separated output classes, background first",
        )
        p.add_argument(
            "--size-multiple",
            type=int,
            default=None,
            help="TorchScript: image sides the network takes are multiples of this",
        )
        p.add_argument(
            "--rgb",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="whether the last axis is colour (default: guess)",
        )
        p.add_argument("--device", default="auto")
        p.add_argument("--out", required=True, help="prefix of the output TIFF files")
        p.add_argument("--no-progress", action="store_true", help="no progress bars on a terminal")
    slide_cli.add_parser(sub)
    ap = sub.add_parser("apply", help="predict many images with one model, on dask workers")
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="TIFF images with distinct names")
    ap.add_argument(
        "--model",
        required=True,
        help="built-in name or a model file, such as a .safetensors written by --save-model",
    )
    ap.add_argument(
        "--out",
        required=True,
        help="existing folder for <name>_classes.tif, _instances.tif, _types.csv, .geojson "
        "and the _complete.json marker (complete outputs are skipped on a re-run)",
    )
    ap.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="a running dask scheduler, e.g. tcp://host:8786 (default: a local cluster)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local workers, one core each (default: one per core)",
    )
    ap.add_argument("--allow-code", action="store_true", help="allow TorchScript model files")
    ap.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--device", default="cpu", help="torch device of every worker (default cpu)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success; 2 on bad input, a file-system error or a missing
        optional package (a one-line message); 1 on an unexpected error (a short message
        naming a log file with the traceback); 3 when ``apply`` finished but some images
        failed (each named on stderr with its reason); 130 when interrupted.
    """
    given = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(given)
    except _UsageError as error:
        command = next((a for a in given if a in ("demo", "predict", "refine", "apply")), "")
        print(f"scribble-refine {command}: {error}".replace(" :", ":"), file=sys.stderr)
        return 2
    progress = _Progress(not getattr(args, "no_progress", True))
    status = 0
    try:
        if args.command == "demo":
            run_demo(Path(args.out), args.interactions, args.size)
        elif args.command == "predict":
            _predict(args, progress)
        elif args.command == "apply":
            status = _apply(args, progress)
        elif args.command == "slide":
            slide_cli.run(args, progress.counter)
        else:
            _refine(args, progress)
    except (ValueError, TypeError, OSError, ImportError) as error:  # ImportError: an extra
        print(f"scribble-refine {args.command}: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scribble-refine {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the last resort: a message and a log
        log = _write_log(argv)
        print(
            f"scribble-refine {args.command}: unexpected error ({type(error).__name__}: "
            f"{_last_line(error)}). The details are in {log}; please report them.",
            file=sys.stderr,
        )
        return 1
    return status


def _one_line(error: BaseException) -> str:
    """Return an error's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def _last_line(error: BaseException) -> str:
    """Return the last line of an error's message (where torch's long errors say what failed)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def _write_log(argv: list[str] | None) -> Path:
    """Write the current exception's traceback to a log file and return its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = Path(tempfile.gettempdir()) / f"scribble-refine-{stamp}-{os.getpid()}.log"
    command = " ".join(sys.argv[:1] + (argv if argv is not None else sys.argv[1:]))
    log.write_text(f"command: {command}\n\n{traceback.format_exc()}")
    return log


if __name__ == "__main__":
    sys.exit(main())

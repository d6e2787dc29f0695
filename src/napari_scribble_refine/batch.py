"""Batch prediction on dask.distributed: one model applied to many TIFF images.

:func:`apply_model` sends one task per image to a dask cluster (a local one by default, or
a running scheduler), each worker loading the model once and writing, for an input
``<stem>.tif``, into the output folder (where inputs share a stem, ``<stem>`` is prefixed with
their folders' names, :func:`output_names`):

* ``<stem>_classes.tif``: the class map (0 = background, c = class c);
* ``<stem>_instances.tif``, ``<stem>_types.csv``, ``<stem>.geojson``: the nuclei, as
  :func:`napari_scribble_refine.instance_files.write_instances` writes them;
* ``<stem>_complete.json``, last: the completion marker, recording the input (size and
  modification time), the model (its SHA-256) and the files.

Every file is written under a temporary name and renamed into place, and the marker comes
last, so a run that is interrupted leaves no output that looks finished: the next run with
the same model skips the images whose marker matches and redoes the others. One image that
fails (unreadable, the wrong shape, ...) is reported and does not stop the rest::

    from napari_scribble_refine.batch import apply_model

    if __name__ == "__main__":  # worker processes re-import the calling script
        report = apply_model("tuned.safetensors", paths, "results/", n_workers=2)
        print(report.summary())
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
import torch
from tqdm import tqdm

from .core import RefineConfig, RefineSession, load_model
from .core.devices import resolve_device
from .core.models.base import SegmentationModel
from .core.models.registry import BUILTIN_MODELS, builtin_weights
from .image_files import read_image
from .instance_files import write_instances

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "MARKER_SUFFIX",
    "OUTPUT_SUFFIXES",
    "BatchReport",
    "apply_model",
    "output_names",
    "output_paths",
]

OUTPUT_SUFFIXES = ("_classes.tif", "_instances.tif", "_types.csv", ".geojson")
"""What follows an input's stem in the names of its outputs."""

MARKER_SUFFIX = "_complete.json"
"""The completion marker's suffix: written after every output is in place."""

CONNECT_TIMEOUT_S = 10
"""Seconds to wait for a running scheduler to answer, and for it to have a worker."""

_MODELS: dict[tuple[str, str, bool, str], SegmentationModel] = {}
"""The models a worker process has loaded, by (source, fingerprint, allow_code, device)."""
_MODELS_KEPT = 4
_MODELS_LOCK = threading.Lock()


@dataclass
class BatchReport:
    """What one :func:`apply_model` run did.

    Attributes
    ----------
    written : list of Path
        Inputs whose outputs this run wrote.
    skipped : list of Path
        Inputs whose outputs were already complete (from the same input and model).
    failed : dict of Path to str
        Inputs that failed, each with a one-line reason.
    seconds : float
        Wall-clock seconds of the run, the cluster's start included.
    out_dir : Path or None
        The output folder.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0
    out_dir: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether every image has its outputs (written now or before)."""
        return not self.failed

    def summary(self) -> str:
        """One line: how many images were written, skipped and failed, and the time.

        Returns
        -------
        str
            For example ``"3 of 4 images written, 0 skipped (already complete), 1 failed
            in 4.2 s; outputs in results"``.
        """
        total = len(self.written) + len(self.skipped) + len(self.failed)
        text = (
            f"{len(self.written)} of {total} image{'' if total == 1 else 's'} written, "
            f"{len(self.skipped)} skipped "
            f"(already complete), {len(self.failed)} failed in {self.seconds:.1f} s"
        )
        return text + (f"; outputs in {self.out_dir}" if self.out_dir is not None else "")


@dataclass(frozen=True)
class _Job:
    """What every task of one run shares (small, sent with each task)."""

    out_dir: str
    model: str
    fingerprint: str
    allow_code: bool
    rgb: bool | None
    device: str


def output_names(paths: Sequence[str | os.PathLike]) -> dict[Path, str]:
    """Name each input's outputs: its stem, with parent folders where stems are shared.

    Images kept one per folder (``00000010/image.tif``, ``00000029/image.tif``) get
    ``00000010_image`` and ``00000029_image``; a stem no other input has stays as it is.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        The inputs (distinct files).

    Returns
    -------
    dict of Path to str
        Input path -> the name its outputs start with (unique, ignoring case).
    """
    files = [Path(p) for p in paths]
    depth = dict.fromkeys(files, 0)

    def name(file: Path) -> str:
        folders = file.parent.parts[len(file.parent.parts) - depth[file] :] if depth[file] else ()
        return "_".join([*folders, file.stem])

    while True:
        groups: dict[str, list[Path]] = {}
        for file in files:
            groups.setdefault(name(file).casefold(), []).append(file)
        shared = [f for group in groups.values() if len(group) > 1 for f in group]
        grow = [f for f in shared if depth[f] < len(f.parent.parts)]
        if not grow:
            return {file: name(file) for file in files}
        for file in grow:
            depth[file] += 1


def output_paths(
    image: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None
) -> list[Path]:
    """Name the files :func:`apply_model` writes for one input, the marker last.

    Parameters
    ----------
    image : str or os.PathLike
        The input TIFF.
    out_dir : str or os.PathLike
        The output folder.
    name : str, optional
        What the outputs' names start with (default: the input's stem; see
        :func:`output_names`).

    Returns
    -------
    list of Path
        ``<name>_classes.tif``, ``<name>_instances.tif``, ``<name>_types.csv``,
        ``<name>.geojson`` and ``<name>_complete.json`` in ``out_dir``.
    """
    stem = name if name is not None else Path(image).stem
    return [Path(out_dir) / f"{stem}{suffix}" for suffix in (*OUTPUT_SUFFIXES, MARKER_SUFFIX)]


def apply_model(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheduler: str | Client | None = None,
    n_workers: int | None = None,
    processes: bool = True,
    allow_code: bool = False,
    rgb: bool | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | bool | None = None,
) -> BatchReport:
    """Predict classes and nuclei of many TIFF images with one model, on dask.distributed.

    Parameters
    ----------
    model : str or os.PathLike
        A built-in model name (:func:`~napari_scribble_refine.available_models`) or a model
        file, such as a ``.safetensors`` written by
        :meth:`~napari_scribble_refine.RefineSession.save_model`. Each worker loads it once.
    inputs : sequence of str or os.PathLike
        The TIFF images (each once); outputs are named by :func:`output_names`.
    out_dir : str or os.PathLike
        An existing, writable folder for the outputs (see the module docstring), shared
        with the workers when they run on other machines.
    scheduler : str or distributed.Client, optional
        The address of a running dask scheduler (``"tcp://host:8786"``) or a client of
        one (left open). Default: a ``LocalCluster`` of ``n_workers`` single-threaded
        workers, closed at the end.
    n_workers : int, optional
        Workers of the local cluster (default: one per CPU core, at most one per image);
        not with ``scheduler``.
    processes : bool
        Local workers are processes (default) rather than threads of this process. With
        processes, call this under ``if __name__ == "__main__":`` in a script. Ignored
        with ``scheduler``.
    allow_code : bool
        Allow model files that execute code (TorchScript, bioimage.io packages).
    rgb : bool, optional
        Whether the images' last axis is colour; None guesses per image.
    device : str
        Torch device of every worker (``"cpu"``, ``"cuda"``, ``"auto"``).
    progress : callable or bool, optional
        ``progress(done, total)`` called as each image finishes (skipped ones first), or
        True for a progress bar on stderr.

    Returns
    -------
    BatchReport
        The images written, skipped and failed (with reasons), and the seconds taken.

    Raises
    ------
    ValueError
        Before any work: no inputs, an input given twice, an input that an output
        would overwrite, a missing or read-only output folder, a model that does not load,
        an unavailable device, ``n_workers`` below 1 or given with a scheduler, or a
        scheduler that does not answer or has no workers.
    FileNotFoundError
        When the model file does not exist.
    """
    start = time.perf_counter()
    out = _check_out_dir(out_dir)
    paths = _check_inputs(inputs, out)
    names = output_names(paths)
    if n_workers is not None and (isinstance(n_workers, bool) or n_workers < 1):
        raise ValueError(f"n_workers must be 1 or more, got {n_workers!r}")
    if n_workers is not None and scheduler is not None:
        raise ValueError("n_workers sets the local cluster's size; a scheduler has its own workers")
    RefineConfig(device=device)  # a device that is not a string is refused here
    if scheduler is None:  # local workers see this machine's devices
        resolve_device(device)
    source = _model_source(model)
    load_model(source, allow_code=allow_code)  # a model that does not load: refused once
    job = _Job(str(out), source, _fingerprint(source), allow_code, rgb, device)

    report = BatchReport(out_dir=out)
    todo = []
    for path in paths:
        (report.skipped if _is_complete(job, path, names[path]) else todo).append(path)
    notify = _notifier(progress)
    notify(len(report.skipped), len(paths))
    threads = torch.get_num_threads()  # tasks set 1 thread; restore it for in-process runs
    try:
        if todo:
            workers = n_workers or min(len(todo), _cpu_count())
            with _connect(scheduler, workers, processes) as client:
                advance = lambda: notify(_done(report), len(paths))  # noqa: E731
                _run(client, job, {path: names[path] for path in todo}, report, advance)
    finally:
        torch.set_num_threads(threads)
        notify(-1, len(paths))  # closes a bar
    report.seconds = time.perf_counter() - start
    return report


def _run(
    client: Client,
    job: _Job,
    todo: dict[Path, str],
    report: BatchReport,
    advance: Callable[[], None],
) -> None:
    """Submit one task per image and record each result as it arrives."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    futures = {
        client.submit(_apply_one, job, str(path), name, key=f"scribble-refine-{token}-{i}"): path
        for i, (path, name) in enumerate(todo.items())
    }
    for future in as_completed(futures):
        path = futures[future]
        try:
            status, reason = future.result()
        except Exception as err:  # noqa: BLE001 - a worker that died: report, go on
            status, reason = "failed", f"its worker failed ({type(err).__name__}: {_line(err)})"
        if status == "written":
            report.written.append(path)
        else:
            report.failed[path] = reason
        advance()


def _done(report: BatchReport) -> int:
    return len(report.written) + len(report.skipped) + len(report.failed)


def _notifier(progress: Callable[[int, int], None] | bool | None) -> Callable[[int, int], None]:
    """Turn the ``progress`` argument into a ``(done, total)`` callback (done -1: finished)."""
    if callable(progress):
        return lambda done, total: None if done < 0 else progress(done, total)
    if not progress:
        return lambda done, total: None
    state: dict[str, tqdm] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc="images", unit="image", leave=False)
        bar = state["bar"]
        if done < 0:
            bar.close()
        else:
            bar.update(done - bar.n)

    return update


@contextlib.contextmanager
def _connect(scheduler: str | Client | None, n_workers: int, processes: bool) -> Iterator[Client]:
    """Yield a client: of the given one, of a running scheduler, or of a new local cluster."""
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError, TypeError) as err:
            raise ValueError(
                f"scheduler {scheduler!r}: no dask scheduler answered ({_line(err)}); start "
                "one (dask scheduler, then dask worker ADDRESS) or leave the scheduler out "
                "for a local cluster"
            ) from None
        with client:
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except TimeoutError:
                raise ValueError(
                    f"scheduler {scheduler!r} has no workers after {CONNECT_TIMEOUT_S} s; "
                    f"start some with: dask worker {scheduler}"
                ) from None
            yield client
        return
    try:
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=None,
        )
    except RuntimeError as err:
        raise RuntimeError(
            f"could not start {n_workers} local dask workers ({_line(err)}). Worker processes "
            "re-import the calling script: call apply_model under "
            "'if __name__ == \"__main__\":', or pass processes=False"
        ) from err
    with cluster, Client(cluster) as client:
        yield client


def _apply_one(job: _Job, path: str, name: str) -> tuple[str, str]:
    """Predict one image and write its outputs (the task); return ``(status, reason)``."""
    try:
        torch.set_num_threads(1)  # one core per worker: n workers use n cores
        file = Path(path)
        record = _input_record(job, file) if file.is_file() else {}
        image = read_image(file, "input")  # a missing file: refused in its words
        t0 = time.perf_counter()
        with RefineSession(
            _worker_model(job), image, RefineConfig(device=job.device), rgb=job.rgb
        ) as session:
            classes = session.predict()
            instances, types = session.instances()
            names = session.class_names
        record.update(
            class_names=names,
            nuclei=int(instances.max(initial=0)),
            seconds=round(time.perf_counter() - t0, 3),
            version=version("napari-scribble-refine"),
        )
        _write_outputs(Path(job.out_dir), name, classes, instances, types, names, record)
    except Exception as err:  # noqa: BLE001 - one image's failure is reported, not raised
        known = isinstance(err, ValueError | OSError | TypeError)
        return "failed", _line(err) if known else f"{type(err).__name__}: {_line(err)}"
    return "written", ""


def _worker_model(job: _Job) -> SegmentationModel:
    """Load the job's model once per worker process (sessions work on copies of it)."""
    key = (job.model, job.fingerprint, job.allow_code, job.device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            while len(_MODELS) >= _MODELS_KEPT:  # a long-lived worker: drop the oldest
                _MODELS.pop(next(iter(_MODELS)))
            _MODELS[key] = load_model(job.model, allow_code=job.allow_code)
        return _MODELS[key]


def _write_outputs(
    out_dir: Path,
    stem: str,
    classes: np.ndarray,
    instances: np.ndarray,
    types: dict[int, int],
    class_names: list[str],
    record: dict[str, Any],
) -> None:
    """Write one image's outputs under temporary names, rename them, then the marker."""
    marker = out_dir / f"{stem}{MARKER_SUFFIX}"
    marker.unlink(missing_ok=True)  # from here on the image counts as unfinished
    _remove(out_dir.glob(f".{glob.escape(stem)}.partial-*"))  # left by an interrupted run
    partial = out_dir / f".{stem}.partial-{uuid.uuid4().hex[:12]}"
    try:
        first = Path(f"{partial}_classes.tif")
        dtype = np.uint8 if len(class_names) <= 256 else np.uint16
        tifffile.imwrite(first, classes.astype(dtype), compression="zlib")
        files = [first, *write_instances(partial, instances, types, class_names)]
        record["files"] = []
        for file in files:
            final = out_dir / (stem + file.name[len(partial.name) :])
            os.replace(file, final)
            record["files"].append(final.name)
        pending = Path(f"{partial}{MARKER_SUFFIX}")
        pending.write_text(json.dumps(record, indent=1))
        os.replace(pending, marker)
    finally:
        _remove(out_dir.glob(f"{glob.escape(partial.name)}*"))


def _remove(files: Iterator[Path]) -> None:
    for file in files:
        file.unlink(missing_ok=True)


def _input_record(job: _Job, path: Path) -> dict[str, Any]:
    """Return what a marker must match for an image's outputs to count as complete."""
    stat = path.stat()
    return {
        "input": str(path),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "model": job.model,
        "model_sha256": job.fingerprint,
        "rgb": job.rgb,
    }


def _is_complete(job: _Job, path: Path, name: str) -> bool:
    """Whether the image's outputs are all there, from this input and this model."""
    try:
        expected = _input_record(job, path)
        record = json.loads((Path(job.out_dir) / f"{name}{MARKER_SUFFIX}").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    same = all(record.get(k) == v for k, v in expected.items() if k != "model")
    return same and all(p.is_file() for p in output_paths(path, job.out_dir, name))


def _check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an output folder that is missing, not a folder or not writable."""
    out = Path(out_dir).expanduser().resolve()
    if not out.exists():
        raise ValueError(
            f"output folder {out} does not exist; create it or give another output folder"
        )
    if not out.is_dir():
        raise ValueError(f"output folder {out} is a file, not a folder; give a folder")
    if not os.access(out, os.W_OK):
        raise ValueError(f"output folder {out} is not writable; give another output folder")
    return out


def _check_inputs(inputs: Sequence[str | os.PathLike] | str | os.PathLike, out: Path) -> list[Path]:
    """Absolute input paths; refuse none, repeated files and inputs outputs would replace."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    paths = [Path(p).expanduser().absolute() for p in inputs]
    if not paths:
        raise ValueError("no input images given; name one or more TIFF files")
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            raise ValueError(f"inputs: {path} is given twice; give each image once")
        seen.add(path.resolve())
    names = output_names(paths)
    outputs = {p.resolve(): path for path in paths for p in output_paths(path, out, names[path])}
    for path in paths:
        owner = outputs.get(path.resolve())
        if owner is not None:
            raise ValueError(
                f"inputs: {path} would be overwritten by the outputs of {owner}; leave it out "
                "or give another output folder"
            )
    return paths


def _model_source(model: str | os.PathLike) -> str:
    """Return a built-in name as given, a file as an absolute path (for remote workers)."""
    if isinstance(model, str) and model in BUILTIN_MODELS:
        return model
    if not isinstance(model, str | os.PathLike):
        raise ValueError(f"model must be a built-in name or a file path, got {model!r}")
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else os.fspath(model)


def _fingerprint(source: str) -> str:
    """SHA-256 of a model's weights (a folder: of its files' names, sizes and times)."""
    digest = hashlib.sha256()
    if source in BUILTIN_MODELS:
        digest.update(builtin_weights(source).read_bytes())
        return digest.hexdigest()
    path = Path(source)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cpu_count() -> int:
    """Cores this process may use (its affinity where the system says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _line(error: BaseException) -> str:
    """Return an error's message on one line (at most 300 characters)."""
    return (" ".join(str(error).split()) or type(error).__name__)[:300]

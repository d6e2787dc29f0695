"""Reading a bioimage.io model package (a folder, its ``.zip`` or its rdf) and its weights.

The description is parsed with ``bioimageio.spec`` (the optional extra ``bioimageio``) with
``perform_io_checks=False``: nothing is downloaded or validated online; files are read from the
package only and remote weights are skipped.

Weights: ``torchscript``, or ``pytorch_state_dict`` with its architecture file (its weights file
must be in the package). Both run code from the package when the model does, so they load only
with ``allow_code=True``; ONNX, Keras and TensorFlow weights are skipped (they cannot be tuned).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import sys
import types
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "RDF_NAMES",
    "TORCH_WEIGHTS",
    "Package",
    "build_architecture",
    "choose_weights",
    "is_bioimageio_source",
    "load_network",
    "parse_description",
]

RDF_NAMES = ("bioimageio.yaml", "rdf.yaml")
"""File names of a package's resource description (also ``*.bioimageio.yaml``)."""

TORCH_WEIGHTS = ("torchscript", "pytorch_state_dict")
"""The weights entries this adapter can run and tune, in the order they are preferred."""

_OTHER_WEIGHTS = (
    "onnx",
    "keras_hdf5",
    "keras_v3",
    "tensorflow_saved_model_bundle",
    "tensorflow_js",
)


def is_bioimageio_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` should be read as a bioimage.io package.

    Parameters
    ----------
    path : str or os.PathLike
        A folder, a ``.yaml`` / ``.yml`` file, or a ``.zip`` holding an rdf at its top level.

    Returns
    -------
    bool
        True for any existing folder (a folder without an rdf is refused later, with a
        message), an existing ``.yaml``/``.yml`` file, or a zip that holds an rdf.
    """
    p = Path(os.fspath(path)).expanduser()
    if p.is_dir():
        return True
    if not p.is_file():
        return False
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return True
    if suffix != ".zip":
        return False
    try:
        with zipfile.ZipFile(p) as archive:
            return _rdf_member(archive.namelist()) is not None
    except (zipfile.BadZipFile, OSError):
        return False


def _rdf_member(names: Sequence[str]) -> str | None:
    top = [n for n in names if "/" not in n.rstrip("/")]
    for wanted in RDF_NAMES:
        if wanted in top:
            return wanted
    return next((n for n in top if n.endswith(".bioimageio.yaml")), None)


class Package:
    """Reads the files of a package: a folder, a zip, or the folder beside an rdf."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: list[str] | None = None
        if path.is_dir():
            self.root = path
            found = [path / n for n in RDF_NAMES if (path / n).is_file()]
            found += sorted(path.glob("*.bioimageio.yaml"))
            if not found:
                raise ValueError(
                    f"{str(path)!r} is a folder without a bioimage.io description: expected "
                    f"{' or '.join(RDF_NAMES)} in it"
                )
            self.source: Path = found[0]
        elif path.suffix.lower() == ".zip":
            self.root = path
            self.source = path
            try:
                with zipfile.ZipFile(path) as archive:
                    self._zip = archive.namelist()
            except (zipfile.BadZipFile, OSError) as err:
                raise ValueError(f"{str(path)!r} is not a readable zip file ({err})") from err
            if _rdf_member(self._zip) is None:
                raise ValueError(
                    f"{str(path)!r} holds no bioimage.io description: expected "
                    f"{' or '.join(RDF_NAMES)} at the top level of the zip"
                )
        else:
            self.root = path.parent
            self.source = path

    def locate(self, source: Any) -> tuple[str, str | None]:
        """Where a file source lies: ``(label, problem)``; problem is None when present."""
        text = str(source)
        if text.startswith(("http://", "https://")):
            return text, "is remote and not fetched: no network access at load"
        if isinstance(source, Path) and source.is_absolute():
            return text, None if source.is_file() else "does not exist"
        rel = getattr(source, "path", text)
        rel = rel.as_posix() if hasattr(rel, "as_posix") else str(rel)
        if self._zip is not None:
            present = rel in self._zip
            return f"{self.path}:{rel}", None if present else "is missing from the zip"
        full = self.root / rel
        return str(full), None if full.is_file() else "is missing from the package"

    def read(self, source: Any) -> bytes:
        """Read a present file source."""
        if isinstance(source, Path) and source.is_absolute():
            return source.read_bytes()
        rel = getattr(source, "path", str(source))
        rel = rel.as_posix() if hasattr(rel, "as_posix") else str(rel)
        if self._zip is not None:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(rel)
        return (self.root / rel).read_bytes()


def parse_description(package: Package) -> Any:
    """Parse the rdf offline; any problem is a ValueError that names the file."""
    try:
        from bioimageio.spec import load_description
    except ImportError as err:
        raise ImportError(
            "Reading bioimage.io packages needs the optional extra 'bioimageio': "
            "pip install 'napari-scribble-refine[bioimageio]'"
        ) from err
    label = str(package.source)
    try:
        descr = load_description(package.source, perform_io_checks=False, format_version="latest")
    except Exception as err:  # noqa: BLE001 - YAML, zip and pydantic raise assorted types
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(
            f"{label!r} is not a readable bioimage.io description ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:400] or first})"
        ) from err
    if type(descr).__name__ == "InvalidDescr":
        errors = [e for detail in descr.validation_summary.details for e in detail.errors]
        shown = "; ".join(
            f"{'.'.join(str(p) for p in e.loc) or 'rdf'}: {' '.join(e.msg.split())[:300]}"
            for e in errors[:3]
        )
        raise ValueError(f"{label!r} is not a valid bioimage.io description: {shown}")
    if getattr(descr, "type", None) != "model":
        raise ValueError(
            f"{label!r} describes a bioimage.io {getattr(descr, 'type', '?')!r}, not a model"
        )
    return descr


# ---------------------------------------------------------------------- weights
def choose_weights(
    descr: Any, package: Package, label: str, wanted: str | None
) -> tuple[str, list[str]]:
    """Pick a present weights entry this adapter can run; notes say why others were skipped."""
    notes: list[str] = []
    usable: list[str] = []
    for fmt in TORCH_WEIGHTS + _OTHER_WEIGHTS:
        entry = getattr(descr.weights, fmt, None)
        if entry is None:
            continue
        if fmt not in TORCH_WEIGHTS:
            notes.append(f"{fmt} (not PyTorch, so it cannot be tuned)")
            continue
        where, problem = package.locate(entry.source)
        if problem is None and fmt == "pytorch_state_dict":
            arch = entry.architecture
            if hasattr(arch, "source"):
                where, problem = package.locate(arch.source)
                problem = problem and f"{problem} (its architecture)"
        if problem is not None:
            notes.append(f"{fmt} ({where!r} {problem})")
            continue
        usable.append(fmt)
    if wanted is not None:
        if wanted not in usable:
            why = next((n for n in notes if n.startswith(wanted + " ")), "no such entry")
            raise ValueError(
                f"{label}: weights={wanted!r} cannot be used ({why}); usable entries: "
                f"{usable or 'none'}"
            )
        return wanted, list(notes)
    if not usable:
        raise ValueError(
            f"{label}: no weights this plugin can load; skipped: {'; '.join(notes) or 'none'}. "
            "Supported: torchscript, or pytorch_state_dict with its architecture file, present "
            "in the package"
        )
    chosen = usable[0]
    notes += [f"{fmt} (also usable: weights={fmt!r})" for fmt in usable[1:]]
    return chosen, notes


def _check_sha(data: bytes, entry: Any, where: str) -> None:
    expected = getattr(entry, "sha256", None)
    if expected is not None and hashlib.sha256(data).hexdigest() != str(expected):
        raise ValueError(
            f"{where!r} does not match the sha256 in the description: the file is damaged or "
            "was replaced"
        )


def build_architecture(entry: Any, package: Package) -> tuple[nn.Module, str]:
    """Build the (untrained) network of a ``pytorch_state_dict`` entry: ``(net, label)``."""
    arch = entry.architecture
    if hasattr(arch, "source"):
        where, _ = package.locate(arch.source)
        code = package.read(arch.source)
        _check_sha(code, arch, where)
        digest = hashlib.sha256(code).hexdigest()[:16]
        module = types.ModuleType(f"_bioimageio_architecture_{digest}")
        module.__file__ = where
        sys.modules[module.__name__] = module
        exec(compile(code, where, "exec"), module.__dict__)  # the user allowed code
    else:
        where = str(arch.import_from)
        module = importlib.import_module(where)
    builder = getattr(module, str(arch.callable), None)
    if builder is None:
        raise ValueError(f"{where!r} defines no {str(arch.callable)!r}")
    label = f"{Path(where).name}:{arch.callable}"
    return builder(**dict(arch.kwargs)), label


def load_network(fmt: str, descr: Any, package: Package) -> nn.Module:
    """Load the network of weights entry ``fmt`` from the package, its sha256 checked."""
    entry = getattr(descr.weights, fmt)
    where, _ = package.locate(entry.source)
    data = package.read(entry.source)
    _check_sha(data, entry, where)
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings():
                # torch >= 2.10 deprecates TorchScript; users were warned already
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError and others
            raise ValueError(f"{where!r} is not a TorchScript file ({err})") from err
    net, label = build_architecture(entry, package)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises assorted types
        raise ValueError(f"{where!r} is not a PyTorch state dict ({err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state, strict=getattr(entry, "strict", True))
    except Exception as err:  # noqa: BLE001 - shapes and key errors
        raise ValueError(
            f"{where!r} does not fit architecture {label!r}: {str(err).splitlines()[0][:300]}"
        ) from err
    return net

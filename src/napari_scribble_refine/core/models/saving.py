"""Tuned models on disk: what each adapter writes, and the settings a saved file carries.

A model is saved in the format its architecture allows, so that :func:`load_model` reads it
back with the same predictions:

* HoVer-Net (built-in models, official checkpoints): the plugin's ``.safetensors`` file
  (:func:`~.hovernet_checkpoint.save_hovernet_safetensors`), architecture in the metadata;
* TorchScript: a TorchScript archive with the adapter's settings (head, classes, input
  channels, normalisation, size multiple) in the extra file :data:`SETTINGS_FILE`;
  ``load_model(path, allow_code=True)`` reads them back;
* any other ``torch.nn.Module``: its architecture is the user's Python code, so the file is
  a ``.safetensors`` state dict with the settings in its metadata (format
  :data:`STATE_DICT_FORMAT`); ``load_model(path, module=net)`` loads it into ``net``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CUSTOM_NORMALISE",
    "SETTINGS_FILE",
    "STATE_DICT_FORMAT",
    "check_path",
    "check_target",
    "read_state_dict",
    "save_state_dict",
    "save_torchscript",
    "saved_settings",
    "tuning_notes",
]

SETTINGS_FILE = "napari_scribble_refine.json"
"""Extra file of a saved TorchScript archive that holds the adapter's settings."""

STATE_DICT_FORMAT = "napari-scribble-refine/state-dict"
"""``format`` metadata entry of a saved ``nn.Module`` state dict."""

CUSTOM_NORMALISE = "custom"
"""Stored in place of a normalisation function, which cannot be saved."""


def _package_version() -> str:
    try:
        return _distribution_version("napari-scribble-refine")
    except PackageNotFoundError:  # running from a source tree
        return "(not installed)"


def tuning_notes(
    model_name: str, image_shape: Sequence[int], steps: Sequence[str]
) -> dict[str, object]:
    """Return what a saved or exported model records about its tuning.

    Parameters
    ----------
    model_name : str
        The model it was tuned from.
    image_shape : sequence of int
        The spatial shape of the image it was tuned on.
    steps : sequence of str
        The history's labels of the changes up to the current state.

    Returns
    -------
    dict
        ``from``, ``by`` (this package and its version), ``image_shape``, ``steps`` and a
        ``note`` to check the model on other images.
    """
    return {
        "from": model_name,
        "by": f"napari-scribble-refine {_package_version()}",
        "image_shape": list(image_shape),
        "steps": list(steps),
        "note": "the head was tuned to one image by its scribbles; check it on others",
    }


def check_target(model: Any, path: str | Path, overwrite: bool) -> Path:
    """Check a file to save ``model`` to, before anything is written (or computed).

    Parameters
    ----------
    model : SegmentationModel
        The model; its ``save_suffixes`` and ``save_format`` say what it writes.
    path : str or Path
        The file.
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    Path
        The path, with ``~`` expanded.

    Raises
    ------
    ValueError
        For a model that cannot be saved, or as :func:`check_path`.
    """
    suffixes = tuple(model.save_suffixes)
    if not suffixes:
        raise ValueError(
            f"{model.name}: a tuned {type(model).__name__} cannot be saved yet; models that "
            "can: HoVer-Net (built-in, checkpoints), TorchScript files, torch.nn.Module"
        )
    return check_path(path, suffixes, model.save_format, overwrite)


def check_path(path: str | Path, suffixes: tuple[str, ...], what: str, overwrite: bool) -> Path:
    """Check a file to write, before anything is written.

    Parameters
    ----------
    path : str or Path
        The file.
    suffixes : tuple of str
        Suffixes the format takes (lower case, with the dot); the first is suggested.
    what : str
        The format, in words.
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    Path
        The path, with ``~`` expanded.

    Raises
    ------
    ValueError
        For another suffix, a missing folder, or an existing file without ``overwrite``.
    """
    target = Path(path).expanduser()
    if target.suffix.lower() not in suffixes:
        raise ValueError(
            f"{str(target)!r}: this model is saved as {what}; give a file name ending in "
            f"{' or '.join(suffixes)} (e.g. {target.with_suffix(suffixes[0]).name!r})"
        )
    if not target.parent.is_dir():
        raise ValueError(
            f"{str(target)!r}: the folder {str(target.parent)!r} does not exist; create it or "
            "save elsewhere"
        )
    if target.exists() and not overwrite:
        raise ValueError(
            f"{str(target)!r} exists; choose another name or pass overwrite=True to replace it"
        )
    return target


def _stored_normalise(normalise: Any) -> str | None:
    return CUSTOM_NORMALISE if callable(normalise) else normalise


def save_torchscript(net: torch.jit.ScriptModule, path: Path, settings: Mapping[str, Any]) -> None:
    """Write a TorchScript network with the adapter's settings as an extra file.

    Parameters
    ----------
    net : torch.jit.ScriptModule
        The (tuned) network.
    path : Path
        Output file.
    settings : mapping
        JSON-serialisable settings; a callable ``normalise`` is stored as
        :data:`CUSTOM_NORMALISE`.
    """
    stored = dict(settings)
    stored["normalise"] = _stored_normalise(stored.get("normalise"))
    torch.jit.save(net, str(path), _extra_files={SETTINGS_FILE: json.dumps(stored)})


def saved_settings(path: str | Path) -> dict[str, Any]:
    """Return the settings a TorchScript file saved by this plugin carries ({} for others).

    Parameters
    ----------
    path : str or Path
        A TorchScript archive (any file: unreadable ones give {}).

    Returns
    -------
    dict
        The settings written by :func:`save_torchscript`.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{SETTINGS_FILE}")]
            if not names:
                return {}
            data = json.loads(archive.read(names[0]).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state_dict(module: nn.Module, path: Path, settings: Mapping[str, Any]) -> None:
    """Write a module's state dict as safetensors with the adapter's settings.

    Parameters
    ----------
    module : torch.nn.Module
        The (tuned) network.
    path : Path
        Output file (``.safetensors``).
    settings : mapping
        JSON-serialisable settings, stored as one metadata entry each.
    """
    from safetensors.torch import save_file

    stored = dict(settings)
    stored["normalise"] = _stored_normalise(stored.get("normalise"))
    header = {"format": STATE_DICT_FORMAT}
    header.update({str(k): json.dumps(v) for k, v in stored.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata=header)


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Read a state dict saved by :func:`save_state_dict`; None for other safetensors files.

    Parameters
    ----------
    path : Path
        A ``.safetensors`` file.

    Returns
    -------
    tuple or None
        ``(tensors, settings)``, or None when the file is not a saved state dict.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != STATE_DICT_FORMAT:
        return None
    settings = {k: json.loads(v) for k, v in metadata.items() if k != "format"}
    return load_file(str(path)), settings

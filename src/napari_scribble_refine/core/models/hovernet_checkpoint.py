"""Load official HoVer-Net checkpoints; save and load the plugin's own HoVer-Nets.

Official files (``vqdang/hover_net`` ``.tar``, TIAToolbox ``.pth``, any ``.pt``) are read with
``torch.load(weights_only=True)`` and normalised as in ``reference/hovernet.md`` c.3: the
``'desc'`` wrapper is unwrapped, a ``module.`` prefix carried by every key is stripped, missing
BatchNorm ``num_batches_tracked`` counters are filled, the mode and type count are inferred
from the weights, and the model is loaded with ``strict=True``. Errors name the missing and
unexpected keys and the inferred configuration.

The plugin's own models are stored as safetensors with their configuration, class names,
input channels and normalisation in the file's metadata.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .hovernet import HoVerNet
from .hovernet_config import HoVerNetConfig

__all__ = [
    "LoadedHoVerNet",
    "infer_hovernet_config",
    "load_hovernet_checkpoint",
    "load_hovernet_safetensors",
    "normalise_hovernet_state_dict",
    "save_hovernet_safetensors",
]

_COUNTER = "num_batches_tracked"
_FORMAT = "napari-scribble-refine/hovernet"
_FORMAT_VERSION = "1"
_RESERVED_METADATA = (
    "format",
    "format_version",
    "config",
    "class_names",
    "in_channels",
    "normalisation",
)
_SHOW = 10

INFER = "infer"
"""Sentinel for :func:`load_hovernet_checkpoint`: take the value from the weights."""


@dataclass
class LoadedHoVerNet:
    """A HoVer-Net and what its file says about it.

    Attributes
    ----------
    model : HoVerNet
        The network, in eval mode, on the CPU.
    config : HoVerNetConfig
        Its architecture.
    class_names : list of str or None
        Class names stored with the weights (None for official files, which carry none).
    normalisation : dict
        How images are mapped to the network's input (see
        :func:`napari_scribble_refine.core.models.hovernet_normalisation.prepare_image`);
        ``{"kind": "uint8"}`` (RGB 0-255) for official files.
    metadata : dict of str to str
        Every other metadata entry of the file (or, for official files, a description of
        the container).
    """

    model: HoVerNet
    config: HoVerNetConfig
    class_names: list[str] | None = None
    normalisation: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    metadata: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- official files
def _listing(keys: list[str], what: str) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} {what}: {shown}{more}"


def _describe(mode: str | None, nr_types: Any) -> str:
    return f"mode={mode!r}, nr_types={nr_types!r}"


def normalise_hovernet_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Unwrap and clean an object read from a HoVer-Net checkpoint (reference c.3 steps 1-2).

    Parameters
    ----------
    obj : Any
        What ``torch.load`` returned: ``{'desc': state_dict, ...}`` (vqdang), a plain state
        dict (TIAToolbox), with or without ``module.`` prefixes.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        A fresh plain dict (no version metadata) with prefixes stripped.
    notes : dict of str to str
        How the container looked (``container``, ``prefix_stripped``, ``counters``).

    Raises
    ------
    ValueError
        When ``obj`` is not a mapping of names to tensors.
    """
    notes: dict[str, str] = {}
    if isinstance(obj, Mapping) and "desc" in obj:
        others = sorted(str(k) for k in obj if k != "desc")
        notes["container"] = "{'desc': ...}" + (f" with {others}" if others else "")
        obj = obj["desc"]
    else:
        notes["container"] = "plain state dict"
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            "expected a state dict of tensors; " + _listing(not_tensors, "entries are not tensors")
        )
    keys = [str(k) for k in obj]
    strip = bool(keys) and all(k.split(".", 1)[0] == "module" for k in keys)
    notes["prefix_stripped"] = "module." if strip else ""
    state = {
        (k.split(".", 1)[1] if strip else k): v for k, v in zip(keys, obj.values(), strict=True)
    }
    n_counters = sum(k.endswith(_COUNTER) for k in state)
    notes["counters"] = "present" if n_counters else "absent"
    return dict(state), notes


def infer_hovernet_config(state_dict: Mapping[str, torch.Tensor]) -> HoVerNetConfig:
    """Infer the official mode and type count from a normalised state dict (c.3 steps 3-4).

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor
        Output of :func:`normalise_hovernet_state_dict`.

    Returns
    -------
    HoVerNetConfig
        ``HoVerNetConfig.official(mode, nr_types)``.

    Raises
    ------
    ValueError
        When the weights are not those of an official HoVer-Net (the message lists the keys
        that were looked for and the first keys found).
    """
    probe = "decoder.np.u3.conva.weight"
    weight = state_dict.get(probe)
    if weight is None or weight.ndim != 4:
        found = list(state_dict)
        raise ValueError(
            f"not a HoVer-Net state dict: key {probe!r} (which tells the mode) is "
            f"{'absent' if weight is None else 'not a 4-D conv weight'}; "
            + _listing(found, "keys found")
        )
    k = int(weight.shape[-1])
    if k not in (3, 5):
        raise ValueError(
            f"not an official HoVer-Net state dict: {probe!r} has kernel size {k} "
            "(3 means mode 'fast', 5 means 'original')"
        )
    mode = "original" if k == 5 else "fast"
    tp = state_dict.get("decoder.tp.u0.conv.weight")
    nr_types = int(tp.shape[0]) if tp is not None else None
    return HoVerNetConfig.official(mode, nr_types)


def _number_kind(dtype: torch.dtype) -> str:
    """``"complex"``, ``"float"``, ``"bool"`` or ``"int"``: what a tensor's numbers are."""
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "bool" if dtype == torch.bool else "int"


def _check_against(
    state_dict: dict[str, torch.Tensor], model: HoVerNet, config: HoVerNetConfig, path: Path
) -> None:
    """Raise a ValueError naming missing/unexpected/mismatched keys, or return silently."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {list(state_dict[k].shape)} (model: {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    # Weights stored as integers, booleans or complex numbers would be cast silently (a
    # damaged header's dtype reinterprets the bytes): the kind of number must match.
    mistyped = [
        f"{k} {state_dict[k].dtype} (model: {v.dtype})"
        for k, v in expected.items()
        if k in state_dict and _number_kind(state_dict[k].dtype) != _number_kind(v.dtype)
    ]
    problems = []
    unpool = state_dict.get("upsample2x.unpool_mat")
    if unpool is None or list(unpool.shape) != [2, 2]:
        problems.append("'upsample2x.unpool_mat' must be present with shape [2, 2]")
    branches = sorted({k.split(".")[1] for k in state_dict if k.startswith("decoder.")})
    extra = [b for b in branches if b not in ("tp", "np", "hv")]
    if extra:
        problems.append(
            f"decoder branches other than tp/np/hv: {extra} (HoVer-Net+ has 'ls'; "
            "it is a different model)"
        )
    if missing:
        problems.append(_listing(missing, "missing keys"))
    if unexpected:
        problems.append(_listing(unexpected, "unexpected keys"))
    if mismatched:
        problems.append(_listing(mismatched, "shape mismatches"))
    if mistyped:
        problems.append(_listing(mistyped, "dtype mismatches"))
    if problems:
        raise ValueError(
            f"{path}: the weights do not fit HoVer-Net ({_describe(config.mode, config.nr_types)}"
            f", inferred from the file unless given): " + "; ".join(problems)
        )


def _unpickler_detail(err: Exception) -> str:
    """Extract the useful part of torch's long weights-only error message."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split())[:300]


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(err)
        if "global" in detail.lower():
            raise ValueError(
                f"{path}: refused to load objects other than tensors and plain containers "
                f"(torch.load with weights_only=True; such files can run code): {detail}"
            ) from err
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another "
            f"format): {detail}"
        ) from err
    except FileNotFoundError:
        raise
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        AttributeError,
        TypeError,
        IndexError,
        KeyError,
    ) as err:
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another "
            f"format): {type(err).__name__}: {_unpickler_detail(err)}"
        ) from err


def load_hovernet_checkpoint(
    path: str | Path,
    mode: str = INFER,
    nr_types: int | None | str = INFER,
) -> LoadedHoVerNet:
    """Load an official HoVer-Net checkpoint (``.tar``, ``.pth``, ``.pt``).

    Parameters
    ----------
    path : str or Path
        The file. Read with ``torch.load(weights_only=True)``: no code is executed.
    mode : {"infer", "fast", "original"}
        Architecture mode; inferred from the decoder kernel size by default.
    nr_types : int, None or "infer"
        Type channels (None = no ``tp`` branch); inferred from the weights by default.

    Returns
    -------
    LoadedHoVerNet
        The model in eval mode and a note on the container in ``metadata``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not a PyTorch file, does not hold a state dict, or its keys or
        shapes do not fit the (inferred) configuration; the message names the path, the
        inferred configuration, and the first missing / unexpected keys with their counts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}")
    try:
        state, notes = normalise_hovernet_state_dict(_torch_load(path))
        inferred = infer_hovernet_config(state)
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: {err}") from err
    config = HoVerNetConfig.official(
        inferred.mode if mode == INFER else mode,
        inferred.nr_types if nr_types == INFER else nr_types,  # type: ignore[arg-type]
    )
    with torch.device("meta"):  # check the weights on a skeleton before allocating a network
        skeleton = HoVerNet(config)
    counters = [k for k in skeleton.state_dict() if k.endswith(_COUNTER)]
    present = [k for k in counters if k in state]
    # counters of BN layers whose weights are missing too are reported as missing keys below
    absent = [k for k in counters if k not in state and k[: -len(_COUNTER)] + "weight" in state]
    if present and absent:
        raise ValueError(
            f"{path}: BatchNorm counters must be all present or all absent "
            f"({_describe(config.mode, config.nr_types)}); "
            + _listing(absent, "missing num_batches_tracked keys")
        )
    if not present:
        for k in counters:
            state[k] = torch.tensor(0, dtype=torch.int64)
    _check_against(state, skeleton, config, path)
    model = HoVerNet(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    notes["mode"] = config.mode
    notes["nr_types"] = str(config.nr_types)
    notes["source"] = str(path)
    return LoadedHoVerNet(
        model=model,
        config=config,
        class_names=None,
        normalisation={"kind": "uint8"},
        metadata=notes,
    )


# --------------------------------------------------------------------------- our models
def save_hovernet_safetensors(
    model: HoVerNet,
    path: str | Path,
    class_names: list[str],
    metadata: Mapping[str, Any] | None = None,
    normalisation: Mapping[str, Any] | None = None,
) -> Path:
    """Save a HoVer-Net as safetensors with its configuration in the metadata.

    Parameters
    ----------
    model : HoVerNet
        The network (any device; saved as contiguous CPU tensors).
    path : str or Path
        Output file (``.safetensors``).
    class_names : list of str
        The classes the adapter shows, index 0 = background.
    metadata : mapping, optional
        Extra entries (training data, seed, version, ...); non-string values are stored as
        JSON. A ``normalisation`` entry here is used when ``normalisation`` is None.
    normalisation : mapping, optional
        How images are mapped to the network input, e.g.
        ``{"kind": "percentile", "low": 1.0, "high": 99.8}``; default ``{"kind": "none"}``.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        When the metadata uses a reserved name or ``class_names`` is empty.
    """
    from safetensors.torch import save_file

    extra = dict(metadata or {})
    if normalisation is None:
        normalisation = extra.pop("normalisation", None) or {"kind": "none"}
    else:
        extra.pop("normalisation", None)
    clash = sorted(set(extra) & set(_RESERVED_METADATA))
    if clash:
        raise ValueError(f"metadata names {clash} are reserved ({list(_RESERVED_METADATA)})")
    if not class_names:
        raise ValueError("class_names must not be empty (index 0 = background)")
    header = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "config": model.config.to_json(),
        "class_names": json.dumps(list(class_names)),
        "in_channels": str(model.config.in_channels),
        "normalisation": json.dumps(dict(normalisation), sort_keys=True),
    }
    for key, value in extra.items():
        header[str(key)] = value if isinstance(value, str) else json.dumps(value)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header)
    return path


def load_hovernet_safetensors(path: str | Path) -> LoadedHoVerNet:
    """Load a HoVer-Net saved by :func:`save_hovernet_safetensors`.

    Parameters
    ----------
    path : str or Path
        The ``.safetensors`` file.

    Returns
    -------
    LoadedHoVerNet
        The model (eval mode, CPU), its config, class names, normalisation and the other
        metadata entries.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not a safetensors file written by this plugin or its weights do not
        fit the stored configuration.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    if header.get("format") != _FORMAT:
        raise ValueError(
            f"{path}: not a napari-scribble-refine HoVer-Net file (metadata 'format' is "
            f"{header.get('format')!r}, expected {_FORMAT!r})"
        )
    try:
        config = HoVerNetConfig.from_dict(json.loads(header["config"]))
        class_names = list(json.loads(header["class_names"]))
        normalisation = dict(json.loads(header.get("normalisation", '{"kind": "none"}')))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: broken metadata: {err}") from err
    # Every residual or dense unit has weights: a config claiming more units than the file
    # has tensors is refused before building even the skeleton (millions of modules).
    units = sum(config.block_units) + sum(config.dense_units) * len(config.branches)
    if units > len(tensors):
        raise ValueError(
            f"{path}: the weights do not fit HoVer-Net: the metadata's config has {units} "
            f"residual and dense units, but the file holds only {len(tensors)} tensors"
        )
    # Shapes first, on the meta device (no memory): the header's config is only a claim, and
    # a tiny file claiming wide layers must not make us allocate them.
    with torch.device("meta"):
        skeleton = HoVerNet(config)
    _check_against(tensors, skeleton, config, path)
    model = HoVerNet(config)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    extra = {k: v for k, v in header.items() if k not in _RESERVED_METADATA}
    return LoadedHoVerNet(
        model=model,
        config=config,
        class_names=class_names,
        normalisation=normalisation,
        metadata=extra,
    )

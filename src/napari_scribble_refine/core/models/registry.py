"""Find and load segmentation models by name or by file.

Built-in names load weights shipped inside the installed package (no network access).
Files are recognised by their content and extension:

* ``.safetensors`` written by this plugin: HoVer-Net weights with their configuration, or
  the state dict of a tuned ``nn.Module`` (loaded into ``module=``, see :mod:`.saving`);
* ``.tar`` / ``.pth`` / ``.pt`` official HoVer-Net checkpoints (vqdang or TIAToolbox),
  read with ``torch.load(weights_only=True)``;
* TorchScript archives, which contain code that runs when the model does: loaded only
  with ``allow_code=True``.
"""

from __future__ import annotations

import os
import zipfile
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import SegmentationModel
from .saving import CUSTOM_NORMALISE

__all__ = [
    "BUILTIN_MODELS",
    "available_models",
    "builtin_weights",
    "default_model",
    "load_model",
]

BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "hovernet-fluo": (
        "hovernet-fluo.safetensors",
        "Small HoVer-Net (0.9 M parameters) for greyscale nuclei: fluorescence and "
        "brightfield grey; classes background/nucleus; trained on DSB2018 (real, CC0) after "
        "synthetic pre-training.",
    ),
    "hovernet-he": (
        "hovernet-he.safetensors",
        "Small HoVer-Net (1.1 M parameters) for H&E nuclei with CoNSeP's types other, "
        "inflammatory, epithelial and spindle; trained on CoNSeP (research use only) and "
        "DSB2018 histology after synthetic pre-training.",
    ),
}
"""Registry name -> (weights file inside ``napari_scribble_refine/weights``, description)."""

CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".ckpt", ".bin")
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")


def available_models() -> dict[str, str]:
    """List the built-in model names with a one-line description each.

    Returns
    -------
    dict
        ``{name: description}``.
    """
    return {name: description for name, (_, description) in BUILTIN_MODELS.items()}


def default_model(rgb: bool) -> str:
    """Name the built-in model for an image: H&E for colour images, greyscale otherwise.

    Parameters
    ----------
    rgb : bool
        Whether the image is colour.

    Returns
    -------
    str
        A key of :data:`BUILTIN_MODELS`.
    """
    return "hovernet-he" if rgb else "hovernet-fluo"


def builtin_weights(name: str):
    """Locate the packaged weights file of a built-in model.

    Parameters
    ----------
    name : str
        A key of :data:`BUILTIN_MODELS`.

    Returns
    -------
    importlib.resources.abc.Traversable
        The resource (use :func:`importlib.resources.as_file` for a real path).

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(_unknown_message(name))
    return files("napari_scribble_refine") / "weights" / BUILTIN_MODELS[name][0]


def _unknown_message(name: str) -> str:
    names = ", ".join(repr(n) for n in BUILTIN_MODELS)
    return (
        f"Unknown model {name!r}. Built-in models: {names}; or give the path of a "
        f".safetensors file, an official HoVer-Net checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
        f" or, with allow_code=True, a TorchScript file."
    )


def _looks_like_path(text: str) -> bool:
    return bool(Path(text).suffix) or os.sep in text or "/" in text or Path(text).exists()


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether a file is a TorchScript archive (a zip holding serialised code).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    bool
        True for archives written by ``torch.jit.save``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # noqa: BLE001 - zipfile raises assorted types for damaged files
        return False
    return any("/code/" in n or n.startswith("code/") for n in names) and any(
        n.endswith("constants.pkl") for n in names
    )


def load_model(
    name_or_path: str | os.PathLike, *, allow_code: bool = False, **kwargs: Any
) -> SegmentationModel:
    """Load a segmentation model by registry name or from a file.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A name from :func:`available_models` or the path of a weights file.
    allow_code : bool
        Allow formats that execute code (TorchScript). Off by default.
    **kwargs
        Passed to the adapter (for TorchScript, e.g. ``head=`` parameter-name prefixes,
        ``class_names=``, ``in_channels=``). For the state dict of a tuned
        ``nn.Module`` (:meth:`RefineSession.save_model`), ``module=`` is the network built as
        before, which receives the weights.

    Returns
    -------
    SegmentationModel
        The model, on the CPU, in eval mode.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid names), a file in an unsupported
        or unreadable format, weights that do not fit the architecture, or a TorchScript
        file without ``allow_code=True``.
    FileNotFoundError
        When a path is given and the file does not exist.
    """
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and text in BUILTIN_MODELS:
        resource = builtin_weights(text)
        if not resource.is_file():
            raise FileNotFoundError(
                f"The weights of built-in model {text!r} are missing from the installed "
                f"package ({resource}); reinstall napari-scribble-refine."
            )
        with as_file(resource) as path:
            return _load_safetensors(path, name=text, **kwargs)
    # --- bioimage.io packages: a folder, a .zip or an rdf .yaml (see bioimageio.py) ---
    from .bioimageio import BioImageIOModel
    from .bioimageio_package import is_bioimageio_source

    if is_bioimageio_source(text):
        return BioImageIOModel(text, allow_code=allow_code, **kwargs)
    # --- end bioimage.io ---
    if not _looks_like_path(text):
        raise ValueError(_unknown_message(text))
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Model file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path, name=path.name, **kwargs)
    if suffix in TORCHSCRIPT_SUFFIXES or is_torchscript(path):
        if not allow_code:
            raise ValueError(
                f"{str(path)!r} is a TorchScript file: TorchScript contains code that runs "
                "when the model does. Load it only if you trust its source, with "
                "load_model(path, allow_code=True, head=...)."
            )
        from .torchscript import TorchScriptModel

        return TorchScriptModel(path, **kwargs)
    if suffix in CHECKPOINT_SUFFIXES:
        return _load_checkpoint(path, **kwargs)
    raise ValueError(
        f"Cannot load {str(path)!r}: unsupported file type {suffix!r}. Supported: "
        f".safetensors, {', '.join(CHECKPOINT_SUFFIXES)} (HoVer-Net checkpoints) and, with "
        f"allow_code=True, TorchScript ({', '.join(TORCHSCRIPT_SUFFIXES)})."
    )


def _load_safetensors(path: Path, name: str, **kwargs: Any) -> SegmentationModel:
    from .hovernet_adapter import HoVerNetModel
    from .hovernet_checkpoint import load_hovernet_safetensors
    from .saving import read_state_dict

    try:
        state = read_state_dict(path)
    except Exception:  # noqa: BLE001 - not readable as safetensors: the HoVer-Net path says why
        state = None
    if state is not None:
        return _load_state_dict(path, *state, **kwargs)
    if "module" in kwargs:
        raise ValueError(
            f"{str(path)!r} is not a state dict saved from a tuned torch.nn.Module; load it "
            "without module="
        )
    try:
        loaded = load_hovernet_safetensors(path)
    except FileNotFoundError:
        raise
    except ValueError as err:
        raise ValueError(f"Cannot load model {name!r}: {err}") from err
    except Exception as err:  # safetensors and torch raise assorted types
        raise ValueError(
            f"Cannot load model {name!r}: {str(path)!r} is not a valid napari-scribble-refine "
            f"HoVer-Net .safetensors file ({type(err).__name__}: {err})"
        ) from err
    kwargs.setdefault("name", name)
    return _adapter(HoVerNetModel, loaded, name, kwargs)


def _load_state_dict(
    path: Path,
    tensors: dict[str, torch.Tensor],
    settings: dict[str, Any],
    module: nn.Module | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Load a tuned ``nn.Module``'s saved state dict into ``module`` (built as before)."""
    from .module import TorchModuleModel

    built = settings.get("module", "the network")
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"{str(path)!r} holds the weights of a tuned {built}, whose architecture is Python "
            f"code: build the network as before and pass it, load_model(path, module=net)"
        )
    own = module.state_dict()
    for key, value in tensors.items():  # a final layer grown by add_class
        if key in own and own[key].shape != value.shape and own[key].shape[1:] == value.shape[1:]:
            owner_name, _, attr = key.rpartition(".")
            owner = module.get_submodule(owner_name)
            setattr(owner, attr, nn.Parameter(torch.empty_like(value), requires_grad=False))
            if attr == "weight" and hasattr(owner, "out_channels"):
                owner.out_channels = value.shape[0]
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{str(path)!r} does not fit the {type(module).__name__} given (saved from a "
            f"{built}): {str(err).splitlines()[0]}"
        ) from err
    if settings.get("normalise") == CUSTOM_NORMALISE and "normalise" not in kwargs:
        raise ValueError(
            f"{str(path)!r} was tuned with a normalisation function of its own, which cannot "
            "be saved; pass the same function as normalise="
        )
    options = {
        key: settings[key]
        for key in ("class_names", "in_channels", "head", "normalise", "size_multiple",
                    "trunk_halo", "name")
        if key in settings
    }  # fmt: skip
    options.update(kwargs)
    return TorchModuleModel(module, **options)


def _load_checkpoint(path: Path, **kwargs: Any) -> SegmentationModel:
    from .hovernet_adapter import HoVerNetModel
    from .hovernet_checkpoint import load_hovernet_checkpoint

    try:
        loaded = load_hovernet_checkpoint(path)
    except FileNotFoundError:
        raise
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(
            f"{str(path)!r} is not a HoVer-Net checkpoint this plugin can read "
            f"({type(err).__name__}: {err})"
        ) from err
    kwargs.setdefault("name", path.name)
    return _adapter(HoVerNetModel, loaded, path.name, kwargs)


def _adapter(cls: type, loaded: Any, name: str, kwargs: dict[str, Any]) -> SegmentationModel:
    """Wrap a loaded network; a ValueError (e.g. the file's normalisation) names the file."""
    try:
        return cls(loaded, **kwargs)
    except ValueError as err:
        if name in str(err):
            raise
        raise ValueError(f"Cannot load model {name!r}: {err}") from err

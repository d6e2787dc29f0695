"""TorchScript files: opaque networks tuned through parameters chosen by name prefix.

A TorchScript archive cannot be split into trunk and head, so every refinement step runs
the whole forward; gradients reach only the parameters whose names start with one of the
given prefixes (everything else has ``requires_grad=False``, so backward stops there).

TorchScript archives contain code that runs when the model does: load only files you trust.
Loading happens only when the user asks for this adapter, and emits a :class:`UserWarning`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._prepare import (
    Normaliser,
    check_normaliser,
    input_batch,
    normalise_array,
    normaliser_name,
    pad_to_multiple,
)
from .added_classes import check_new_class, format_names
from .base import BatchedFeatures, Features, HeadState, SegmentationModel
from .saving import CUSTOM_NORMALISE, save_torchscript, saved_settings

__all__ = [
    "ParameterView",
    "PrefixedHead",
    "TorchScriptModel",
    "check_prefixes",
    "owner_of",
    "prefixed_parameters",
    "restore_parameters",
]

_PROBE_SIDE = 64


def _matches(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def owner_of(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    """Find the module holding attribute ``dotted``; return it and the attribute name."""
    *path, attr = dotted.split(".")
    owner = root
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


def _prefixes(param_names: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for full in param_names:
        parts = full.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix not in seen:
                seen.append(prefix)
    return seen


def check_prefixes(head: str | Sequence[str], names: Sequence[str], label: str) -> list[str]:
    """Return the head's parameter-name prefix(es) as a list; each must match a name."""
    prefixes = [head] if isinstance(head, str) else list(head)
    if not prefixes:
        raise ValueError("head must give at least one parameter-name prefix")
    unmatched = [p for p in prefixes if not any(_matches(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"head prefix(es) {unmatched} match no parameter of {label}; available "
            f"prefixes: {format_names(_prefixes(names))}"
        )
    return prefixes


def prefixed_parameters(root: nn.Module, prefixes: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """Return the ``(name, parameter)`` pairs of ``root`` under one of ``prefixes``."""
    return [
        (n, p)
        for n, p in root.named_parameters()
        if any(_matches(n, prefix) for prefix in prefixes)
    ]


def restore_parameters(root: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy snapshot tensors into ``root``'s parameters; replace those whose shape differs."""
    for full_name, value in weights.items():
        owner, attr = owner_of(root, full_name)
        current = getattr(owner, attr)
        if current.shape != value.shape:
            setattr(
                owner,
                attr,
                nn.Parameter(value.clone().to(current.device), requires_grad=False),
            )
        else:
            with torch.no_grad():
                current.copy_(value)


class ParameterView(nn.Module):
    """Lists given tensors as parameters (ScriptModules hand out plain tensors)."""

    def __init__(self, items: list[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self._items = items

    def named_parameters(  # type: ignore[override]
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for the viewed parameters."""
        for name, p in self._items:
            yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[torch.Tensor]:  # type: ignore[override]
        """Yield the viewed parameters."""
        for _, p in self._items:
            yield p


class PrefixedHead:
    """The head protocol of adapters whose head is named by parameter-name prefixes.

    The adapter sets ``_prefixes`` and ``class_names`` and gives ``_head_root``, the module
    the prefixes are relative to.
    """

    _prefixes: list[str]
    class_names: list[str]

    @property
    def _head_root(self) -> nn.Module:
        raise NotImplementedError

    def _head_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return prefixed_parameters(self._head_root, self._prefixes)

    @property
    def head_names(self) -> list[str]:
        """Full names of the tuned parameters."""
        return [n for n, _ in self._head_named_parameters()]

    @property
    def head_module(self) -> nn.Module:
        """A view of the head's parameters (the network's own tensors, not copies)."""
        return ParameterView(self._head_named_parameters())

    def head_state(self) -> HeadState:
        """Snapshot of the head's parameters and the class names.

        Returns
        -------
        HeadState
            Detached copies keyed by full parameter name.
        """
        weights = {n: p.detach().clone() for n, p in self._head_named_parameters()}
        return {"weights": weights, "class_names": list(self.class_names)}

    def load_head_state(self, state: HeadState) -> None:
        """Restore a snapshot exactly (shapes changed by ``add_class`` included).

        Parameters
        ----------
        state : HeadState
            A snapshot from :meth:`head_state`.
        """
        restore_parameters(self._head_root, state["weights"])
        self.class_names = list(state["class_names"])


class TorchScriptModel(PrefixedHead, BatchedFeatures, SegmentationModel):
    """A TorchScript segmentation network loaded from a file.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.jit.save``.
    head : str or sequence of str, optional
        Parameter-name prefix(es) of the head, e.g. ``"decoder.final"`` matches
        ``decoder.final.weight`` and ``decoder.final.bias``. Default: the file's saved head
        (a model saved by this plugin), else the module that owns the network's last
        parameter (usually its final convolution), named in a warning.
    class_names : sequence of str, optional
        Output classes, background first. Default: the file's saved classes, else
        ``"background"``, ``"class 1"``, ... for as many channels as the network outputs.
    in_channels : int, optional
        Channels the network takes (default: the file's saved value, else 1).
    normalise : str, callable or None
        As for :class:`~napari_scribble_refine.core.models.module.TorchModuleModel`;
        ``"auto"`` (the default) takes the file's saved setting, else ``"percentile"``.
    size_multiple : int, optional
        H and W the network accepts must be multiples of this; inputs are reflect-padded
        (default: the file's saved value, else 1).
    name : str, optional
        Name shown to users; defaults to the file name.

    Warns
    -----
    UserWarning
        Always: TorchScript files can execute code. Also when ``head`` is not given, naming
        the layer chosen.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not an existing file.
    ValueError
        If the file is not TorchScript, the network's output on a probe input is not class
        logits [N, C >= 2, H, W] of the input's size, or a prefix matches no parameter.
    """

    trunk_is_cached = False
    head_is_pointwise = False
    head_halo = 0

    def __init__(
        self,
        path: str | os.PathLike,
        head: str | Sequence[str] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        in_channels: int | None = None,
        normalise: Normaliser = "auto",
        size_multiple: int | None = None,
        name: str | None = None,
    ) -> None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"TorchScript model file {str(file)!r} does not exist")
        saved = saved_settings(file)
        head = head if head is not None else saved.get("head")
        class_names = class_names if class_names is not None else saved.get("class_names")
        in_channels = in_channels if in_channels is not None else saved.get("in_channels", 1)
        size_multiple = (
            size_multiple if size_multiple is not None else saved.get("size_multiple", 1)
        )
        if isinstance(normalise, str) and normalise == "auto":
            normalise = saved.get("normalise", "percentile")
        if normalise == CUSTOM_NORMALISE:
            raise ValueError(
                f"{str(file)!r} was tuned with a normalisation function of its own, which "
                "cannot be saved; pass the same function as normalise="
            )
        warnings.warn(
            f"Loading TorchScript file {str(file)!r}: TorchScript files can execute code; "
            "only load files from sources you trust.",
            UserWarning,
            stacklevel=2,
        )
        try:
            with warnings.catch_warnings():
                # torch >= 2.10 deprecates TorchScript; users were warned above already
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(file), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError and others
            raise ValueError(
                f"{str(file)!r} is not a TorchScript file: expected an archive written by "
                f"torch.jit.save (torch.jit.script / torch.jit.trace) ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from err
        if size_multiple < 1:
            raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
        self.name = name or file.name
        self.path = file
        self.in_channels = int(in_channels)
        self.size_multiple = int(size_multiple)
        self.normalise = check_normaliser(normalise)
        self._net = net.eval()
        for p in self._net.parameters():
            p.requires_grad_(False)

        n_out = self._probe()
        if class_names is None:
            self.class_names = ["background"] + [f"class {i}" for i in range(1, n_out)]
        else:
            self.class_names = [str(c) for c in class_names]
            if len(self.class_names) != n_out:
                raise ValueError(
                    f"{self.name} outputs {n_out} classes but {len(self.class_names)} class "
                    f"names were given ({self.class_names})"
                )

        names = [n for n, _ in self._net.named_parameters()]
        if head is None:
            if not names:
                raise ValueError(f"{self.name} has no parameters to tune")
            head = names[-1].rpartition(".")[0] or names[-1]
            warnings.warn(
                f"{self.name}: no head given; tuning {head!r} (the layer that owns the "
                f"network's last parameter). Choose another with head=; prefixes: "
                f"{format_names(_prefixes(names))}",
                UserWarning,
                stacklevel=2,
            )
        self._prefixes = check_prefixes(head, names, self.name)
        self._from_file = ", settings saved with it" if saved else ""

    @property
    def description(self) -> str:  # type: ignore[override]
        """One sentence saying what was loaded: file, head and classes."""
        return (
            f"Loaded TorchScript file {str(self.path)!r}{self._from_file}: head "
            f"{format_names(self._prefixes)} (whole forward each step), classes "
            f"{', '.join(self.class_names)}, {self.in_channels}-channel input, normalisation "
            f"{normaliser_name(self.normalise)}, inputs padded to multiples of "
            f"{self.size_multiple}."
        )

    # ------------------------------------------------------------------ set-up
    def _probe(self) -> int:
        side = math.ceil(_PROBE_SIDE / self.size_multiple) * self.size_multiple
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((1, self.in_channels, side, side), generator=gen)
        try:
            with torch.no_grad():
                out = self._net(x)
        except Exception as err:  # noqa: BLE001 - report any failure of the file's code
            raise ValueError(
                f"{self.name} failed on a probe input of shape {tuple(x.shape)} "
                f"(in_channels={self.in_channels}, size_multiple={self.size_multiple}): "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"{self.name} must return one tensor of class logits [N, C, H, W], "
                f"got {type(out).__name__}"
            )
        if out.ndim != 4 or out.shape[1] < 2 or out.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"{self.name} has no class axis: expected logits [N, C>=2, H, W] with the "
                f"input's H and W; a probe input {tuple(x.shape)} gave {tuple(out.shape)}"
            )
        return int(out.shape[1])

    # ------------------------------------------------------------------ protocol
    @property
    def network(self) -> nn.Module:
        """The loaded ``ScriptModule``."""
        return self._net

    @property
    def _head_root(self) -> nn.Module:
        return self._net

    def normalise_image(self, image: np.ndarray) -> np.ndarray:
        """Scale a whole image or stack to the network's input range.

        Parameters
        ----------
        image : numpy.ndarray
            (Y, X), (Y, X, C) or (Z, Y, X); not modified.

        Returns
        -------
        numpy.ndarray
            float32, same shape.
        """
        return normalise_array(np.asarray(image), self.normalise)

    def features_batch(self, images: Sequence[np.ndarray], *, normalised: bool = False) -> Features:
        """Prepare several 2D images of one size as one batch.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            Images of equal shape.
        normalised : bool
            True when the images have already been through :meth:`normalise_image`.

        Returns
        -------
        Features
            ``{"input": [B, C, Y, X]}``.
        """
        normalise = None if normalised else self.normalise_image
        return {"input": input_batch(images, normalise, self.in_channels, self.device)}

    def head(self, features: Features) -> torch.Tensor:
        """Full forward on prepared input; gradients reach the head parameters only.

        Parameters
        ----------
        features : Features
            ``{"input": [N, C, h, w]}``.

        Returns
        -------
        torch.Tensor
            Logits [N, n_classes, h, w].
        """
        x = features["input"]
        h, w = x.shape[-2:]
        return self._net(pad_to_multiple(x, self.size_multiple))[..., :h, :w]

    save_suffixes = (".ts", ".torchscript", ".jit", ".pt")
    save_format = "a TorchScript file with the head, classes and input settings"

    def save(self, path: Path, metadata: Mapping[str, Any]) -> None:
        """Write the network as TorchScript with this adapter's settings (see :mod:`.saving`).

        Parameters
        ----------
        path : Path
            Output file.
        metadata : mapping
            Notes stored with the settings.
        """
        settings = {
            "head": self._prefixes,
            "class_names": self.class_names,
            "in_channels": self.in_channels,
            "normalise": self.normalise,
            "size_multiple": self.size_multiple,
            **metadata,
        }
        save_torchscript(self._net, path, settings)

    def add_class(self, name: str, init_from: int) -> None:
        """Grow the final layer (the last head weight with one row per class) by one class.

        Parameters
        ----------
        name : str
            Name of the new class.
        init_from : int
            Index of the class whose weights initialise the new channel.

        Raises
        ------
        ValueError
            If the arguments are invalid or no head weight has one output per class.
        """
        check_new_class(self.class_names, name, init_from)
        n = self.n_classes
        params = self._head_named_parameters()
        weight_name = None
        for pname, p in reversed(params):
            if pname.endswith("weight") and p.ndim >= 2 and p.shape[0] == n:
                weight_name = pname
                break
        if weight_name is None:
            raise ValueError(
                f"cannot add a class to {self.name}: no head weight has {n} output channels "
                f"(head parameters: {[pn for pn, _ in params]})"
            )
        bias_name = weight_name[: -len("weight")] + "bias"
        with torch.no_grad():
            for pname in (weight_name, bias_name):
                try:
                    owner, attr = owner_of(self._net, pname)
                    current = getattr(owner, attr)
                except AttributeError:
                    continue
                if not isinstance(current, torch.Tensor) or current.shape[0] != n:
                    continue
                grown = torch.cat([current, current[init_from : init_from + 1]])
                setattr(owner, attr, nn.Parameter(grown, requires_grad=False))
        self.class_names.append(str(name))

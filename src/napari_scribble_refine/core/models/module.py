"""Any ``torch.nn.Module`` that maps an image to class logits, split into trunk and head.

The head is named by module name(s) or taken as the network's last ``n_layers``
parameterised leaf modules. On a probe input the adapter records the order in which modules
run, captures the input of the first head module (that tensor becomes the cached trunk
feature) and checks once that running the remaining modules in order on it reproduces the
network's output. If it does, refinement only ever runs the head on cached features; if it
does not (skip connections into the head, functional operations between head modules), the
adapter falls back to *opaque* mode: every step runs the whole forward and only the head's
parameters get gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from .added_classes import check_new_class, format_names, grow_output_layer
from .base import BatchedFeatures, Features, SegmentationModel
from .saving import save_state_dict

__all__ = ["Captured", "TorchModuleModel", "is_pointwise", "module_halo"]

_POINTWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm2d,
)

_PROBE_SIDE = 64


class Captured(Exception):
    """Raised by the capture hook to stop a forward once the trunk feature is known."""

    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__("trunk feature captured")
        self.tensor = tensor


@dataclass
class _Call:
    name: str
    module: nn.Module
    call_index: int
    args: tuple
    output: object


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _has_own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _leaf_is_pointwise(module: nn.Module) -> bool:
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        return module.dim in (1, -3)
    if isinstance(module, nn.Conv2d):
        return (
            tuple(module.kernel_size) == (1, 1)
            and tuple(module.stride) == (1, 1)
            and tuple(module.padding) == (0, 0)
        )
    return isinstance(module, _POINTWISE_TYPES)


def is_pointwise(module: nn.Module) -> bool:
    """Whether every leaf of ``module`` acts on each pixel alone (no spatial context)."""
    leaves = [m for m in module.modules() if _is_leaf(m)]
    return all(_leaf_is_pointwise(m) for m in leaves)


def module_halo(module: nn.Module) -> int:
    """Receptive-field radius of a module's leaves, in input pixels (an upper bound)."""
    total = 0
    for leaf in module.modules():
        if not _is_leaf(leaf):
            continue
        if isinstance(leaf, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            k = max(int(v) for v in leaf.kernel_size)
            d = max(int(v) for v in leaf.dilation)
            s = max(int(v) for v in leaf.stride)
            total += d * (k - 1) // 2 * s + (s - 1)
        elif isinstance(leaf, (nn.MaxPool2d, nn.AvgPool2d)):
            k = leaf.kernel_size if isinstance(leaf.kernel_size, int) else max(leaf.kernel_size)
            total += int(k)
        elif isinstance(leaf, nn.Upsample):
            total += 2
    return total


class TorchModuleModel(BatchedFeatures, SegmentationModel):
    """Wrap any ``torch.nn.Module`` that returns class logits [N, C, H, W].

    Parameters
    ----------
    module : torch.nn.Module
        The network. It must map [N, in_channels, H, W] to logits [N, C, H, W] of the same
        spatial size, with C = ``len(class_names)``. It is put in eval mode and its
        parameters are frozen (``requires_grad=False``); the session unfreezes the head.
    class_names : sequence of str
        Output classes, index 0 = background (at least two).
    in_channels : int
        Channels the network takes (1 greyscale, 3 RGB).
    head : str or sequence of str, optional
        Name(s) of the module(s) whose parameters refinement tunes, as in
        ``module.named_modules()`` (e.g. ``"decoder.final"``). Everything that runs after the
        first of them is part of the head computation. Mutually exclusive with ``n_layers``.
    n_layers : int, optional
        Tune the last ``n_layers`` parameterised leaf modules (in execution order). The
        default, when neither ``head`` nor ``n_layers`` is given, is 1 (the final layer).
    normalise : str, callable or None
        ``"percentile"`` (1st-99.8th percentile to [0, 1], the default), ``"minmax"``,
        ``"none"`` / None, or a callable image -> image applied to the whole image.
    size_multiple : int
        H and W the network accepts must be multiples of this (e.g. 16 for a U-Net with four
        poolings); inputs are reflect-padded and the outputs cropped back.
    trunk_halo : int
        Context (pixels) each tile needs when a large image's trunk runs tile by tile.
    name : str, optional
        Name shown to users; defaults to the module's class name.

    Raises
    ------
    ValueError
        If a head name does not exist (the message lists the module names), the network's
        output on a probe input is not [N, len(class_names), H, W], or the arguments
        conflict.
    """

    def __init__(
        self,
        module: nn.Module,
        class_names: Sequence[str],
        *,
        in_channels: int = 1,
        head: str | Sequence[str] | None = None,
        n_layers: int | None = None,
        normalise: Normaliser = "percentile",
        size_multiple: int = 1,
        trunk_halo: int = 64,
        name: str | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        names = [str(c) for c in class_names]
        if len(names) < 2:
            raise ValueError(
                f"class_names needs at least two entries (background first), got {names}"
            )
        if head is not None and n_layers is not None:
            raise ValueError("give either head (module names) or n_layers, not both")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if size_multiple < 1:
            raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
        if n_layers is not None and n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")

        self.name = name or type(module).__name__
        self.class_names = names
        self.in_channels = int(in_channels)
        self.size_multiple = int(size_multiple)
        self.trunk_halo = int(trunk_halo)
        self.normalise = check_normaliser(normalise)
        self._net = module.eval()
        for p in self._net.parameters():
            p.requires_grad_(False)

        probe, out, calls = self._probe()
        roots = self._resolve_head(head, n_layers if head is None else None, calls)
        self._roots = roots
        self._head_container = nn.ModuleList([self._net.get_submodule(n) for n in roots])
        self._split(probe, out, roots)

    # ------------------------------------------------------------------ set-up
    @property
    def _dtype(self) -> torch.dtype:
        first = next(self._net.parameters(), None)
        return first.dtype if first is not None else torch.float32

    def _probe_input(self) -> torch.Tensor:
        side = math.ceil(_PROBE_SIDE / self.size_multiple) * self.size_multiple
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((1, self.in_channels, side, side), generator=gen, dtype=torch.float32)
        return x.to(device=self.device, dtype=self._dtype)

    def _run_recorded(
        self, x: torch.Tensor, hooked: dict[str, nn.Module]
    ) -> tuple[object, list[_Call]]:
        calls: list[_Call] = []
        counts: dict[int, int] = {}
        handles = []

        def make_hook(module_name: str):
            def hook(mod: nn.Module, args: tuple, output: object) -> None:
                index = counts.get(id(mod), 0)
                counts[id(mod)] = index + 1
                calls.append(_Call(module_name, mod, index, args, output))

            return hook

        for module_name, mod in hooked.items():
            handles.append(mod.register_forward_hook(make_hook(module_name)))
        try:
            with torch.no_grad():
                out = self._net(x)
        finally:
            for h in handles:
                h.remove()
        return out, calls

    def _probe(self) -> tuple[torch.Tensor, torch.Tensor, list[_Call]]:
        x = self._probe_input()
        everything = {n: m for n, m in self._net.named_modules() if n}
        try:
            out, calls = self._run_recorded(x, everything)
        except Exception as err:  # noqa: BLE001 - report any failure of the user's network
            raise ValueError(
                f"{self.name} failed on a probe input of shape {tuple(x.shape)} "
                f"(in_channels={self.in_channels}, size_multiple={self.size_multiple}): {err}"
            ) from err
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name} must return one tensor of class logits [N, C, H, W]; on a probe "
                f"input of shape {tuple(x.shape)} it returned {shape}"
            )
        if out.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"{self.name} must return logits of the input's size: input {tuple(x.shape)}, "
                f"output {tuple(out.shape)}"
            )
        if out.shape[1] != self.n_classes:
            raise ValueError(
                f"{self.name} returns {out.shape[1]} channels but {self.n_classes} class "
                f"names were given ({self.class_names})"
            )
        return x, out, calls

    def _resolve_head(
        self, head: str | Sequence[str] | None, n_layers: int | None, calls: list[_Call]
    ) -> list[str]:
        modules = dict(self._net.named_modules())
        called = {c.name for c in calls}
        if head is not None:
            requested = [head] if isinstance(head, str) else list(head)
            if not requested:
                raise ValueError("head must name at least one module")
            missing = [n for n in requested if n not in modules or n == ""]
            if missing:
                available = [n for n in modules if n]
                raise ValueError(
                    f"{self.name} has no module(s) named {missing}; module names: "
                    f"{format_names(available)}"
                )
            roots: list[str] = []
            for module_name in requested:
                roots.extend(self._expand_uncalled(module_name, called))
            if not roots:
                raise ValueError(f"head module(s) {requested} never run in {self.name}'s forward")
        else:
            count = n_layers or 1
            order: list[str] = []
            for c in calls:
                mod = modules[c.name]
                if _is_leaf(mod) and _has_own_parameters(mod) and c.name not in order:
                    order.append(c.name)
            if len(order) < count:
                raise ValueError(
                    f"n_layers={count} but {self.name} has only {len(order)} parameterised "
                    "layer(s) that run in its forward"
                )
            roots = order[-count:]
        # drop roots nested in other roots
        unique = sorted(set(roots), key=roots.index)
        return [r for r in unique if not any(r != o and r.startswith(o + ".") for o in unique)]

    def _expand_uncalled(self, module_name: str, called: set[str]) -> list[str]:
        if module_name in called:
            return [module_name]
        mod = self._net.get_submodule(module_name)
        out: list[str] = []
        for child_name, _ in mod.named_children():
            out.extend(self._expand_uncalled(f"{module_name}.{child_name}", called))
        return out

    def _split(self, x: torch.Tensor, out: torch.Tensor, roots: list[str]) -> None:
        """Find the head's module sequence and check it reproduces the network."""
        self.trunk_is_cached = False
        self.head_is_pointwise = False
        self.head_halo = 0
        self._seq: list[nn.Module] = []
        self._capture: tuple[nn.Module, int] | None = None
        self.split_note = ""

        root_set = set(roots)
        units: dict[str, nn.Module] = {}
        for module_name, mod in self._net.named_modules():
            if not module_name:
                continue
            inside_root = any(module_name.startswith(r + ".") for r in root_set)
            if module_name in root_set or (_is_leaf(mod) and not inside_root):
                units[module_name] = mod
        _, calls = self._run_recorded(x, units)
        start = next((i for i, c in enumerate(calls) if c.name in root_set), None)
        if start is None:
            self.split_note = "the head never runs on the probe input"
            return
        seq_calls = calls[start:]
        first = seq_calls[0]
        feature = first.args[0] if len(first.args) == 1 else None
        if not isinstance(feature, torch.Tensor) or feature.ndim != 4:
            self.split_note = "the first head module does not take a single [N, F, H, W] tensor"
            return
        if feature.shape[-2:] != x.shape[-2:]:
            self.split_note = (
                f"the head's input {tuple(feature.shape)} is not at the image's resolution"
            )
            return
        y: object = feature
        try:
            with torch.no_grad():
                for c in seq_calls:
                    y = c.module(y)
        except Exception as err:  # noqa: BLE001 - any failure means "not sequential"
            self.split_note = f"running the head modules in sequence failed ({err})"
            return
        if not (isinstance(y, torch.Tensor) and y.shape == out.shape):
            self.split_note = "the head modules in sequence do not give the network's output"
            return
        tol = 1e-4 * float(out.abs().max()) + 1e-5
        if not torch.allclose(y, out, rtol=1e-4, atol=tol):
            self.split_note = (
                "running the head modules in sequence does not reproduce the network's output "
                "(skip connections into the head or functional operations between its modules)"
            )
            return
        self._seq = [c.module for c in seq_calls]
        self._capture = (first.module, first.call_index)
        self.trunk_is_cached = True
        self.head_is_pointwise = all(is_pointwise(m) for m in self._seq)
        self.head_halo = 0 if self.head_is_pointwise else sum(module_halo(m) for m in self._seq)

    # ------------------------------------------------------------------ protocol
    @property
    def network(self) -> nn.Module:
        """The wrapped network."""
        return self._net

    @property
    def head_module(self) -> nn.Module:
        """A container of the head modules (shared with :attr:`network`)."""
        return self._head_container

    @property
    def head_names(self) -> list[str]:
        """Names of the modules whose parameters refinement tunes."""
        return list(self._roots)

    @property
    def description(self) -> str:  # type: ignore[override]
        """One sentence saying what was wrapped: network, head and classes."""
        how = (
            "on cached features"
            if self.trunk_is_cached
            else f"whole forward each step: {self.split_note}"
        )
        return (
            f"Wrapped torch.nn.Module {self.name!r} ({type(self._net).__name__}): head "
            f"{format_names(self._roots)} ({how}), classes {', '.join(self.class_names)}, "
            f"{self.in_channels}-channel input, normalisation {normaliser_name(self.normalise)}."
        )

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

    def _input(self, images: Sequence[np.ndarray], normalised: bool) -> torch.Tensor:
        normalise = None if normalised else self.normalise_image
        return input_batch(images, normalise, self.in_channels, self.device).to(self._dtype)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        assert self._capture is not None
        target, call_index = self._capture
        seen = {"n": 0}

        def hook(mod: nn.Module, args: tuple) -> None:
            if seen["n"] == call_index:
                raise Captured(args[0])
            seen["n"] += 1

        handle = target.register_forward_pre_hook(hook)
        try:
            self._net(x)
        except Captured as captured:
            return captured.tensor
        finally:
            handle.remove()
        raise RuntimeError("the head's first module did not run; cannot capture the trunk")

    def features_batch(self, images: Sequence[np.ndarray], *, normalised: bool = False) -> Features:
        """Run the frozen trunk on several 2D images of one size in one batch.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            Images (Y, X) or (Y, X, C) of equal shape (e.g. the slices of a stack).
        normalised : bool
            True when the images have already been through :meth:`normalise_image`.

        Returns
        -------
        Features
            Tensors [B, F, Y, X].
        """
        x = self._input(images, normalised)
        if not self.trunk_is_cached:
            return {"input": x}
        h, w = x.shape[-2:]
        with torch.no_grad():
            feature = self._trunk(pad_to_multiple(x, self.size_multiple))
        return {"trunk": feature[..., :h, :w]}

    def head(self, features: Features) -> torch.Tensor:
        """Class logits from (a crop or gather of) cached features.

        Parameters
        ----------
        features : Features
            ``{"trunk": [N, F, h, w]}`` or, in opaque mode, ``{"input": [N, C, h, w]}``.

        Returns
        -------
        torch.Tensor
            Logits [N, n_classes, h, w].
        """
        if self.trunk_is_cached:
            y = features["trunk"]
            for mod in self._seq:
                y = mod(y)
            return y
        x = features["input"]
        h, w = x.shape[-2:]
        return self._net(pad_to_multiple(x, self.size_multiple))[..., :h, :w]

    def _last_layer(self) -> nn.Module:
        modules = list(self._seq) if self.trunk_is_cached else list(self._head_container)
        leaves = [
            leaf
            for mod in modules
            for leaf in mod.modules()
            if _is_leaf(leaf) and _has_own_parameters(leaf)
        ]
        if not leaves:
            raise ValueError(f"{self.name}: the head has no parameterised layer")
        last = leaves[-1]
        head_params = {id(p) for p in self._head_container.parameters()}
        if not any(id(p) in head_params for p in last.parameters()):
            raise ValueError(
                f"{self.name}: the network's last layer is not part of the head, so a class "
                "cannot be added"
            )
        return last

    save_suffixes = (".safetensors",)
    save_format = "a .safetensors state dict (the architecture stays your Python code)"

    def save(self, path: Path, metadata: Mapping[str, Any]) -> None:
        """Write the module's state dict with this adapter's settings (see :mod:`.saving`).

        Load it back with ``load_model(path, module=net)``, ``net`` built as before.

        Parameters
        ----------
        path : Path
            Output ``.safetensors`` file.
        metadata : mapping
            Notes stored with the settings.
        """
        settings = {
            "module": type(self._net).__name__,
            "name": self.name,
            "class_names": self.class_names,
            "in_channels": self.in_channels,
            "head": self._roots,
            "normalise": self.normalise,
            "size_multiple": self.size_multiple,
            "trunk_halo": self.trunk_halo,
            **metadata,
        }
        save_state_dict(self._net, path, settings)

    def add_class(self, name: str, init_from: int) -> None:
        """Grow the final layer by one output channel copied from class ``init_from``.

        Parameters
        ----------
        name : str
            Name of the new class (must be new).
        init_from : int
            Index of the class whose weights initialise the new channel.

        Raises
        ------
        ValueError
            If the name is empty or taken, ``init_from`` is out of range, or the final layer
            is not a convolution / linear layer with one output per class.
        """
        check_new_class(self.class_names, name, init_from)
        last = self._last_layer()
        grow_output_layer(last, self.n_classes, init_from)
        self.class_names.append(str(name))

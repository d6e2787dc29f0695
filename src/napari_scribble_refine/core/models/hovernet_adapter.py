"""HoVer-Net behind the refinement protocol: trunk features, tunable NP/TP head, HV instances.

Classes and logits
    Untyped models show ``["background", "nucleus"]``; typed models show ``["background",
    type 1, ...]`` (TP channel c <-> class c). The logits the session sees are
    log-probabilities that combine the branches::

        log p(background) = log softmax(NP)[0]
        log p(type c)     = log softmax(NP)[1] + log softmax(TP[1:])[c - 1]

    so they sum to one over classes, cross-entropy trains the NP and TP heads together, and
    argmax gives the class map. (TP channel 0, "no label", is not used.) A class added to an
    untyped model becomes an extra NP channel; the nucleus probability then stays
    ``softmax(NP[:2])[1]`` and is shared among NP channels 1, 2, ... by ``softmax(NP[1:])``
    (the same rule with ``NP[1:]`` in place of ``TP[1:]``), so adding a class does not
    change the background.

Head depth (``n_layers``)
    1: ``u0.conv`` (1x1, point-wise); 2: ``u0.bn`` + ReLU + ``u0.conv`` (point-wise, BN in
    eval mode); 3: also ``u1.conva`` (k x k, spatial, halo k // 2). The cached features are the
    inputs of that part for the NP and TP branches (keys ``"np"``, ``"tp"``), plus the HV
    output (``"hv"``, not tuned) for the instance post-processing.

Geometry
    Valid-padded (official) models run the official tile pipeline (reference d.2): the
    image is reflect-padded by the output offset (46 px fast, 95 px original), windows of
    the model's input size step by its output size, and the stitched outputs align with the
    image pixel for pixel. Same-padded (built-in) models are padded at the bottom/right to a
    multiple of 8 and cropped back.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..hovernet_postprocess import hv_instances, instance_info
from ._prepare import PERCENTILES, to_input_tensor
from .added_classes import check_new_class, grow_output_layer
from .base import BatchedFeatures, Features, SegmentationModel
from .hovernet import HoVerNet
from .hovernet_checkpoint import LoadedHoVerNet, save_hovernet_safetensors
from .hovernet_normalisation import check_normalisation, prepare_image

__all__ = ["PANNUKE_TYPES", "HoVerNetModel", "cpu_has_native_bf16", "default_class_names"]

PANNUKE_TYPES = ("neoplastic", "inflammatory", "connective", "dead", "non-neoplastic epithelial")
"""PanNuke type ids 1..5 (reference a.2)."""

_PRECISIONS = ("auto", "float32", "bfloat16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), checked once.

    CPUs without them emulate bf16, which is slower and no more precise than float32.
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def default_class_names(network: HoVerNet) -> list[str]:
    """Class names for a network that came without any.

    Parameters
    ----------
    network : HoVerNet
        The network.

    Returns
    -------
    list of str
        ``["background", "nucleus"]`` untyped; PanNuke names for an official fast 6-type
        model; otherwise ``["background", "type 1", ...]``.
    """
    c = network.config
    if c.nr_types is None:
        extra = [f"class {i}" for i in range(2, c.np_channels)]
        return ["background", "nucleus", *extra]
    if c.nr_types == 6 and c.in_channels == 3 and c.padding == "valid" and c.mode == "fast":
        return ["background", *PANNUKE_TYPES]
    return ["background", *(f"type {i}" for i in range(1, c.nr_types))]


class HoVerNetModel(BatchedFeatures, SegmentationModel):
    """A HoVer-Net (official checkpoint or built-in) as a refinable segmentation model.

    Parameters
    ----------
    network : HoVerNet or LoadedHoVerNet
        The network, or what a loader returned (its class names and normalisation are used
        unless given here).
    class_names : sequence of str, optional
        Classes, index 0 = background: 2 names for untyped models (NP channels), ``nr_types``
        names for typed models (TP channels). Default: :func:`default_class_names`.
    normalisation : mapping, optional
        See :func:`~.hovernet_normalisation.prepare_image`. Default: the loader's, else
        ``{"kind": "uint8"}`` for 3-channel valid-padded (official) models and
        ``{"kind": "percentile"}`` otherwise.
    n_layers : {1, 2, 3}
        Head depth (see the module docstring).
    name : str, optional
        Name shown to users.
    window : int, optional
        Input window of the official tile pipeline (valid-padded models only); default the
        canonical patch (256 fast, 270 original). Larger windows waste less context but use
        more memory; the value is rounded up to a valid size.
    batch_size : int
        Windows per forward pass.
    channels_last : bool
        Run the network in channels-last memory format (much faster convolutions on CPUs).
    precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the frozen trunk. ``"auto"`` uses bfloat16 autocast on CPUs with native
        bf16 instructions (2-3x faster; the built-in models were trained under it) and float32
        elsewhere. The tuned head always runs in float32.

    Raises
    ------
    ValueError
        For class names that do not match the network's channels, an unknown normalisation,
        an unknown precision or ``n_layers`` outside 1-3.
    """

    def __init__(
        self,
        network: HoVerNet | LoadedHoVerNet,
        class_names: Sequence[str] | None = None,
        *,
        normalisation: Mapping[str, Any] | None = None,
        n_layers: int = 1,
        name: str | None = None,
        window: int | None = None,
        batch_size: int = 4,
        channels_last: bool = True,
        precision: str = "auto",
    ) -> None:
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        self.precision = precision
        loaded_norm = None
        self.metadata: dict[str, str] = {}
        """What the weights file said about itself (data, licence, recipe): saved along."""
        if isinstance(network, LoadedHoVerNet):
            class_names = class_names if class_names is not None else network.class_names
            loaded_norm = network.normalisation
            self.metadata = dict(network.metadata)
            network = network.model
        if not isinstance(network, HoVerNet):
            raise TypeError(f"network must be a HoVerNet, got {type(network).__name__}")
        self._net = network.eval()
        for p in self._net.parameters():
            p.requires_grad_(False)
        config = network.config
        self.name = name or "HoVer-Net"
        self.in_channels = config.in_channels
        names = list(class_names) if class_names is not None else default_class_names(network)
        expected = config.nr_types if config.nr_types is not None else config.np_channels
        if len(names) != expected:
            what = "TP (type)" if config.nr_types is not None else "NP"
            raise ValueError(
                f"{self.name}: {len(names)} class names {names} for {expected} {what} channels;"
                f" give one name per channel, background first"
            )
        self.class_names = [str(n) for n in names]
        if normalisation is None:
            normalisation = loaded_norm
        if normalisation is None:
            official = config.padding == "valid" and config.in_channels == 3
            normalisation = {"kind": "uint8"} if official else {"kind": "percentile"}
        self.normalisation = check_normalisation(normalisation)
        self.batch_size = max(1, int(batch_size))
        if config.padding == "valid":
            size = window if window is not None else (256 if config.mode == "fast" else 270)
            self.window = config.valid_size_at_least(int(size))
        else:
            self.window = None
        self.size_multiple = 8
        self.trunk_halo = config.offset if config.padding == "valid" else 64
        self.trunk_halo += (-self.trunk_halo) % 8
        if channels_last:
            self._net.to(memory_format=torch.channels_last)
        self._channels_last = bool(channels_last)
        self.set_n_layers(n_layers)

    # ------------------------------------------------------------------ structure
    @property
    def network(self) -> HoVerNet:
        """The wrapped HoVer-Net."""
        return self._net

    @property
    def head_module(self) -> nn.Module:
        """``ModuleDict`` of the tuned parts of the NP (and TP) branches (shared modules)."""
        return self._head

    @property
    def typed(self) -> bool:
        """Whether the network has a TP branch."""
        return self._net.config.nr_types is not None

    @property
    def n_layers(self) -> int:
        """Current head depth."""
        return self._n_layers

    def _branches(self) -> tuple[str, ...]:
        return ("np", "tp") if self.typed else ("np",)

    def set_n_layers(self, n_layers: int) -> None:
        """Choose the head depth (cached features must then be recomputed).

        Parameters
        ----------
        n_layers : {1, 2, 3}
            1: ``u0.conv``; 2: ``u0`` (BN, ReLU, conv); 3: ``u1`` + ``u0``.

        Raises
        ------
        ValueError
            For other values.
        """
        if n_layers not in (1, 2, 3):
            raise ValueError(f"n_layers must be 1, 2 or 3 for HoVer-Net, got {n_layers!r}")
        self._n_layers = int(n_layers)
        parts = {}
        for b in self._branches():
            dec = self._net.decoder[b]
            if n_layers == 1:
                parts[b] = nn.Sequential(dec.u0.conv)
            elif n_layers == 2:
                parts[b] = nn.Sequential(dec.u0)
            else:
                parts[b] = nn.Sequential(dec.u1, dec.u0)
        self._head = nn.ModuleDict(parts)
        if n_layers == 2:  # u0's ReLU follows its BatchNorm: in place, the same values
            for module in self._head.modules():  # without a second full-size map (a third
                if isinstance(module, nn.ReLU):  # less time per prediction at 1024²)
                    module.inplace = True
        self.head_is_pointwise = n_layers <= 2
        self.head_halo = 0 if n_layers <= 2 else self._net.config.k // 2

    @property
    def description(self) -> str:  # type: ignore[override]
        """One sentence saying what was loaded: architecture, head and classes."""
        c = self._net.config
        millions = sum(p.numel() for p in self._net.parameters()) / 1e6
        layers = {1: "u0.conv", 2: "u0 (BatchNorm, ReLU, conv)", 3: "u1 and u0"}[self._n_layers]
        branches = " and ".join(b.upper() for b in self._branches())
        norm = self.normalisation["kind"]
        if norm == "percentile":
            norm += f" {self.normalisation.get('low', PERCENTILES[0])}-"
            norm += f"{self.normalisation.get('high', PERCENTILES[1])}"
        return (
            f"Loaded HoVer-Net {self.name!r} ({c.mode} mode, {c.padding} padding, "
            f"{millions:.1f} M parameters): head {layers} of the {branches} branch"
            f"{'es' if self.typed else ''}, classes {', '.join(self.class_names)}, "
            f"{c.in_channels}-channel input, normalisation {norm}."
        )

    # ------------------------------------------------------------------ images
    def normalise_image(self, image: np.ndarray) -> np.ndarray:
        """Scale a whole image or stack to the network's input range (:func:`prepare_image`).

        Parameters
        ----------
        image : numpy.ndarray
            (Y, X), (Y, X, C) or (Z, Y, X); not modified.

        Returns
        -------
        numpy.ndarray
            float32, same shape.
        """
        return prepare_image(image, self.normalisation)

    def _input(self, images: Sequence[np.ndarray], normalised: bool) -> torch.Tensor:
        tensors = []
        for img in images:
            scaled = img if normalised else self.normalise_image(img)
            tensors.append(
                to_input_tensor(
                    np.asarray(scaled, np.float32), self.in_channels, torch.device("cpu")
                )
            )
        return torch.cat(tensors)

    def _branch_features(self, x: torch.Tensor) -> Features:
        """Features of a valid network input, at the network's output resolution."""
        bf16 = self.trunk_uses_bf16(x.device)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self._branch_features_raw(x)
        return {k: v.float() for k, v in out.items()}

    def trunk_uses_bf16(self, device: torch.device) -> bool:
        """Say whether the frozen trunk runs under bfloat16 autocast on ``device``.

        Parameters
        ----------
        device : torch.device
            Where the trunk runs.

        Returns
        -------
        bool
            The ``precision`` rule applied to ``device``.
        """
        if self.precision == "auto":
            return device.type == "cpu" and cpu_has_native_bf16()
        return self.precision == "bfloat16"

    def _branch_features_raw(self, x: torch.Tensor) -> Features:
        net = self._net
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = net.encode(x)
        out: Features = {}
        for b in net.config.branches:
            dec = net.decoder[b]
            y = net.decode_to_u1(b, feats)
            if b == "hv":
                out["hv"] = dec.u0(dec.u1(y))
                continue
            if b == "tp" or b == "np":
                if self._n_layers <= 2:
                    y = dec.u1(y)
                if self._n_layers == 1:
                    y = dec.u0.relu(dec.u0.bn(y))
                out[b] = y
        return out

    def features_batch(self, images: Sequence[np.ndarray], *, normalised: bool = False) -> Features:
        """Run the frozen trunk on several 2D images of one size.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            Images of equal shape.
        normalised : bool
            True when they have been through :meth:`normalise_image` already.

        Returns
        -------
        Features
            Tensors [B, F, Y, X] on the model's device.
        """
        x = self._input(images, normalised)
        h, w = x.shape[-2:]
        config = self._net.config
        device = self.device
        with torch.no_grad():
            if config.padding == "same":
                hp, wp = config.valid_size_at_least(h), config.valid_size_at_least(w)
                x = _reflect_pad(x, 0, hp - h, 0, wp - w)
                feats = self._branch_features(x.to(device))
                return {k: v[..., :h, :w] for k, v in feats.items()}
            return self._tiled(x, h, w, device)

    def _tiled(self, x: torch.Tensor, h: int, w: int, device: torch.device) -> Features:
        """Official tile pipeline (reference d.2) for valid-padded networks."""
        config = self._net.config
        window = int(self.window)  # type: ignore[arg-type]
        step = config.output_size(window)
        off = config.offset
        ny, nx = -(-h // step), -(-w // step)
        ph, pw = ny * step + window - step, nx * step + window - step
        x = _reflect_pad(x, off, ph - h - off, off, pw - w - off)
        origins = [(i * step, j * step) for i in range(ny) for j in range(nx)]
        out: Features = {}
        for n in range(x.shape[0]):
            for start in range(0, len(origins), self.batch_size):
                group = origins[start : start + self.batch_size]
                batch = torch.stack(
                    [x[n, :, y : y + window, xx : xx + window] for y, xx in group]
                ).to(device)
                feats = self._branch_features(batch)
                for key, value in feats.items():
                    if key not in out:
                        out[key] = torch.empty(
                            (x.shape[0], value.shape[1], ny * step, nx * step),
                            dtype=value.dtype,
                            device=value.device,
                        )
                    for i, (y, xx) in enumerate(group):
                        out[key][n, :, y : y + step, xx : xx + step] = value[i]
        return {k: v[..., :h, :w] for k, v in out.items()}

    # ------------------------------------------------------------------ head
    def head(self, features: Features) -> torch.Tensor:
        """Class log-probabilities from (a crop or gather of) cached features.

        Parameters
        ----------
        features : Features
            ``"np"`` (and ``"tp"``) tensors [N, F, h, w]; ``"hv"`` is ignored.

        Returns
        -------
        torch.Tensor
            Log-probabilities [N, n_classes, h, w] (they are valid logits).
        """
        np_logits = self._head["np"](features["np"])
        if self.typed:
            split = self._head["tp"](features["tp"])[:, 1:]
        elif np_logits.shape[1] > 2:
            split = np_logits[:, 1:]  # classes added to an untyped model share the nucleus mass
        else:
            return F.log_softmax(np_logits, dim=1)
        log_np = F.log_softmax(np_logits[:, :2], dim=1)
        return torch.cat([log_np[:, :1], log_np[:, 1:2] + F.log_softmax(split, dim=1)], dim=1)

    def pixel_feature_keys(self, features: Features) -> list[str]:
        """Name the NP (and TP) head inputs; the HV map says where a pixel is, not what.

        Parameters
        ----------
        features : Features
            Cached tensors.

        Returns
        -------
        list of str
            ``["np"]`` or ``["np", "tp"]``.
        """
        return [b for b in self._branches() if b in features]

    def class_map(self, logits: torch.Tensor) -> torch.Tensor:
        """Nucleus where the NP branch says so, then its most likely class (HoVer-Net's rule).

        A plain argmax over the combined classes would call a nucleus background whenever
        its probability is split among several types (or among the NP channels of an added
        class), e.g. p(nucleus) = 0.6 over three equally likely types.

        Parameters
        ----------
        logits : torch.Tensor
            Log-probabilities [N, n_classes, h, w] from :meth:`head`.

        Returns
        -------
        torch.Tensor
            int64 [N, h, w]: 0 where p(background) >= 0.5, else 1 + the argmax of the rest.
        """
        foreground = logits[:, 0] < math.log(0.5)
        kind = super().class_map(logits[:, 1:]) + 1
        return torch.where(foreground, kind, torch.zeros_like(kind))

    def add_class(self, name: str, init_from: int) -> None:
        """Add a class: one more TP channel (typed) or NP channel (untyped).

        The new channel copies the weights of class ``init_from``'s channel (for typed
        models class 0, background, maps to TP's "no label" channel).

        Parameters
        ----------
        name : str
            Name of the new class.
        init_from : int
            Index of the class that initialises it.
        """
        check_new_class(self.class_names, name, init_from)
        branch = "tp" if self.typed else "np"
        conv = self._net.decoder[branch].u0.conv
        grow_output_layer(conv, conv.out_channels, int(init_from))
        config = self._net.config
        if self.typed:
            config = dataclasses.replace(config, nr_types=conv.out_channels)
        else:
            config = dataclasses.replace(config, np_channels=conv.out_channels)
        self._net.config = config
        self.class_names.append(str(name))

    def load_head_state(self, state: dict[str, Any]) -> None:
        """Restore a head snapshot (see :meth:`SegmentationModel.load_head_state`).

        Parameters
        ----------
        state : dict
            Snapshot from :meth:`head_state`.
        """
        super().load_head_state(state)
        conv = self._net.decoder["tp" if self.typed else "np"].u0.conv
        key = "nr_types" if self.typed else "np_channels"
        if getattr(self._net.config, key) != conv.out_channels:
            self._net.config = dataclasses.replace(self._net.config, **{key: conv.out_channels})

    save_suffixes = (".safetensors",)
    save_format = "the plugin's HoVer-Net .safetensors file"

    def save(self, path: Path, metadata: Mapping[str, Any]) -> None:
        """Write the network, its classes and normalisation as the plugin's safetensors file.

        The weights file's own notes (training data, licence) are kept; ``metadata`` entries
        are added or replace them.

        Parameters
        ----------
        path : Path
            Output ``.safetensors`` file.
        metadata : mapping
            Notes stored beside the weights.
        """
        notes = {**self.metadata, **metadata}
        save_hovernet_safetensors(
            self._net, path, self.class_names, metadata=notes, normalisation=self.normalisation
        )

    # ------------------------------------------------------------------ instances
    def instances(
        self, class_map: np.ndarray, logits: torch.Tensor, features: Features
    ) -> np.ndarray | None:
        """HoVer-Net instances: HV watershed of the nucleus probability (reference d.3).

        Nucleus components in which no watershed marker survives are kept as instances
        rather than dropped as the official rule does (see ``hv_instances``).

        Parameters
        ----------
        class_map : numpy.ndarray
            (Y, X) argmax class map (unused: the nucleus probability comes from ``logits``).
        logits : torch.Tensor
            [1, C, Y, X] log-probabilities from :meth:`head`.
        features : Features
            The cached features of the image (``"hv"`` is used).

        Returns
        -------
        numpy.ndarray
            int32 instance labels (0 = background).
        """
        if "hv" not in features:
            return None
        log_bg = logits[0, 0].detach().float().cpu()
        np_prob = (-torch.expm1(log_bg)).numpy()
        hv = features["hv"][0].detach().float().cpu().numpy()
        return hv_instances(np_prob, hv, keep_unmarked=True)

    def instance_types(self, labels: np.ndarray, class_map: np.ndarray) -> dict[int, int]:
        """Per-instance class by the official majority rule (second pick over background).

        Parameters
        ----------
        labels : numpy.ndarray
            Instance labels.
        class_map : numpy.ndarray
            Class map of the same shape.

        Returns
        -------
        dict of int to int
            Instance id -> class index.
        """
        return {i: e["type"] for i, e in instance_info(labels, class_map).items()}


def _reflect_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """numpy-style ``'reflect'`` padding of [N, C, H, W] (any amount; mirrors repeatedly)."""
    if top == bottom == left == right == 0:
        return x
    arr = np.pad(x.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="reflect")
    return torch.from_numpy(arr)

"""HoVer-Net (Graham et al., 2019) with module names that load official checkpoints.

The network follows ``shared/reference/hovernet.md`` section (a): a pre-activation
ResNet-50 encoder (``conv0``, ``d0`` ... ``d3``, ``conv_bot``) and three decoder branches
``tp`` / ``np`` / ``hv`` made of dense blocks. Module names contain ``/`` (and one module is
literally called ``/``) so that ``state_dict()`` keys, their order, shapes and dtypes equal the
official ones exactly; official ``.tar`` / ``.pth`` files load with ``strict=True``.

The same code builds the small CPU models shipped with this plugin: a
:class:`HoVerNetConfig` sets widths, depths, the input channel count and the padding
(``"valid"`` is the official geometry; ``"same"`` keeps the output the size of the input).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HoVerNet", "HoVerNetConfig", "TFSamePad2d"]

_MODES = ("fast", "original")
_PADDINGS = ("valid", "same")


@dataclass(frozen=True)
class HoVerNetConfig:
    """Widths, depths and geometry of a :class:`HoVerNet`.

    The defaults are the official ``fast`` architecture without a type branch. Use
    :meth:`official` for the exact published configurations and :meth:`small` for the
    plugin's built-in CPU models.

    Parameters
    ----------
    mode : {"fast", "original"}
        ``"fast"``: 3x3 decoder kernels and a zero-padded stem (output = input - 92).
        ``"original"``: 5x5 decoder kernels and an unpadded stem (output = input - 190).
    nr_types : int or None
        Number of type channels of the ``tp`` branch (background included), or None for a
        model without the ``tp`` branch.
    in_channels : int
        Input channels: 3 for the official RGB models, 1 for greyscale models.
    padding : {"valid", "same"}
        ``"valid"``: the official geometry (valid decoder convolutions, centre-cropped skip
        connections). ``"same"``: every convolution is zero-padded, nothing is cropped and
        the outputs have the input's size (H and W multiples of 8).
    stem_channels : int
        Output channels of ``conv0``.
    stem_kernel : int
        Kernel size of ``conv0``.
    block_mid : tuple of int
        Bottleneck (middle) widths of the residual blocks ``d0`` ... ``d3``.
    block_out : tuple of int
        Output widths of ``d0`` ... ``d3``.
    block_units : tuple of int
        Residual units per block.
    decoder_channels : tuple of int
        Output channels of the ``conva`` convolutions of ``u3``, ``u2`` and ``u1``.
    dense_units : tuple of int
        Dense units in ``u3`` and ``u2``.
    dense_bottleneck : int
        Output channels of each dense unit's 1x1 ``conv1``.
    dense_growth : int
        Channels each dense unit adds (output of its grouped ``conv2``).
    dense_groups : int
        Groups of each dense unit's ``conv2``.
    kernel_size : int or None
        Decoder kernel size k; None means 5 for ``original`` and 3 for ``fast``.
    input_scale : float
        ``forward`` divides its input by this (255 for the official 0-255 RGB input).
    np_channels : int
        Output channels of the ``np`` branch: 2 (background, nucleus) for every published
        model; more after a class was added to an untyped model.
    """

    mode: str = "fast"
    nr_types: int | None = None
    in_channels: int = 3
    padding: str = "valid"
    stem_channels: int = 64
    stem_kernel: int = 7
    block_mid: tuple[int, ...] = (64, 128, 256, 512)
    block_out: tuple[int, ...] = (256, 512, 1024, 2048)
    block_units: tuple[int, ...] = (3, 4, 6, 3)
    decoder_channels: tuple[int, ...] = (256, 128, 64)
    dense_units: tuple[int, ...] = (8, 4)
    dense_bottleneck: int = 128
    dense_growth: int = 32
    dense_groups: int = 4
    kernel_size: int | None = None
    input_scale: float = 255.0
    np_channels: int = 2

    def __post_init__(self) -> None:
        for name in ("block_mid", "block_out", "block_units", "decoder_channels", "dense_units"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = _type_problems(self)
        if problems:  # wrong types (a damaged file's metadata): range checks would not apply
            raise ValueError("Invalid HoVerNetConfig: " + "; ".join(problems))
        if self.mode not in _MODES:
            problems.append(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.padding not in _PADDINGS:
            problems.append(f"padding must be one of {_PADDINGS}, got {self.padding!r}")
        if self.nr_types is not None and self.nr_types < 2:
            problems.append(f"nr_types must be None or >= 2, got {self.nr_types!r}")
        if self.np_channels < 2:
            problems.append(f"np_channels must be >= 2, got {self.np_channels!r}")
        if self.in_channels < 1:
            problems.append(f"in_channels must be >= 1, got {self.in_channels!r}")
        for name in ("block_mid", "block_out", "block_units"):
            if len(getattr(self, name)) != 4:
                problems.append(f"{name} needs 4 values (d0..d3), got {getattr(self, name)}")
        if len(self.decoder_channels) != 3:
            problems.append(
                f"decoder_channels needs 3 values (u3, u2, u1), got {self.decoder_channels}"
            )
        if len(self.dense_units) != 2:
            problems.append(f"dense_units needs 2 values (u3, u2), got {self.dense_units}")
        for name in (
            "stem_channels",
            "stem_kernel",
            "dense_bottleneck",
            "dense_growth",
            "dense_groups",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("block_mid", "block_out", "decoder_channels"):
            if any(v < 1 for v in getattr(self, name)):
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("block_units", "dense_units"):
            if any(v < 0 for v in getattr(self, name)):
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        try:
            object.__setattr__(self, "input_scale", float(self.input_scale))
        except OverflowError:  # an int too large for a float (or for torch to divide by)
            object.__setattr__(self, "input_scale", math.inf)
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            problems.append(f"input_scale must be a finite number > 0, got {self.input_scale!r}")
        if problems:
            raise ValueError("Invalid HoVerNetConfig: " + "; ".join(problems))
        if self.dense_bottleneck % self.dense_groups or self.dense_growth % self.dense_groups:
            problems.append("dense_bottleneck and dense_growth must be multiples of dense_groups")
        if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            problems.append(f"kernel_size must be odd, got {self.kernel_size}")
        if problems:
            raise ValueError("Invalid HoVerNetConfig: " + "; ".join(problems))

    # ----------------------------------------------------------------- presets
    @classmethod
    def official(cls, mode: str = "fast", nr_types: int | None = None) -> HoVerNetConfig:
        """Build the exact published architecture (``vqdang/hover_net``).

        Parameters
        ----------
        mode : {"fast", "original"}
            Official model mode.
        nr_types : int or None
            Type channels (6 for PanNuke, 5 for CoNSeP/MoNuSAC), None for untyped models.

        Returns
        -------
        HoVerNetConfig
            The configuration.
        """
        return cls(mode=mode, nr_types=nr_types)

    @classmethod
    def small(cls, nr_types: int | None = None, in_channels: int = 1) -> HoVerNetConfig:
        """Build the plugin's small CPU configuration (about 1 M parameters).

        Same-padded, so the outputs align with the input pixel for pixel.

        Parameters
        ----------
        nr_types : int or None
            Type channels (background included) or None for an untyped model.
        in_channels : int
            1 for greyscale (fluorescence) models, 3 for RGB models.

        Returns
        -------
        HoVerNetConfig
            The configuration.
        """
        return cls(
            mode="fast",
            nr_types=nr_types,
            in_channels=in_channels,
            padding="same",
            stem_channels=16,
            stem_kernel=5,
            block_mid=(8, 24, 64, 128),
            block_out=(16, 48, 128, 256),
            block_units=(1, 2, 2, 2),
            decoder_channels=(64, 32, 32),
            dense_units=(4, 2),
            dense_bottleneck=32,
            dense_growth=16,
            dense_groups=4,
            kernel_size=3,
            input_scale=1.0,
        )

    # ----------------------------------------------------------------- derived
    @property
    def k(self) -> int:
        """Decoder kernel size."""
        if self.kernel_size is not None:
            return self.kernel_size
        return 5 if self.mode == "original" else 3

    @property
    def stem_padded(self) -> bool:
        """Whether ``conv0`` keeps the input size (fast mode or same padding)."""
        return self.padding == "same" or self.mode == "fast"

    @property
    def branches(self) -> tuple[str, ...]:
        """Decoder branch names, in registration (and output) order."""
        return ("tp", "np", "hv") if self.nr_types is not None else ("np", "hv")

    @property
    def skip_crops(self) -> tuple[int, int]:
        """Total pixels centre-cropped from the d0 and d1 skip features (valid padding)."""
        if self.padding == "same":
            return 0, 0
        loss3 = (self.k - 1) * (1 + self.dense_units[0])
        loss2 = (self.k - 1) * (1 + self.dense_units[1])
        crop1 = 2 * loss3
        crop0 = 2 * (crop1 + loss2)
        return crop0, crop1

    @property
    def shrink(self) -> int:
        """How many pixels the output is smaller than the input (per dimension)."""
        stem = 0 if self.stem_padded else self.stem_kernel - 1
        return stem + self.skip_crops[0]

    @property
    def offset(self) -> int:
        """Output pixel (i, j) lies over input pixel (i + offset, j + offset)."""
        return self.shrink // 2

    @property
    def size_residue(self) -> int:
        """Valid input sizes are congruent to this modulo 8."""
        return 0 if self.stem_padded else (self.stem_kernel - 1) % 8

    @property
    def min_size(self) -> int:
        """The smallest valid input size (per dimension)."""
        stem = 0 if self.stem_padded else self.stem_kernel - 1
        if self.padding == "same":
            return 8
        loss3 = (self.k - 1) * (1 + self.dense_units[0])
        loss2 = (self.k - 1) * (1 + self.dense_units[1])
        d0 = 8
        while 2 * (d0 // 4 - loss3) - loss2 < 1 or d0 // 4 - loss3 < 1:
            d0 += 8
        return d0 + stem

    def size_rule(self) -> str:
        """Describe the valid-input-size rule in words.

        Returns
        -------
        str
            For example ``"H and W must be multiples of 8 and >= 96"``.
        """
        if self.size_residue == 0:
            return f"H and W must be multiples of 8 and >= {self.min_size}"
        return f"H and W must be = {self.size_residue} (mod 8) and >= {self.min_size}"

    def is_valid_size(self, size: int) -> bool:
        """Whether ``size`` is a valid input height or width.

        Parameters
        ----------
        size : int
            Height or width in pixels.

        Returns
        -------
        bool
            True when the network accepts it.
        """
        return size >= self.min_size and size % 8 == self.size_residue

    def valid_size_at_least(self, size: int) -> int:
        """Round ``size`` up to the smallest valid input size.

        Parameters
        ----------
        size : int
            A lower bound.

        Returns
        -------
        int
            A valid input height or width.
        """
        size = max(size, self.min_size)
        return size + (self.size_residue - size) % 8

    def output_size(self, size: int) -> int:
        """Output height or width for a valid input size.

        Parameters
        ----------
        size : int
            Input height or width.

        Returns
        -------
        int
            Output height or width.
        """
        return size - self.shrink

    # ----------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of the fields.

        Returns
        -------
        dict
            Field name -> value (tuples as lists).
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`.

        Returns
        -------
        str
            JSON.
        """
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HoVerNetConfig:
        """Build a config from :meth:`to_dict` output.

        Parameters
        ----------
        values : dict
            Field values; unknown names raise.

        Returns
        -------
        HoVerNetConfig
            The configuration.
        """
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(
                f"Unknown HoVerNetConfig field(s) {sorted(unknown)}; valid: {sorted(names)}"
            )
        return cls(**values)


def _type_problems(config: HoVerNetConfig) -> list[str]:
    """Describe the fields of ``config`` whose type is wrong (as read from a file)."""
    problems = []
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in ("mode", "padding"):
            ok = isinstance(value, str)
        elif f.name == "input_scale":
            ok = isinstance(value, Real) and not isinstance(value, bool)
        elif f.name in ("nr_types", "kernel_size"):
            ok = value is None or (isinstance(value, Integral) and not isinstance(value, bool))
        else:  # ints, and the tuples of ints made above
            ok = isinstance(value, tuple) or (
                isinstance(value, Integral) and not isinstance(value, bool)
            )
        if not ok:
            problems.append(f"{f.name} has the wrong type: {value!r}")
    return problems


class TFSamePad2d(nn.Module):
    """TensorFlow-style "same" zero padding, computed from the height only.

    With ``H % stride == 0`` the total pad is ``max(k - stride, 0)``, otherwise
    ``max(k - H % stride, 0)``; ``total // 2`` goes before and the rest after (so stride-2
    convolutions on even sizes pad 0 before and 1 after). The width gets the same pads.

    Parameters
    ----------
    kernel_size : int
        Kernel size of the following convolution.
    stride : int
        Its stride.
    """

    def __init__(self, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` [N, C, H, W] with zeros."""
        size = x.shape[2]
        if size % self.stride == 0:
            total = max(self.kernel_size - self.stride, 0)
        else:
            total = max(self.kernel_size - size % self.stride, 0)
        before = total // 2
        after = total - before
        if total == 0:
            return x
        return F.pad(x, (before, after, before, after))

    def extra_repr(self) -> str:
        """Describe the padding rule in the module's repr."""
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class _Upsample2x(nn.Module):
    """Nearest-neighbour x2 upsampling with the official persistent ``unpool_mat`` buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("unpool_mat", torch.ones(2, 2, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


def _same_conv(
    name: str, in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1
) -> list[tuple[str, nn.Module]]:
    """Build a bias-free conv with TF-"same" zero padding, as ``(name, module)`` children.

    For stride 1 (odd k) the TF rule is symmetric padding k // 2, which the convolution does
    itself (bit-identical, and faster than a separate pad). Stride 2 needs the asymmetric
    :class:`TFSamePad2d` child ``<name>/pad`` (0 before, 1 after on even sizes).
    """
    if stride == 1 and k % 2 == 1:
        return [(name, nn.Conv2d(in_ch, out_ch, k, padding=k // 2, groups=groups, bias=False))]
    return [
        (f"{name}/pad", TFSamePad2d(k, stride)),
        (name, nn.Conv2d(in_ch, out_ch, k, stride=stride, groups=groups, bias=False)),
    ]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5)


def _centre_crop(x: torch.Tensor, total: int) -> torch.Tensor:
    """Remove ``total`` pixels from H and W, half from each side."""
    if total <= 0:
        return x
    before = total // 2
    after = total - before
    return x[:, :, before : x.shape[2] - after, before : x.shape[3] - after]


class _ResidualBlock(nn.Module):
    """Pre-activation ResNet bottleneck block (official ``ResidualBlock``)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, n_units: int, stride: int) -> None:
        super().__init__()
        units = []
        for j in range(n_units):
            layers: list[tuple[str, nn.Module]] = []
            if j > 0:
                layers += [("preact/bn", _bn(out_ch)), ("preact/relu", nn.ReLU())]
            unit_in = in_ch if j == 0 else out_ch
            unit_stride = stride if j == 0 else 1
            layers += [
                ("conv1", nn.Conv2d(unit_in, mid_ch, 1, bias=False)),
                ("conv1/bn", _bn(mid_ch)),
                ("conv1/relu", nn.ReLU()),
                *_same_conv("conv2", mid_ch, mid_ch, 3, stride=unit_stride),
                ("conv2/bn", _bn(mid_ch)),
                ("conv2/relu", nn.ReLU()),
                ("conv3", nn.Conv2d(mid_ch, out_ch, 1, bias=False)),
            ]
            units.append(nn.Sequential(OrderedDict(layers)))
        self.units = nn.ModuleList(units)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(out_ch)), ("relu", nn.ReLU())]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.units[0](x) + self.shortcut(x)
        for unit in self.units[1:]:
            y = unit(y) + y
        return self.blk_bna(y)


class _DenseBlock(nn.Module):
    """Dense block of the decoder: each unit's new features are appended after the old."""

    def __init__(
        self,
        in_ch: int,
        n_units: int,
        k: int,
        bottleneck: int,
        growth: int,
        groups: int,
        same: bool,
    ) -> None:
        super().__init__()
        units = []
        for j in range(n_units):
            ch = in_ch + growth * j
            layers: list[tuple[str, nn.Module]] = [
                ("preact_bna/bn", _bn(ch)),
                ("preact_bna/relu", nn.ReLU()),
                ("conv1", nn.Conv2d(ch, bottleneck, 1, bias=False)),
                ("conv1/bn", _bn(bottleneck)),
                ("conv1/relu", nn.ReLU()),
            ]
            if same:
                layers += _same_conv("conv2", bottleneck, growth, k, groups=groups)
            else:
                layers.append(
                    ("conv2", nn.Conv2d(bottleneck, growth, k, groups=groups, bias=False))
                )
            units.append(nn.Sequential(OrderedDict(layers)))
        self.units = nn.ModuleList(units)
        out_ch = in_ch + growth * n_units
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(out_ch)), ("relu", nn.ReLU())]))
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            new = unit(x)
            x = torch.cat([_centre_crop(x, x.shape[2] - new.shape[2]), new], dim=1)
        return self.blk_bna(x)


def _decoder_branch(config: HoVerNetConfig, out_ch: int) -> nn.Sequential:
    k = config.k
    same = config.padding == "same"
    c3, c2, c1 = config.decoder_channels

    def conva(in_ch: int, out: int) -> list[tuple[str, nn.Module]]:
        if same:
            return _same_conv("conva", in_ch, out, k)
        return [("conva", nn.Conv2d(in_ch, out, k, bias=False))]

    dense_args = dict(
        k=k,
        bottleneck=config.dense_bottleneck,
        growth=config.dense_growth,
        groups=config.dense_groups,
        same=same,
    )
    dense3 = _DenseBlock(c3, config.dense_units[0], **dense_args)
    u3 = nn.Sequential(
        OrderedDict(
            [
                *conva(config.block_out[2], c3),
                ("dense", dense3),
                ("convf", nn.Conv2d(dense3.out_channels, config.block_out[1], 1, bias=False)),
            ]
        )
    )
    dense2 = _DenseBlock(c2, config.dense_units[1], **dense_args)
    u2 = nn.Sequential(
        OrderedDict(
            [
                *conva(config.block_out[1], c2),
                ("dense", dense2),
                ("convf", nn.Conv2d(dense2.out_channels, config.block_out[0], 1, bias=False)),
            ]
        )
    )
    u1 = nn.Sequential(OrderedDict(_same_conv("conva", config.block_out[0], c1, k)))
    u0 = nn.Sequential(
        OrderedDict(
            [
                ("bn", _bn(c1)),
                ("relu", nn.ReLU()),
                ("conv", nn.Conv2d(c1, out_ch, 1, bias=True)),
            ]
        )
    )
    return nn.Sequential(OrderedDict([("u3", u3), ("u2", u2), ("u1", u1), ("u0", u0)]))


class HoVerNet(nn.Module):
    """HoVer-Net with the official module tree (checkpoint compatible).

    Parameters
    ----------
    config : HoVerNetConfig, optional
        Architecture; defaults to ``HoVerNetConfig.official(mode, nr_types)``.
    mode : {"fast", "original"}
        Used only when ``config`` is None.
    nr_types : int or None
        Used only when ``config`` is None.

    Notes
    -----
    ``forward`` takes a float tensor [N, in_channels, H, W] (for official models RGB in
    0-255), divides it by ``config.input_scale`` and returns an ordered dict of logits
    ``tp`` (if typed), ``np``, ``hv``, each [N, C, H - shrink, W - shrink]. Input sizes
    outside ``config.size_rule()`` raise a ValueError before any computation.
    """

    def __init__(
        self,
        config: HoVerNetConfig | None = None,
        *,
        mode: str = "fast",
        nr_types: int | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = HoVerNetConfig.official(mode, nr_types)
        self.config = config
        c = config
        stem_pad = c.stem_kernel // 2 if c.stem_padded else 0
        stem: list[tuple[str, nn.Module]] = [
            (
                "/",
                nn.Conv2d(
                    c.in_channels, c.stem_channels, c.stem_kernel, padding=stem_pad, bias=False
                ),
            ),
            ("bn", _bn(c.stem_channels)),
            ("relu", nn.ReLU()),
        ]
        self.conv0 = nn.Sequential(OrderedDict(stem))
        ins = (c.stem_channels, *c.block_out[:3])
        strides = (1, 2, 2, 2)
        for i in range(4):
            block = _ResidualBlock(
                ins[i], c.block_mid[i], c.block_out[i], c.block_units[i], strides[i]
            )
            self.add_module(f"d{i}", block)
        self.conv_bot = nn.Conv2d(c.block_out[3], c.block_out[2], 1, bias=False)
        out_channels = {"tp": c.nr_types, "np": c.np_channels, "hv": 2}
        self.decoder = nn.ModuleDict(
            OrderedDict((b, _decoder_branch(c, out_channels[b])) for b in c.branches)
        )
        self.upsample2x = _Upsample2x()
        self._init_weights()

    @property
    def mode(self) -> str:
        """``"fast"`` or ``"original"``."""
        return self.config.mode

    @property
    def nr_types(self) -> int | None:
        """Type channels of the ``tp`` branch, or None."""
        return self.config.nr_types

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a ValueError naming the rule when (height, width) is not a valid input size.

        Parameters
        ----------
        height, width : int
            Input size in pixels.

        Raises
        ------
        ValueError
            When either dimension breaks the rule of :meth:`HoVerNetConfig.size_rule`.
        """
        c = self.config
        if not (c.is_valid_size(height) and c.is_valid_size(width)):
            kind = c.mode if c.padding == "valid" else f"{c.mode}/same-padded"
            raise ValueError(
                f"HoVer-Net ({kind} mode) cannot take a {height}x{width} input: {c.size_rule()}."
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the encoder.

        Parameters
        ----------
        x : torch.Tensor
            Input [N, in_channels, H, W] in the model's input range (before scaling).

        Returns
        -------
        list of torch.Tensor
            ``[d0, d1, d2, conv_bot]`` features, d0 and d1 already centre-cropped.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"HoVer-Net expects a tensor [N, {self.config.in_channels}, H, W], "
                f"got {tuple(x.shape)}"
            )
        self.check_input_size(x.shape[2], x.shape[3])
        x = x / self.config.input_scale
        d0 = self.d0(self.conv0(x))
        d1 = self.d1(d0)
        d2 = self.d2(d1)
        d3 = self.conv_bot(self.d3(d2))
        crop0, crop1 = self.config.skip_crops
        return [_centre_crop(d0, crop0), _centre_crop(d1, crop1), d2, d3]

    def decode_to_u1(self, branch: str, feats: list[torch.Tensor]) -> torch.Tensor:
        """Run a decoder branch up to (not including) ``u1``.

        Parameters
        ----------
        branch : str
            ``"tp"``, ``"np"`` or ``"hv"``.
        feats : list of torch.Tensor
            Output of :meth:`encode`.

        Returns
        -------
        torch.Tensor
            The input of ``u1`` (upsampled ``u2`` output plus the cropped d0 skip).
        """
        d0, d1, d2, d3 = feats
        dec = self.decoder[branch]
        u3 = dec.u3(self.upsample2x(d3) + d2)
        u2 = dec.u2(self.upsample2x(u3) + d1)
        return self.upsample2x(u2) + d0

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Compute the branch logits.

        Parameters
        ----------
        x : torch.Tensor
            [N, in_channels, H, W]; official models take RGB in 0-255.

        Returns
        -------
        OrderedDict of str to torch.Tensor
            ``tp`` (typed models), ``np`` and ``hv``, each [N, C, H', W'].
        """
        feats = self.encode(x)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for branch in self.config.branches:
            dec = self.decoder[branch]
            out[branch] = dec.u0(dec.u1(self.decode_to_u1(branch, feats)))
        return out


def count_parameters(model: nn.Module) -> int:
    """Count the parameter elements of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module.

    Returns
    -------
    int
        Sum of ``numel`` over parameters.
    """
    return int(sum(p.numel() for p in model.parameters()))

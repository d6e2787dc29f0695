"""Widths, depths and geometry of a HoVer-Net: the official presets and the built-in small one.

:class:`HoVerNetConfig` says how a :class:`~.hovernet.HoVerNet` is built (``"fast"`` or
``"original"`` mode, type channels, input channels, ``"valid"`` or ``"same"`` padding, block
widths and depths) and derives its geometry: how much smaller the output is than the input,
which input sizes are valid, and where an output pixel lies over the input. Saved files
carry it as JSON (:meth:`HoVerNetConfig.to_json`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real
from typing import Any

__all__ = ["HoVerNetConfig"]

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

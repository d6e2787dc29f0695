"""The building blocks of HoVer-Net, with the official module names (checkpoint compatible).

TensorFlow-style "same" padding, the pre-activation residual blocks of the encoder, the dense
blocks of the decoder and a decoder branch (``u3``, ``u2``, ``u1``, ``u0``) as
:class:`~.hovernet.HoVerNet` assembles them; module names contain ``/`` as the official
``state_dict()`` keys do.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .hovernet_config import HoVerNetConfig

__all__ = ["TFSamePad2d", "bn", "centre_crop", "decoder_branch", "ResidualBlock", "Upsample2x"]


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


class Upsample2x(nn.Module):
    """Nearest-neighbour x2 upsampling with the official persistent ``unpool_mat`` buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("unpool_mat", torch.ones(2, 2, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat each pixel of ``x`` [N, C, H, W] 2x2 times."""
        return F.interpolate(x, scale_factor=2, mode="nearest")


def same_conv(
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


def bn(channels: int) -> nn.BatchNorm2d:
    """Build the official models' BatchNorm (epsilon 1e-5) over ``channels``."""
    return nn.BatchNorm2d(channels, eps=1e-5)


def centre_crop(x: torch.Tensor, total: int) -> torch.Tensor:
    """Remove ``total`` pixels from H and W, half from each side."""
    if total <= 0:
        return x
    before = total // 2
    after = total - before
    return x[:, :, before : x.shape[2] - after, before : x.shape[3] - after]


class ResidualBlock(nn.Module):
    """Pre-activation ResNet bottleneck block (official ``ResidualBlock``)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, n_units: int, stride: int) -> None:
        super().__init__()
        units = []
        for j in range(n_units):
            layers: list[tuple[str, nn.Module]] = []
            if j > 0:
                layers += [("preact/bn", bn(out_ch)), ("preact/relu", nn.ReLU())]
            unit_in = in_ch if j == 0 else out_ch
            unit_stride = stride if j == 0 else 1
            layers += [
                ("conv1", nn.Conv2d(unit_in, mid_ch, 1, bias=False)),
                ("conv1/bn", bn(mid_ch)),
                ("conv1/relu", nn.ReLU()),
                *same_conv("conv2", mid_ch, mid_ch, 3, stride=unit_stride),
                ("conv2/bn", bn(mid_ch)),
                ("conv2/relu", nn.ReLU()),
                ("conv3", nn.Conv2d(mid_ch, out_ch, 1, bias=False)),
            ]
            units.append(nn.Sequential(OrderedDict(layers)))
        self.units = nn.ModuleList(units)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.blk_bna = nn.Sequential(OrderedDict([("bn", bn(out_ch)), ("relu", nn.ReLU())]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the units with their shortcuts, then the block's BatchNorm and ReLU."""
        y = self.units[0](x) + self.shortcut(x)
        for unit in self.units[1:]:
            y = unit(y) + y
        return self.blk_bna(y)


class DenseBlock(nn.Module):
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
                ("preact_bna/bn", bn(ch)),
                ("preact_bna/relu", nn.ReLU()),
                ("conv1", nn.Conv2d(ch, bottleneck, 1, bias=False)),
                ("conv1/bn", bn(bottleneck)),
                ("conv1/relu", nn.ReLU()),
            ]
            if same:
                layers += same_conv("conv2", bottleneck, growth, k, groups=groups)
            else:
                layers.append(
                    ("conv2", nn.Conv2d(bottleneck, growth, k, groups=groups, bias=False))
                )
            units.append(nn.Sequential(OrderedDict(layers)))
        self.units = nn.ModuleList(units)
        out_ch = in_ch + growth * n_units
        self.blk_bna = nn.Sequential(OrderedDict([("bn", bn(out_ch)), ("relu", nn.ReLU())]))
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Append each unit's new features to its (centre-cropped) input, then BN and ReLU."""
        for unit in self.units:
            new = unit(x)
            x = torch.cat([centre_crop(x, x.shape[2] - new.shape[2]), new], dim=1)
        return self.blk_bna(x)


def decoder_branch(config: HoVerNetConfig, out_ch: int) -> nn.Sequential:
    """Build one decoder branch: ``u3`` and ``u2`` (dense), ``u1`` (conv) and ``u0`` (output).

    Parameters
    ----------
    config : HoVerNetConfig
        The architecture.
    out_ch : int
        Output channels of the branch's ``u0.conv``.

    Returns
    -------
    torch.nn.Sequential
        Children ``u3``, ``u2``, ``u1``, ``u0`` with the official names inside.
    """
    k = config.k
    same = config.padding == "same"
    c3, c2, c1 = config.decoder_channels

    def conva(in_ch: int, out: int) -> list[tuple[str, nn.Module]]:
        if same:
            return same_conv("conva", in_ch, out, k)
        return [("conva", nn.Conv2d(in_ch, out, k, bias=False))]

    dense_args = dict(
        k=k,
        bottleneck=config.dense_bottleneck,
        growth=config.dense_growth,
        groups=config.dense_groups,
        same=same,
    )
    dense3 = DenseBlock(c3, config.dense_units[0], **dense_args)
    u3 = nn.Sequential(
        OrderedDict(
            [
                *conva(config.block_out[2], c3),
                ("dense", dense3),
                ("convf", nn.Conv2d(dense3.out_channels, config.block_out[1], 1, bias=False)),
            ]
        )
    )
    dense2 = DenseBlock(c2, config.dense_units[1], **dense_args)
    u2 = nn.Sequential(
        OrderedDict(
            [
                *conva(config.block_out[1], c2),
                ("dense", dense2),
                ("convf", nn.Conv2d(dense2.out_channels, config.block_out[0], 1, bias=False)),
            ]
        )
    )
    u1 = nn.Sequential(OrderedDict(same_conv("conva", config.block_out[0], c1, k)))
    u0 = nn.Sequential(
        OrderedDict(
            [
                ("bn", bn(c1)),
                ("relu", nn.ReLU()),
                ("conv", nn.Conv2d(c1, out_ch, 1, bias=True)),
            ]
        )
    )
    return nn.Sequential(OrderedDict([("u3", u3), ("u2", u2), ("u1", u1), ("u0", u0)]))

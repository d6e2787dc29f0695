"""HoVer-Net (Graham et al., 2019) with module names that load official checkpoints.

The network follows ``shared/reference/hovernet.md`` section (a): a pre-activation
ResNet-50 encoder (``conv0``, ``d0`` ... ``d3``, ``conv_bot``) and three decoder branches
``tp`` / ``np`` / ``hv`` made of dense blocks. Module names contain ``/`` (and one module is
literally called ``/``) so that ``state_dict()`` keys, their order, shapes and dtypes equal the
official ones exactly; official ``.tar`` / ``.pth`` files load with ``strict=True``.

The same code builds the small CPU models shipped with this plugin: a
:class:`~.hovernet_config.HoVerNetConfig` sets widths, depths, the input channel count and
the padding (``"valid"`` is the official geometry; ``"same"`` keeps the output the size of
the input). The blocks are in :mod:`.hovernet_blocks`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .hovernet_blocks import ResidualBlock, TFSamePad2d, Upsample2x, bn, centre_crop, decoder_branch
from .hovernet_config import HoVerNetConfig

# The constructor takes a HoVerNetConfig and TFSamePad2d is one of the network's modules:
# both stay importable from here, where scripts and tests have always found them.
__all__ = ["HoVerNet", "HoVerNetConfig", "TFSamePad2d", "count_parameters"]


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
            ("bn", bn(c.stem_channels)),
            ("relu", nn.ReLU()),
        ]
        self.conv0 = nn.Sequential(OrderedDict(stem))
        ins = (c.stem_channels, *c.block_out[:3])
        strides = (1, 2, 2, 2)
        for i in range(4):
            block = ResidualBlock(
                ins[i], c.block_mid[i], c.block_out[i], c.block_units[i], strides[i]
            )
            self.add_module(f"d{i}", block)
        self.conv_bot = nn.Conv2d(c.block_out[3], c.block_out[2], 1, bias=False)
        out_channels = {"tp": c.nr_types, "np": c.np_channels, "hv": 2}
        self.decoder = nn.ModuleDict(
            OrderedDict((b, decoder_branch(c, out_channels[b])) for b in c.branches)
        )
        self.upsample2x = Upsample2x()
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
        return [centre_crop(d0, crop0), centre_crop(d1, crop1), d2, d3]

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

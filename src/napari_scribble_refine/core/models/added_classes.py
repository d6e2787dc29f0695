"""Helpers shared by the generic adapters: adding an output class, listing names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def format_names(names: Sequence[str], limit: int = 80) -> str:
    """Quote names for an error message, at most ``limit`` of them."""
    shown = list(names[:limit])
    more = len(names) - len(shown)
    text = ", ".join(repr(n) for n in shown)
    return text + (f", ... ({more} more)" if more > 0 else "")


def check_new_class(class_names: Sequence[str], name: str, init_from: int) -> None:
    """Validate the arguments of ``add_class``.

    Parameters
    ----------
    class_names : sequence of str
        Current classes.
    name : str
        Proposed new class name.
    init_from : int
        Proposed source class index.

    Raises
    ------
    ValueError
        If the name is empty or already used, or ``init_from`` is not a class index.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a new class needs a non-empty name, got {name!r}")
    if name in class_names:
        raise ValueError(f"class {name!r} already exists: {list(class_names)}")
    if not isinstance(init_from, (int, np.integer)) or not 0 <= init_from < len(class_names):
        raise ValueError(
            f"init_from must be a class index in [0, {len(class_names) - 1}], got {init_from!r}"
        )


def grow_output_layer(layer: nn.Module, n_classes: int, init_from: int) -> None:
    """Append one output channel to a conv / linear layer, copied from ``init_from``.

    Parameters
    ----------
    layer : torch.nn.Module
        ``Conv1d/2d/3d``, ``ConvTranspose2d`` or ``Linear`` with ``n_classes`` outputs.
    n_classes : int
        Current number of outputs.
    init_from : int
        The output channel to copy.

    Raises
    ------
    ValueError
        If the layer is of another kind or does not have ``n_classes`` outputs.
    """
    if isinstance(layer, nn.ConvTranspose2d):
        axis, attr = 1, "out_channels"
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        axis, attr = 0, "out_channels"
    elif isinstance(layer, nn.Linear):
        axis, attr = 0, "out_features"
    else:
        raise ValueError(
            f"cannot add a class: the final layer is a {type(layer).__name__}, expected a "
            "convolution or linear layer"
        )
    weight = layer.weight
    if weight.shape[axis] != n_classes:
        raise ValueError(
            f"cannot add a class: the final layer has {weight.shape[axis]} outputs, "
            f"expected one per class ({n_classes})"
        )
    if getattr(layer, "groups", 1) != 1:
        raise ValueError("cannot add a class to a grouped final convolution")
    with torch.no_grad():
        new_w = torch.cat([weight, weight.narrow(axis, init_from, 1)], dim=axis)
        layer.weight = nn.Parameter(new_w, requires_grad=weight.requires_grad)
        if layer.bias is not None:
            bias = layer.bias
            new_b = torch.cat([bias, bias[init_from : init_from + 1]])
            layer.bias = nn.Parameter(new_b, requires_grad=bias.requires_grad)
    setattr(layer, attr, n_classes + 1)

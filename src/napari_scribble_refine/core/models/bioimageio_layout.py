"""The tensors a bioimage.io rdf describes: axes, sizes, pre- and postprocessing.

What the package describes is applied around its network:

* the input preprocessing (every operation of the 0.5 spec: ``ensure_dtype``,
  ``zero_mean_unit_variance``, ``fixed_zero_mean_unit_variance``, ``scale_linear``,
  ``scale_range``, ``clip``, ``binarize``, ``sigmoid``, ``softmax``), on the whole image; per
  slice of a stack when the statistics are per sample;
* the output: one channel with ``sigmoid`` postprocessing becomes two classes (background
  logit 0, foreground logit = the network's output before the sigmoid); a single probability
  channel without it (a network that ends with its own sigmoid) gives logit(p); several channels
  with ``softmax``, or without postprocessing, are the class logits;
* the input sizes the axes allow (inputs are padded and the outputs cropped back), and the
  output halo as the tile halo.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._prepare import working_float

__all__ = [
    "PREPROCESSING",
    "Layout",
    "Network",
    "preprocess",
    "preprocess_image",
    "read_layout",
    "resolve_class_names",
    "valid_size",
]

PREPROCESSING = (
    "ensure_dtype",
    "zero_mean_unit_variance",
    "fixed_zero_mean_unit_variance",
    "scale_linear",
    "scale_range",
    "clip",
    "binarize",
    "sigmoid",
    "softmax",
)
"""Preprocessing operations applied to the image (all those of the 0.5 spec)."""

_GENERIC_NAME = re.compile(
    r"^(channel|ch|c|class|output|out|prediction|pred|probability|probabilities|prob|"
    r"logit|logits|mask|segmentation)?[ _-]?\d*$",
    re.IGNORECASE,
)
_EPS_FIXED = 1e-6  # bioimageio.core's epsilon of fixed_zero_mean_unit_variance


# ---------------------------------------------------------------------- tensors
@dataclass
class Layout:
    """What the rdf says about the input and output tensors, as plain data."""

    in_channels: int
    batched: bool  # the network takes a batch axis of any size
    batch_axis: bool
    channel_in: bool
    channel_out: bool
    rules: list[tuple[int, int, bool]]  # per image axis (rows, columns): min, step, fixed
    transpose: bool  # the tensor's spatial axes are (x, y)
    axis_index: dict[str, int]  # axis id -> canonical (sample, y, x, channel) axis
    preprocessing: list[tuple[str, dict[str, Any]]]
    mode: str  # "sigmoid", "probability" or "logits"
    offset: float
    n_out: int
    out_names: list[str]
    halo: int
    notes: list[str] = field(default_factory=list)


def _kwargs(op: Any) -> dict[str, Any]:
    raw = op.kwargs.model_dump() if hasattr(op.kwargs, "model_dump") else {}
    return {
        k: ([str(a) for a in v] if k == "axes" and v is not None else v) for k, v in raw.items()
    }


def _spatial(axes: Sequence[Any], label: str, what: str) -> tuple[bool, bool, list[Any]]:
    kinds = [a.type for a in axes]
    expected = [k for k in ("batch", "channel") if k in kinds] + ["space", "space"]
    if kinds != expected:
        raise ValueError(
            f"{label}: {what} axes {[str(a.id) for a in axes]} ({', '.join(kinds)}) are not "
            "supported: expected 2D images as (batch), (channel), y, x"
        )
    return "batch" in kinds, "channel" in kinds, [a for a in axes if a.type == "space"]


def read_layout(descr: Any, label: str) -> Layout:
    """Read the input and output tensors of a model description; ValueError if unsupported."""
    if len(descr.inputs) != 1:
        raise ValueError(
            f"{label}: the model takes {len(descr.inputs)} input tensors; only single-input "
            "models are supported"
        )
    inp, out = descr.inputs[0], descr.outputs[0]
    notes = []
    if len(descr.outputs) > 1:
        notes.append(f"output {str(out.id)!r} read, {len(descr.outputs) - 1} other(s) ignored")
    batch_axis, channel_in, space = _spatial(inp.axes, label, "input")
    _, channel_out, out_space = _spatial(out.axes, label, "output")
    if [str(a.id) for a in out_space] != [str(a.id) for a in space]:
        raise ValueError(
            f"{label}: the output's spatial axes {[str(a.id) for a in out_space]} differ from "
            f"the input's {[str(a.id) for a in space]}"
        )
    by_type = {a.type: a for a in inp.axes}
    in_channels = len(by_type["channel"].channel_names) if channel_in else 1
    batch = by_type.get("batch")
    batched = batch is not None and batch.size is None
    rules = []
    for ax in space:
        size = ax.size
        if isinstance(size, int):
            rules.append((size, size, True))
        elif hasattr(size, "step"):
            rules.append((int(size.min), int(size.step), False))
        else:
            raise ValueError(
                f"{label}: input axis {str(ax.id)!r} takes its size from another tensor "
                f"({size}); not supported"
            )
    ids = [str(a.id) for a in space]
    transpose = ids == ["x", "y"]
    if transpose:
        rules.reverse()
    axis_index = {"y": 1, "x": 2} if set(ids) == {"x", "y"} else {ids[0]: 1, ids[1]: 2}
    if batch is not None:
        axis_index[str(batch.id)] = 0
    axis_index["batch"] = 0
    if channel_in:
        axis_index[str(by_type["channel"].id)] = 3
    axis_index["channel"] = 3
    pre = [(str(op.id), _kwargs(op)) for op in inp.preprocessing]
    ref = str(inp.id)
    for op, kw in pre:
        if op not in PREPROCESSING:
            raise ValueError(
                f"{label}: input preprocessing {op!r} is not supported; supported: "
                f"{', '.join(PREPROCESSING)}"
            )
        if kw.get("reference_tensor") not in (None, ref):
            raise ValueError(
                f"{label}: preprocessing {op!r} refers to tensor {kw['reference_tensor']!r}; "
                "only the input itself is supported"
            )
    out_names = _channel_names(out)
    n_out = len(out_names) if channel_out else 1
    mode, offset = _output_mode(out, n_out, label)
    halo = max((int(getattr(a, "halo", 0) or 0) for a in out_space), default=0)
    return Layout(
        in_channels=in_channels,
        batched=batched,
        batch_axis=batch_axis,
        channel_in=channel_in,
        channel_out=channel_out,
        rules=rules,
        transpose=transpose,
        axis_index=axis_index,
        preprocessing=pre,
        mode=mode,
        offset=offset,
        n_out=n_out,
        out_names=[str(n) for n in out_names],
        halo=halo,
        notes=notes,
    )


def _channel_names(out: Any) -> list[str]:
    for ax in out.axes:
        if ax.type == "channel":
            return [str(n) for n in ax.channel_names]
    return []


def _output_mode(out: Any, n_out: int, label: str) -> tuple[str, float]:
    """How the output becomes class logits: ``(mode, foreground logit offset)``."""
    ops = []
    for op in out.postprocessing:
        kw = _kwargs(op)
        if str(op.id) == "ensure_dtype" and str(kw.get("dtype", "")).startswith("float"):
            continue
        ops.append((str(op.id), kw))
    supported = "sigmoid (then binarize), softmax over the channels, or none"
    mode, offset = "logits", 0.0
    first = ops[0][0] if ops else None
    rest = ops[1:]
    if first == "sigmoid":
        offset = 0.0
        if rest and rest[0][0] == "binarize" and isinstance(rest[0][1].get("threshold"), float):
            t = rest[0][1]["threshold"]
            if not 0.0 < t < 1.0:
                raise ValueError(f"{label}: binarize threshold {t} after sigmoid is not in (0, 1)")
            offset, rest = math.log(t / (1.0 - t)), rest[1:]
        if n_out != 1:
            raise ValueError(
                f"{label}: the output has {n_out} sigmoid channels (independent "
                "probabilities, not classes); only a single sigmoid channel is supported"
            )
        mode = "sigmoid"
    elif first == "softmax":
        if str(ops[0][1].get("axis", "channel")) != "channel" or n_out < 2:
            raise ValueError(f"{label}: softmax postprocessing must run over >= 2 channels")
        mode, offset = "logits", 0.0
    elif first is None:
        data = out.data[0] if isinstance(out.data, (list, tuple)) else out.data
        value_range = tuple(getattr(data, "range", None) or ())
        if n_out >= 2:
            mode, offset = "logits", 0.0
        elif value_range == (0.0, 1.0):
            mode, offset = "probability", 0.0
        else:
            raise ValueError(
                f"{label}: the single output channel has no sigmoid postprocessing and no "
                "data range [0, 1], so it is neither a logit nor a probability as far as the "
                "description says"
            )
    else:
        rest = ops
    if rest:
        raise ValueError(
            f"{label}: output postprocessing {rest[0][0]!r} is not supported: this plugin "
            f"reads class probabilities; supported postprocessing: {supported}"
        )
    return mode, offset


def resolve_class_names(
    layout: Layout, class_names: Sequence[str] | None, n_classes: int, name: str
) -> list[str]:
    """Check the given class names against ``n_classes``, else name them from the rdf."""
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(names) != n_classes:
            raise ValueError(
                f"{name} outputs {n_classes} classes but {len(names)} class names "
                f"were given ({names})"
            )
        return names
    given = layout.out_names if len(layout.out_names) == layout.n_out else []
    if layout.mode != "logits":
        fg = given[0] if given and not _GENERIC_NAME.match(given[0]) else "nucleus"
        return ["background", fg]
    if given and not all(_GENERIC_NAME.match(n) for n in given):
        return given
    return ["background"] + [f"class {i}" for i in range(1, n_classes)]


# ---------------------------------------------------------------------- preprocessing
def _reduce_axes(axes: Sequence[str] | None, index: dict[str, int], op: str) -> tuple[int, ...]:
    if axes is None:
        return (0, 1, 2, 3)
    unknown = [a for a in axes if a not in index]
    if unknown:
        raise ValueError(f"preprocessing {op!r}: unknown axes {unknown}")
    return tuple(sorted({index[a] for a in axes}))


def _along(value: Any, axis: str | None, index: dict[str, int], op: str) -> Any:
    if axis is None or not isinstance(value, list):
        return value[0] if isinstance(value, list) and len(value) == 1 else value
    if axis not in index:
        raise ValueError(f"preprocessing {op!r}: unknown axis {axis!r}")
    shape = [1, 1, 1, 1]
    shape[index[axis]] = len(value)
    return np.asarray(value, dtype=np.float64).reshape(shape)


def preprocess(
    data: np.ndarray, ops: Sequence[tuple[str, dict[str, Any]]], axis_index: dict[str, int]
) -> np.ndarray:
    """Apply bioimage.io preprocessing operations to a (sample, Y, X, channel) array.

    Parameters
    ----------
    data : numpy.ndarray
        Shape (S, Y, X, C); not modified.
    ops : sequence of (str, dict)
        Operation ids and their keyword arguments, as in the rdf.
    axis_index : dict
        Axis id -> array axis (0 sample/batch, 1 y, 2 x, 3 channel).

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.

    Raises
    ------
    ValueError
        For an operation or axis this function does not know, or per-axis values whose
        number does not match the axis.
    """
    x = working_float(data)
    for op, kw in ops:
        axes = kw.get("axes")
        if op == "ensure_dtype":
            x = x.astype(kw["dtype"])
        elif op == "zero_mean_unit_variance":
            red = _reduce_axes(axes, axis_index, op)
            mean = x.mean(axis=red, keepdims=True, dtype=np.float64)
            std = x.std(axis=red, keepdims=True, dtype=np.float64)
            x = (x - mean) / (std + kw.get("eps", 1e-6))
        elif op == "fixed_zero_mean_unit_variance":
            mean = _along(kw["mean"], kw.get("axis"), axis_index, op)
            std = _along(kw["std"], kw.get("axis"), axis_index, op)
            x = (x - mean) / (np.asarray(std) + _EPS_FIXED)
        elif op == "scale_linear":
            gain = _along(kw.get("gain", 1.0), kw.get("axis"), axis_index, op)
            offset = _along(kw.get("offset", 0.0), kw.get("axis"), axis_index, op)
            x = x * gain + offset
        elif op == "scale_range":
            red = _reduce_axes(axes, axis_index, op)
            lo = np.percentile(x, kw.get("min_percentile", 0.0), axis=red, keepdims=True)
            hi = np.percentile(x, kw.get("max_percentile", 100.0), axis=red, keepdims=True)
            x = (x - lo) / (hi - lo + kw.get("eps", 1e-6))
        elif op == "clip":
            red = _reduce_axes(axes, axis_index, op)
            lo, hi = kw.get("min"), kw.get("max")
            if kw.get("min_percentile") is not None:
                lo = np.percentile(x, kw["min_percentile"], axis=red, keepdims=True)
            if kw.get("max_percentile") is not None:
                hi = np.percentile(x, kw["max_percentile"], axis=red, keepdims=True)
            x = np.clip(x, lo, hi)
        elif op == "binarize":
            x = (x > _along(kw["threshold"], kw.get("axis"), axis_index, op)).astype(np.float32)
        elif op == "sigmoid":
            x = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
        elif op == "softmax":
            ax = _reduce_axes([str(kw.get("axis", "channel"))], axis_index, op)[0]
            e = np.exp(x - x.max(axis=ax, keepdims=True))
            x = e / e.sum(axis=ax, keepdims=True)
        else:
            raise ValueError(
                f"preprocessing {op!r} is not supported; supported: {', '.join(PREPROCESSING)}"
            )
        if np.shape(x) != data.shape:
            raise ValueError(
                f"preprocessing {op!r}: per-axis values do not match the image's shape "
                f"{data.shape} (sample, y, x, channel)"
            )
    return np.asarray(x, dtype=np.float32)


def preprocess_image(
    image: np.ndarray,
    in_channels: int,
    ops: Sequence[tuple[str, dict[str, Any]]],
    axis_index: dict[str, int],
) -> np.ndarray:
    """Apply :func:`preprocess` to a (Y, X), (Y, X, C), (Z, Y, X) or (Z, Y, X, C) image."""
    data = np.asarray(image)
    c = in_channels
    colour = data.ndim == 4 or (data.ndim == 3 and c > 1 and data.shape[-1] in (c, 4))
    if data.ndim == 2:
        canon = data[None, ..., None]
    elif data.ndim == 3:
        canon = data[None] if colour else data[..., None]
    elif data.ndim == 4:
        canon = data
    else:
        raise ValueError(f"expected (Y, X), (Y, X, C) or (Z, Y, X), got shape {data.shape}")
    if canon.shape[-1] == 4 and c == 3:
        canon = canon[..., :3]
    if canon.shape[-1] == 1 and c > 1:
        canon = np.repeat(canon, c, axis=-1)
    if canon.shape[-1] != c:
        raise ValueError(
            f"image: the model takes {c} channel(s) but the image has {canon.shape[-1]}"
        )
    out = preprocess(canon, ops, axis_index)
    if data.ndim == 2:
        return out[0, ..., 0] if c == 1 else out[0]
    if data.ndim == 3:
        return out[0] if colour else out[..., 0]
    return out


# ---------------------------------------------------------------------- network
def valid_size(n: int, rule: tuple[int, int]) -> int:
    """Return the smallest side >= ``n`` that a ``(min, step)`` size rule allows."""
    low, step = rule
    return low if n <= low else low + math.ceil((n - low) / step) * step


def _pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    ph, pw = height - x.shape[-2], width - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class Network(nn.Module):
    """The package's network between [N, C, H, W] images and class logits [N, K, H, W]."""

    def __init__(self, net: nn.Module, layout: Layout) -> None:
        super().__init__()
        self.net = net
        self.rules = [(low, step) for low, step, _ in layout.rules]
        self.transpose = layout.transpose
        self.batched = layout.batched
        self.batch_axis = layout.batch_axis
        self.channel_in = layout.channel_in
        self.channel_out = layout.channel_out
        self.mode = layout.mode
        self.offset = float(layout.offset)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on a batch of a valid size; return [N, C_out, H, W]."""
        if self.transpose:
            x = x.transpose(-1, -2)
        if not self.channel_in:
            x = x[:, 0]
        if self.batched:
            y = self.net(x)
        elif self.batch_axis:
            y = torch.cat([self.net(x[i : i + 1]) for i in range(x.shape[0])])
        else:
            y = torch.stack([self.net(x[i]) for i in range(x.shape[0])])
        if isinstance(y, (tuple, list)):
            y = y[0]
        y = y if self.channel_out else y.unsqueeze(1)
        return y.transpose(-1, -2) if self.transpose else y

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """Pad [N, C, H, W] at the bottom and right to the next size the network takes."""
        h, w = x.shape[-2:]
        return _pad(x, valid_size(h, self.rules[0]), valid_size(w, self.rules[1]))

    def classes(self, y: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Turn the network's output [N, C_out, ...] into class logits [N, K, ...].

        ``mode`` overrides the output's: ``"sigmoid"`` for the input of a network's final
        sigmoid when the output is a probability.
        """
        mode = mode or self.mode
        if mode == "logits":
            return y
        if mode == "probability":
            y = torch.logit(y.clamp(1e-7, 1 - 1e-7))
        if self.offset:
            y = y - self.offset
        return torch.cat([torch.zeros_like(y[:, :1]), y], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of the same height and width as ``x`` (padded and cropped back)."""
        h, w = x.shape[-2:]
        return self.classes(self.raw(self.padded(x))[..., :h, :w])

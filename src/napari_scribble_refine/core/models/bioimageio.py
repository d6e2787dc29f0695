"""bioimage.io model packages: a package folder, its ``.zip`` or its rdf (``bioimageio.yaml``).

The description is parsed with ``bioimageio.spec`` (the optional extra ``bioimageio``) with
``perform_io_checks=False``: nothing is downloaded or validated online; files are read from the
package only and remote weights are skipped. The head is chosen by parameter-name prefix
(default: the network's last convolution). When the network is a Python module (a
``pytorch_state_dict`` entry, or TorchScript weights that its architecture file reproduces on a
probe) and the head is its final layer, the network below the head runs once and is cached;
otherwise, as with :class:`~napari_scribble_refine.core.models.torchscript.TorchScriptModel`,
every refinement step runs the whole network and only the head's parameters get gradients.

What the package describes (see :mod:`.bioimageio_layout`) is applied around its network: the
input preprocessing, the output as class logits, the input sizes the axes allow and the output
halo as the tile halo. Reading the package and its weights: :mod:`.bioimageio_package`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._prepare import input_batch
from .added_classes import check_new_class, format_names
from .base import BatchedFeatures, Features, SegmentationModel
from .bioimageio_layout import (
    Layout,
    Network,
    preprocess,
    preprocess_image,
    read_layout,
    resolve_class_names,
    valid_size,
)
from .bioimageio_package import (
    Package,
    build_architecture,
    choose_weights,
    load_network,
    parse_description,
)
from .module import Captured, is_pointwise, module_halo
from .torchscript import PrefixedHead, check_prefixes, owner_of

__all__ = ["BioImageIOModel"]

_PROBE_MIN = 64


def _kind(module: nn.Module) -> str:
    return str(getattr(module, "original_name", type(module).__name__))


# ---------------------------------------------------------------------- adapter
def _saved_head(descr: Any) -> list[str] | None:
    """Return the head a package exported by this plugin names in its rdf's config, if any."""
    config = getattr(descr, "config", None)
    extra = getattr(config, "model_extra", None) or {}
    own = extra.get("napari_scribble_refine") if isinstance(extra, dict) else None
    head = own.get("head") if isinstance(own, dict) else None
    return [str(h) for h in head] if isinstance(head, list) and head else None


class BioImageIOModel(PrefixedHead, BatchedFeatures, SegmentationModel):
    """A bioimage.io model package, tuned through parameters chosen by name prefix.

    Parameters
    ----------
    path : str or os.PathLike
        A package folder, its ``.zip``, or its rdf (``bioimageio.yaml`` / ``rdf.yaml``).
    allow_code : bool
        Required: TorchScript weights and Python architecture files run code from the package.
    head : str or sequence of str, optional
        Parameter-name prefix(es) of the head within the package's network, e.g. ``"output"``.
        Default: the network's last convolution (the last parameterised layer if none).
    class_names : sequence of str, optional
        Output classes, background first. Default: from the output's channel names where
        they name classes, else ``"background", "nucleus"`` for a single sigmoid channel and
        ``"background", "class 1", ...`` for class logits.
    weights : {"torchscript", "pytorch_state_dict"}, optional
        The weights entry to load. Default: the first of these present in the package.
    size_multiple : int, optional
        For inputs of fixed size: the side multiple the network accepts (default: found by
        probing the network, else the fixed size itself).
    use_architecture : bool
        Run TorchScript weights in the package's Python architecture (the
        ``pytorch_state_dict`` entry's file, when present) if it gives the same output on a
        probe: the network below a final-layer head then runs once instead of every step.
    name : str, optional
        Name shown to users; defaults to the package's name.

    Attributes
    ----------
    description : str
        One sentence saying what was loaded (also given as a :class:`UserWarning`).
    weights_format : str
        The weights entry that was loaded.
    trunk_halo : int
        The output halo from the rdf: context each tile of a large image gets.

    Warns
    -----
    UserWarning
        Before loading: the package's weights can execute code. After loading: the
        :attr:`description`.

    Raises
    ------
    ValueError
        If the package cannot be read or is invalid, describes something this adapter cannot
        run (names the file and the problem), has no usable weights, or ``allow_code`` is off.
    ImportError
        If ``bioimageio.spec`` (the extra ``bioimageio``) is not installed.
    FileNotFoundError
        If ``path`` does not exist.
    """

    trunk_is_cached = False
    head_is_pointwise = False
    head_halo = 0

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        allow_code: bool = False,
        head: str | Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        weights: str | None = None,
        size_multiple: int | None = None,
        use_architecture: bool = True,
        name: str | None = None,
    ) -> None:
        where = Path(os.fspath(path)).expanduser()
        if not where.exists():
            raise FileNotFoundError(f"bioimage.io package {str(where)!r} does not exist")
        package = Package(where)
        descr = parse_description(package)
        label = repr(str(package.source))
        layout = read_layout(descr, label)
        try:  # a dry run: unsupported operations or axes fail before any code loads
            preprocess(
                np.zeros((1, 8, 8, layout.in_channels)), layout.preprocessing, layout.axis_index
            )
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from err
        fmt, notes = choose_weights(descr, package, label, weights)
        if not allow_code:
            raise ValueError(
                f"{label} is a bioimage.io package whose weights ({fmt}) run code from the "
                "package when the model does. Load it only if you trust its source, with "
                "load_model(path, allow_code=True)."
            )
        kind = "TorchScript files" if fmt == "torchscript" else "Python architecture files"
        warnings.warn(
            f"Loading bioimage.io package {str(where)!r} ({fmt} weights): {kind} can execute "
            "code; only load files from sources you trust.",
            UserWarning,
            stacklevel=2,
        )
        self.name = name or str(descr.name)
        self.path = where
        self.weights_format = fmt
        self.in_channels = layout.in_channels
        self.preprocessing = layout.preprocessing
        self._axis_index = layout.axis_index
        self.trunk_halo = layout.halo or 64
        net = load_network(fmt, descr, package).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self._net = Network(net, layout)
        self._fit_sizes(layout, size_multiple, label)
        adopt = use_architecture and fmt == "torchscript"
        runs_in = self._adopt_architecture(descr, package) if adopt else ""
        n_classes = self._probe(label)
        self.class_names = resolve_class_names(layout, class_names, n_classes, self.name)
        self._prefixes, chosen = self._head(head if head is not None else _saved_head(descr))
        split = self._split()
        self.description = self._describe(descr, layout, fmt, notes, runs_in, chosen, split)
        warnings.warn(self.description, UserWarning, stacklevel=2)

    # ------------------------------------------------------------------ set-up
    def _fit_sizes(self, layout: Layout, size_multiple: int | None, label: str) -> None:
        """Decide the input sizes; for fixed sizes, find the multiple the network accepts."""
        if size_multiple is not None and size_multiple < 1:
            raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
        found: dict[int, int] = {}
        self._size_note = ""
        for i, (low, _, fixed) in enumerate(layout.rules):
            if not fixed:
                continue
            if size_multiple is not None:
                self._net.rules[i] = (size_multiple, size_multiple)
                continue
            if low not in found:
                candidates = [2**k for k in range(int(math.log2(low)) + 1)] + [low]
                # a side that is a multiple of m but not of 2m tells whether m is enough
                m = next((m for m in candidates if self._runs(m * (math.ceil(64 / m) | 1))), 0)
                if m == 0:
                    raise ValueError(
                        f"{label}: the network does not run on inputs of its size {low}"
                    )
                if m != low:
                    self._size_note = f" (the rdf fixes {low}; the network also runs on these)"
                found[low] = m
            self._net.rules[i] = (found[low], found[low])
        self.size_multiple = math.lcm(*(step for _, step in self._net.rules))

    def _runs(self, side: int) -> bool:
        x = torch.zeros((1, self.in_channels, side, side))
        try:
            with torch.no_grad():
                y = self._net.raw(x)
        except Exception:  # noqa: BLE001 - a failure means "not this size"
            return False
        return isinstance(y, torch.Tensor) and tuple(y.shape[-2:]) == (side, side)

    def _probe_input(self) -> torch.Tensor:
        side = max(valid_size(_PROBE_MIN, r) for r in self._net.rules)
        gen = torch.Generator().manual_seed(0)
        return torch.rand((1, self.in_channels, side, side), generator=gen)

    def _adopt_architecture(self, descr: Any, package: Package) -> str:
        """Run TorchScript weights in the package's Python architecture when it is present.

        The TorchScript network cannot be split, so every refinement step would run all of
        it; the same weights in the architecture of the ``pytorch_state_dict`` entry (the
        TorchScript's usual parent) can be, so the network below the head runs once. Used
        only when its output on a probe input equals the TorchScript's.

        Returns
        -------
        str
            A note for the description ("" when there is no architecture to try).
        """
        entry = getattr(descr.weights, "pytorch_state_dict", None)
        if entry is None:
            return ""
        if hasattr(entry.architecture, "source"):
            _, problem = package.locate(entry.architecture.source)
            if problem is not None:
                return ""
        script = self._net.net
        try:
            net, label = build_architecture(entry, package)
            net.load_state_dict(script.state_dict(), strict=True)
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            x = self._probe_input()
            with torch.no_grad():
                expected = self._net.raw(x)
                self._net.net = net
                got = self._net.raw(x)
            tol = 1e-4 * float(expected.abs().max()) + 1e-5
            if got.shape != expected.shape or not torch.allclose(got, expected, 1e-4, tol):
                self._net.net = script
                return "; its architecture gives another output, so the whole network runs"
        except Exception as err:  # noqa: BLE001 - the package's code may fail in any way
            self._net.net = script
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            return f"; its architecture could not run it ({first}), so the whole network runs"
        return f", run in the package's architecture {label} (same output on a probe)"

    def _split(self) -> str:
        """Cache the network below the head when the head is its final layer.

        The head must be one module of a Python network whose output is the network's on a
        probe input (or, for a probability output, the input of the network's final sigmoid,
        which is then the logit); the head's input becomes the cached trunk feature.

        Returns
        -------
        str
            How refinement runs, for the description.
        """
        self.trunk_is_cached = False
        self.head_is_pointwise = False
        self.head_halo = 0
        self._layer_name: str | None = None
        whole = "every refinement step runs the whole network"
        if isinstance(self._inner, torch.jit.ScriptModule) or len(self._prefixes) != 1:
            return whole
        name = self._prefixes[0].rstrip(".")
        layer = dict(self._inner.named_modules()).get(name)
        if layer is None or not name:
            return whole
        x = self._probe_input()
        try:
            with torch.no_grad():
                out = self._net.raw(x)
                feature = self._capture(layer, x)
                z = layer(feature)
        except Exception:  # noqa: BLE001 - any failure means "not splittable"
            return whole
        if feature.ndim != 4 or feature.shape[-2:] != x.shape[-2:] or z.shape != out.shape:
            return whole
        tol = 1e-4 * float(out.abs().max()) + 1e-5
        self._head_mode = self._net.mode
        if not torch.allclose(z, out, rtol=1e-4, atol=tol):
            ends_in_sigmoid = torch.allclose(torch.sigmoid(z), out, rtol=1e-4, atol=tol)
            if self._net.mode != "probability" or not ends_in_sigmoid:
                return whole
            self._head_mode = "sigmoid"  # the head's output is the logit before that sigmoid
        self._layer_name = name
        self.trunk_is_cached = True
        self.head_is_pointwise = is_pointwise(layer)
        self.head_halo = 0 if self.head_is_pointwise else module_halo(layer)
        kind = "point-wise" if self.head_is_pointwise else f"halo {self.head_halo}"
        return f"the network below it runs once ({kind} head)"

    def _capture(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Capture the input of ``layer`` as the network runs on ``x`` (padded), image by image."""

        def hook(module: nn.Module, args: tuple) -> None:
            raise Captured(args[0])

        handle = layer.register_forward_pre_hook(hook)
        parts = []
        try:
            for i in range(x.shape[0]):
                try:
                    self._net.raw(self._net.padded(x[i : i + 1]))
                except Captured as captured:
                    parts.append(captured.tensor)
                    continue
                raise RuntimeError("the head's layer did not run; cannot capture its input")
        finally:
            handle.remove()
        return torch.cat(parts)

    def _probe(self, label: str) -> int:
        x = self._probe_input()
        try:
            with torch.no_grad():
                out = self._net(x)
        except Exception as err:  # noqa: BLE001 - report any failure of the package's code
            raise ValueError(
                f"{label}: the network failed on a probe input of shape {tuple(x.shape)}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err
        if out.ndim != 4 or out.shape[-2:] != x.shape[-2:] or out.shape[1] < 2:
            raise ValueError(
                f"{label}: expected class scores of the input's size; a probe input "
                f"{tuple(x.shape)} gave {tuple(out.shape)}"
            )
        return int(out.shape[1])

    def _head(self, head: str | Sequence[str] | None) -> tuple[list[str], str]:
        """Resolve the head's prefixes; say how it was chosen."""
        names = [n for n, _ in self._inner.named_parameters()]
        if not names:
            raise ValueError(f"{self.name} has no parameters to tune")
        owners = [n.rpartition(".")[0] or n for n in names]
        if head is None:
            modules = dict(self._inner.named_modules())
            convs = [o for o in owners if o in modules and _kind(modules[o]).startswith("Conv")]
            chosen = convs[-1] if convs else owners[-1]
            kind = "the network's last convolution" if convs else "its last parameterised layer"
            layers = list(dict.fromkeys(owners))[-6:]
            return [chosen], (
                f"head {chosen!r} ({kind}; choose another with head=, e.g. {format_names(layers)})"
            )
        prefixes = check_prefixes(head, names, self.name)
        return prefixes, f"head {format_names(prefixes)}"

    def _describe(
        self,
        descr: Any,
        layout: Layout,
        fmt: str,
        notes: list[str],
        runs_in: str,
        head: str,
        split: str,
    ) -> str:
        entry = getattr(descr.weights, fmt)
        major_minor = ".".join(str(descr.format_version).split(".")[:2])
        if layout.mode == "logits":
            how = "the network's channels as class logits"
        else:
            source = "output before its sigmoid" if layout.mode == "sigmoid" else "logit(output)"
            if self.trunk_is_cached and self._head_mode != layout.mode:
                source = "head's output, the input of the network's final sigmoid"
            how = f"background logit 0, {self.class_names[1]} logit = the network's {source}"
            if layout.offset:
                how += f" minus logit({1 / (1 + math.exp(-layout.offset)):g}) (binarize)"
        pre = ", ".join(op for op, _ in layout.preprocessing if op != "ensure_dtype") or "none"
        sizes = f"inputs padded to multiples of {self.size_multiple}"
        sizes += self._size_note + "".join(f", {n}" for n in layout.notes)
        skipped = f"; skipped weights: {'; '.join(notes)}" if notes else ""
        return (
            f"Loaded bioimage.io model {self.name!r} (format {major_minor}, "
            f"{str(self.path)!r}): {fmt} weights {str(entry.source)!r}{runs_in}, {head}, "
            f"{split}, classes "
            f"{', '.join(self.class_names)} ({how}), preprocessing {pre}, {sizes}, tile halo "
            f"{self.trunk_halo}{skipped}."
        )

    # ------------------------------------------------------------------ protocol
    @property
    def _inner(self) -> nn.Module:
        return self._net.net

    @property
    def _layer(self) -> nn.Module:
        assert self._layer_name is not None
        return self._inner.get_submodule(self._layer_name)

    @property
    def network(self) -> nn.Module:
        """The package's network wrapped to map images to class logits."""
        return self._net

    @property
    def _head_root(self) -> nn.Module:
        return self._inner

    def normalise_image(self, image: np.ndarray) -> np.ndarray:
        """Apply the package's preprocessing to a whole image or stack.

        Statistics over the batch axis span the stack; per-sample statistics are per slice.

        Parameters
        ----------
        image : numpy.ndarray
            (Y, X), (Y, X, C) or (Z, Y, X); not modified.

        Returns
        -------
        numpy.ndarray
            float32; the same shape, except that greyscale images for a colour network get
            its channels (Y, X, C).

        Raises
        ------
        ValueError
            If the image's channels do not match the network's.
        """
        return preprocess_image(image, self.in_channels, self.preprocessing, self._axis_index)

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
            ``{"input": [B, C, Y, X]}``, or ``{"trunk": [B, F, Y, X]}`` (the head layer's
            input) when the network below the head runs once.
        """
        normalise = None if normalised else self.normalise_image
        x = input_batch(images, normalise, self.in_channels, self.device)
        if not self.trunk_is_cached:
            return {"input": x}
        h, w = x.shape[-2:]
        with torch.no_grad():
            feature = self._capture(self._layer, x)
        return {"trunk": feature[..., :h, :w]}

    def head(self, features: Features) -> torch.Tensor:
        """Full forward on prepared input; gradients reach the head parameters only.

        Parameters
        ----------
        features : Features
            ``{"input": [N, C, h, w]}`` or ``{"trunk": [N, F, h, w]}`` (see
            :meth:`features_batch`).

        Returns
        -------
        torch.Tensor
            Logits [N, n_classes, h, w].
        """
        if self.trunk_is_cached:
            return self._net.classes(self._layer(features["trunk"]), self._head_mode)
        return self._net(features["input"])

    def add_class(self, name: str, init_from: int) -> None:
        """Grow the network's output layer (in the head) by one channel.

        With an implicit background (a sigmoid output), a class grown from the background
        starts with zero weights (logit 0, the background's); otherwise the source class's
        channel is copied.

        Parameters
        ----------
        name : str
            Name of the new class.
        init_from : int
            Index of the class whose weights initialise the new channel.

        Raises
        ------
        ValueError
            If the arguments are invalid or no head weight has one row per output channel.
        """
        check_new_class(self.class_names, name, init_from)
        implicit = self._net.mode != "logits"
        rows = self.n_classes - 1 if implicit else self.n_classes
        source = init_from - 1 if implicit else init_from
        params = self._head_named_parameters()
        weight_name = next(
            (n for n, p in reversed(params) if n.endswith("weight") and p.shape[0] == rows),
            None,
        )
        if weight_name is None:
            raise ValueError(
                f"cannot add a class to {self.name}: no head weight has {rows} output "
                f"channel(s) (head parameters: {[n for n, _ in params]})"
            )
        for pname in (weight_name, weight_name[: -len("weight")] + "bias"):
            try:
                owner, attr = owner_of(self._inner, pname)
                current = getattr(owner, attr)
            except AttributeError:
                continue
            if not isinstance(current, torch.Tensor) or current.shape[0] != rows:
                continue
            row = current[source : source + 1] if source >= 0 else torch.zeros_like(current[:1])
            grown = torch.cat([current.detach(), row.detach()])
            setattr(owner, attr, nn.Parameter(grown, requires_grad=False))
            if hasattr(owner, "out_channels") and attr == "weight":
                owner.out_channels = rows + 1
        self.class_names.append(str(name))

"""A tuned HoVer-Net as a bioimage.io model package (``.zip``) that other tools can run.

The package holds TorchScript weights of the whole network (float32) with an output of
*class scores* whose argmax is HoVer-Net's class rule (a nucleus where p(background) < 0.5,
then its most likely type), the plugin's percentile normalisation as the rdf's
``scale_range`` preprocessing, test tensors cut from the image the model was tuned on, a
cover, and a README with the model card's data, licence and what was tuned. The rdf is
checked with ``bioimageio.spec`` (the extra ``bioimageio``) before the package is written.

What does not travel: HoVer-Net's HV map (tools that read the package get class maps;
instances then come from their own post-processing), and the bfloat16 trunk the plugin
uses on CPUs that have it (the package runs in float32).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .bioimageio_layout import preprocess

__all__ = ["ClassScores", "export_hovernet_package"]

_MIN_SIDE = 64
_TEST_SIDE = 256
_HALO = 16
_AXES = {"batch": 0, "y": 1, "x": 2, "channel": 3}
_HOVERNET_CITATION = {
    "text": "Graham et al., HoVer-Net: Simultaneous segmentation and classification of "
    "nuclei in multi-tissue histology images, Medical Image Analysis 2019",
    "doi": "10.1016/j.media.2019.101563",
}


class ClassScores(nn.Module):
    """HoVer-Net's outputs as class scores whose argmax is the plugin's class rule.

    Before centring (each pixel's mean subtracted), channel 0 is log p(background) and
    channel c > 0 is log p(nucleus) for the most likely class, lower by its log-probability
    gap for the others; with two classes these are the log-probabilities themselves.

    Parameters
    ----------
    network : HoVerNet
        The network (copied, in float32, without its HV branch).
    typed : bool
        Whether the TP branch gives the classes.
    """

    def __init__(self, network: nn.Module, typed: bool) -> None:
        super().__init__()
        self.network = copy.deepcopy(network).float()
        if "hv" in self.network.decoder:  # not part of the class scores: not in the package
            del self.network.decoder["hv"]
        self.typed = typed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalised image [N, C, H, W] (H, W multiples of 8) to class scores."""
        feats = self.network.encode(x)
        out = {}
        for branch in ("np", "tp") if self.typed else ("np",):
            dec = self.network.decoder[branch]
            out[branch] = dec.u0(dec.u1(self.network.decode_to_u1(branch, feats)))
        np_logits = out["np"]
        if self.typed:
            split = out["tp"][:, 1:]
        elif np_logits.shape[1] > 2:
            split = np_logits[:, 1:]
        else:
            return _centred(F.log_softmax(np_logits, dim=1))
        log_np = F.log_softmax(np_logits[:, :2], dim=1)
        types = F.log_softmax(split, dim=1)
        gap = types - types.max(dim=1, keepdim=True).values
        return _centred(torch.cat([log_np[:, :1], log_np[:, 1:2] + gap], dim=1))


def _centred(scores: torch.Tensor) -> torch.Tensor:
    """Subtract each pixel's mean score, leaving the argmax and a softmax unchanged.

    The values then straddle 0: bioimage.io's reproducibility tolerance is relative to the
    test output's maximum, which log-probabilities keep below 0.
    """
    return scores - scores.mean(dim=1, keepdim=True)


def _licence(metadata: Mapping[str, str], licence: str | None, name: str) -> str:
    if licence is not None:
        return licence
    note = str(metadata.get("licence", ""))
    if "research" in note.lower():
        raise ValueError(
            f"{name}: its weights carry a condition without an SPDX identifier ({note!r}); "
            "pass license= with the SPDX identifier that fits your use (bioimage.io requires "
            "one); the condition is repeated in the package's README"
        )
    return "BSD-3-Clause"


def _test_crop(image: np.ndarray) -> np.ndarray:
    """Cut a centred crop of the image, sides a multiple of 8 (at most 256): [1, C, Y, X]."""
    data = np.asarray(image, dtype=np.float32)
    data = data[..., None] if data.ndim == 2 else data
    h, w = data.shape[:2]
    side_y = min(_TEST_SIDE, h - h % 8)
    side_x = min(_TEST_SIDE, w - w % 8)
    y0, x0 = (h - side_y) // 2, (w - side_x) // 2
    crop = data[y0 : y0 + side_y, x0 : x0 + side_x]
    return np.ascontiguousarray(np.moveaxis(crop, -1, 0)[None])


def _cover(raw: np.ndarray, classes: np.ndarray, path: Path) -> None:
    """Write a cover: the test image beside its class map."""
    from skimage.color import label2rgb
    from skimage.io import imsave

    image = raw[0].transpose(1, 2, 0)
    lo, hi = np.percentile(image, (1, 99.8))
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    overlay = label2rgb(classes, image=image, bg_label=0, alpha=0.4)
    both = np.concatenate([image, overlay], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        imsave(path, (both * 255).astype(np.uint8), check_contrast=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _readme(name: str, metadata: Mapping[str, str], adapted: Mapping[str, Any]) -> str:
    lines = [f"# {name}", "", str(metadata.get("description", "HoVer-Net nucleus model.")), ""]
    lines += [
        "Exported by napari-scribble-refine after its head was tuned to one image by "
        "scribbles: check it on your images before relying on it.",
        "",
        "* output: class scores; the argmax is the class (a nucleus where p(background) < "
        "0.5, then its most likely type); instances need a post-processing of your own",
        "* runs in float32 (the plugin may run the trunk in bfloat16)",
        f"* tuned: `{json.dumps(dict(adapted))}`",
    ]
    for key in ("licence", "training"):
        if key in metadata:
            lines.append(f"* {key}: {metadata[key]}")
    return "\n".join(lines) + "\n"


def export_hovernet_package(
    model: Any,
    image: np.ndarray,
    path: Path,
    adapted: Mapping[str, Any],
    *,
    licence: str | None = None,
    authors: list[str] | None = None,
) -> Path:
    """Write a tuned :class:`~.hovernet_adapter.HoVerNetModel` as a bioimage.io ``.zip``.

    Parameters
    ----------
    model : HoVerNetModel
        The model with its head as tuned (a same-padded network).
    image : numpy.ndarray
        The image it was tuned on, (Y, X) or (Y, X, C) (test tensors and the cover).
    path : Path
        Output ``.zip``.
    adapted : mapping
        What was tuned (stored in the README and the rdf's config).
    licence : str, optional
        SPDX identifier; default BSD-3-Clause unless the weights carry another condition.
    authors : list of str, optional
        Author names (default: "napari-scribble-refine user").

    Returns
    -------
    Path
        The package written.

    Raises
    ------
    ValueError
        For a valid-padded network, weights without an SPDX licence and no ``licence``, an
        image smaller than 64 pixels a side, or an rdf ``bioimageio.spec`` rejects.
    ImportError
        Without ``bioimageio.spec``.
    """
    from bioimageio.spec import build_description, save_bioimageio_package

    net = model.network
    config = net.config
    if config.padding != "same":
        raise ValueError(
            f"{model.name}: only same-padded HoVer-Nets (the built-in models) export to "
            "bioimage.io yet; save_model writes this one as .safetensors"
        )
    raw = _test_crop(image)
    if min(raw.shape[-2:]) < _MIN_SIDE:
        raise ValueError(f"image: the test tensors need at least {_MIN_SIDE}² pixels")
    spdx = _licence(model.metadata, licence, model.name)
    norm = model.normalisation
    low, high = float(norm.get("low", 1.0)), float(norm.get("high", 99.8))
    if norm["kind"] != "percentile":
        raise ValueError(f"{model.name}: only percentile normalisation exports yet")
    scaling = {"axes": ["channel", "y", "x"], "min_percentile": low, "max_percentile": high}
    steps = [("ensure_dtype", {"dtype": "float32"}), ("scale_range", scaling)]
    # the loader's own preprocessing, so the test output is what a reader computes
    normalised = preprocess(raw.transpose(0, 2, 3, 1), steps, _AXES).transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32))
    scores_net = ClassScores(net, model.typed).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(scores_net, x[..., :_MIN_SIDE, :_MIN_SIDE], strict=False)
        expected = traced(x).numpy()
    branches = ("np", "tp") if model.typed else ("np",)
    channel_names = ["r", "g", "b"] if raw.shape[1] == 3 else [f"c{i}" for i in range(raw.shape[1])]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(traced, str(folder / "weights.pt"))
        np.save(folder / "test_input.npy", raw)
        np.save(folder / "test_output.npy", expected)
        _cover(raw, expected[0].argmax(0), folder / "cover.png")
        (folder / "README.md").write_text(_readme(model.name, model.metadata, adapted))
        space = {"min": _MIN_SIDE, "step": 8}
        rdf = {
            "format_version": "0.5.4",
            "type": "model",
            "name": f"{model.name} tuned with napari-scribble-refine",
            "description": "HoVer-Net nucleus segmentation (classes: "
            f"{', '.join(model.class_names)}), its head tuned to one image by scribbles",
            "authors": [{"name": a} for a in (authors or ["napari-scribble-refine user"])],
            "cite": [_HOVERNET_CITATION],
            "license": spdx,
            "documentation": "README.md",
            "covers": ["cover.png"],
            "tags": ["nucleus", "segmentation", "hovernet", "napari-scribble-refine"],
            "inputs": [
                {
                    "id": "raw",
                    "axes": [
                        {"type": "batch"},
                        {"type": "channel", "channel_names": channel_names},
                        {"type": "space", "id": "y", "size": space},
                        {"type": "space", "id": "x", "size": space},
                    ],
                    "test_tensor": {"source": "test_input.npy"},
                    "preprocessing": [{"id": op, "kwargs": kw} for op, kw in steps],
                }
            ],
            "outputs": [
                {
                    "id": "class_scores",
                    "description": "class scores; the argmax is the class",
                    "axes": [
                        {"type": "batch"},
                        {"type": "channel", "channel_names": list(model.class_names)},
                        *(
                            {
                                "type": "space",
                                "id": axis,
                                "size": {"tensor_id": "raw", "axis_id": axis},
                                "halo": _HALO,
                            }
                            for axis in ("y", "x")
                        ),
                    ],
                    "test_tensor": {"source": "test_output.npy"},
                }
            ],
            "weights": {
                "torchscript": {
                    "source": "weights.pt",
                    "pytorch_version": torch.__version__.split("+")[0],
                }
            },
            "config": {
                "napari_scribble_refine": {
                    "adapted": dict(adapted),
                    "head": [f"network.decoder.{b}.u0.conv" for b in branches],
                }
            },
        }
        for entry in (rdf["inputs"][0], rdf["outputs"][0]):
            source = folder / entry["test_tensor"]["source"]
            entry["test_tensor"]["sha256"] = _sha256(source)
        rdf["weights"]["torchscript"]["sha256"] = _sha256(folder / "weights.pt")
        descr = build_description(rdf, context=_context(folder))
        if type(descr).__name__ == "InvalidDescr":
            raise ValueError(
                f"the package's description is not valid bioimage.io: "
                f"{descr.validation_summary.format()[:2000]}"
            )
        save_bioimageio_package(descr, output_path=path)
    return path


def _context(folder: Path) -> Any:
    from bioimageio.spec import ValidationContext

    return ValidationContext(root=folder, perform_io_checks=True)

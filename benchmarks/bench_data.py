"""Benchmark data: sample folders, ground truth, and the map between model and data classes.

Layout (the shared nucleus set, or any folder like it)::

    <data>/<source>/<sample>/image.tif, labels.tif[, types.tif]

``labels.tif`` holds instances (0 = background); ``types.tif``, where present, a per-pixel
class map. Sources without types are scored as background / nucleus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

NEOPLASTIC_WORDS = ("neoplastic", "epithelial", "tumor", "tumour", "malignant")
"""Model class names that map to PanNuke's "Neoplastic" type (the rest of the nucleus
classes map to "Non-neoplastic")."""


@dataclass(frozen=True)
class Sample:
    """One annotated image.

    Attributes
    ----------
    source, sample_id : str
        Folder names.
    image : numpy.ndarray
        (Y, X) or (Y, X, 3) uint8.
    labels : numpy.ndarray
        (Y, X) instance labels.
    types : numpy.ndarray or None
        (Y, X) class map, or None.
    type_names : list of str
        Class names of ``types`` (index 0 = background), or ``["background", "nucleus"]``.
    """

    source: str
    sample_id: str
    image: np.ndarray
    labels: np.ndarray
    types: np.ndarray | None
    type_names: list[str]

    @property
    def name(self) -> str:
        """``<source>/<sample_id>``."""
        return f"{self.source}/{self.sample_id}"

    @property
    def rgb(self) -> bool:
        """True for (Y, X, 3) images."""
        return self.image.ndim == 3 and self.image.shape[-1] in (3, 4)


def list_samples(data: Path, limit: int | None = None) -> dict[str, list[Path]]:
    """Sample folders per source, sorted by name; the first ``limit`` of each.

    Parameters
    ----------
    data : Path
        The data folder.
    limit : int, optional
        Keep the first ``limit`` samples of each source.

    Returns
    -------
    dict
        ``{source: [sample folder, ...]}``, sources sorted.
    """
    out: dict[str, list[Path]] = {}
    for source in sorted(p for p in Path(data).iterdir() if p.is_dir()):
        samples = sorted(p for p in source.iterdir() if (p / "image.tif").is_file())
        if limit is not None:
            samples = samples[:limit]
        if samples:
            out[source.name] = samples
    if not out:
        raise FileNotFoundError(f"no <source>/<sample>/image.tif under {data}")
    return out


def load_sample(folder: Path) -> Sample:
    """Read one sample folder.

    Parameters
    ----------
    folder : Path
        ``<source>/<sample>``.

    Returns
    -------
    Sample
        The sample (RGBA is cut to RGB).
    """
    folder = Path(folder)
    image = tifffile.imread(folder / "image.tif")
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    labels = tifffile.imread(folder / "labels.tif").astype(np.int32)
    types = None
    names = ["background", "nucleus"]
    if (folder / "types.tif").is_file():
        types = tifffile.imread(folder / "types.tif").astype(np.uint8)
        meta = folder / "instance_types.json"
        n = int(types.max())
        names = ["background"] + [f"type {i}" for i in range(1, n + 1)]
        if meta.is_file():
            import json

            entries = json.loads(meta.read_text())
            if "classes" in entries:  # PanNuke: {"classes": {id: name}, "instances": ...}
                classes = entries["classes"]
            else:  # CoNSeP (training set): {label id: type name}; ids from the type map
                classes = _type_ids(labels, types, entries)
            n = max(n, *(int(k) for k in classes))
            names = ["background"] + [classes.get(str(i), f"type {i}") for i in range(1, n + 1)]
    return Sample(folder.parent.name, folder.name, image, labels, types, names)


CONSEP_TYPES = {"1": "other", "2": "inflammatory", "3": "epithelial", "4": "spindle"}
"""CoNSeP's merged types (the training set's SOURCES.md), for patches that lack some."""


def _type_ids(labels: np.ndarray, types: np.ndarray, names: dict[str, str]) -> dict[str, str]:
    """Map type ids to names from a ``{label id: type name}`` mapping and the type map.

    CoNSeP's ids stand where a type is absent from the patch.
    """
    out: dict[str, str] = dict(CONSEP_TYPES)
    for label, name in names.items():
        values = types[labels == int(label)]
        values = values[values > 0]
        if values.size:
            out[str(int(np.bincount(values).argmax()))] = name
    return out


@dataclass(frozen=True)
class ClassSpace:
    """How a model's classes map onto the classes a source is scored in.

    Attributes
    ----------
    names : list of str
        Evaluation classes (index 0 = background).
    lut : numpy.ndarray
        ``lut[m]`` = evaluation class of model class m.
    """

    names: list[str]
    lut: np.ndarray

    @property
    def n_classes(self) -> int:
        """Evaluation classes, background included."""
        return len(self.names)

    def probabilities(self, model_probs: np.ndarray) -> np.ndarray:
        """Sum model-class probabilities into evaluation classes.

        Parameters
        ----------
        model_probs : numpy.ndarray
            (C_model, Y, X).

        Returns
        -------
        numpy.ndarray
            (C_eval, Y, X) float32.
        """
        out = np.zeros((self.n_classes, *model_probs.shape[1:]), np.float32)
        for m, e in enumerate(self.lut):
            out[e] += model_probs[m]
        return out

    def to_model_scribbles(self, scribbles: np.ndarray, model_probs: np.ndarray) -> np.ndarray:
        """Turn evaluation-class scribbles into model-class scribbles.

        A pixel scribbled as evaluation class e becomes the model class of highest initial
        probability among those that map to e.

        Parameters
        ----------
        scribbles : numpy.ndarray
            (Y, X), 0 = none, e + 1 = evaluation class e.
        model_probs : numpy.ndarray
            (C_model, Y, X) initial probabilities.

        Returns
        -------
        numpy.ndarray
            (Y, X) int32 model-class scribbles.
        """
        out = np.zeros(scribbles.shape, np.int32)
        rows, cols = np.nonzero(scribbles)
        if rows.size == 0:
            return out
        e = scribbles[rows, cols].astype(np.int64) - 1
        allowed = self.lut[:, None] == e[None, :]
        p = np.where(allowed, model_probs[:, rows, cols], -1.0)
        out[rows, cols] = np.argmax(p, axis=0) + 1
        return out


def class_space(model_classes: list[str], sample: Sample) -> ClassSpace:
    """Choose the evaluation classes of a sample scored with a model.

    Binary (background / nucleus) unless the sample has types and the model has more than
    one nucleus class; then the model's classes map to the sample's by name (PanNuke's
    "Neoplastic" takes the model's epithelial / tumour classes, "Non-neoplastic" the rest).

    Parameters
    ----------
    model_classes : list of str
        The model's class names (index 0 = background).
    sample : Sample
        The sample.

    Returns
    -------
    ClassSpace
        The mapping.
    """
    n_model = len(model_classes)
    binary = ClassSpace(["background", "nucleus"], np.array([0] + [1] * (n_model - 1)))
    if sample.types is None or n_model < 3:
        return binary
    names = [n.lower() for n in sample.type_names]
    if names[1:3] == ["neoplastic", "non-neoplastic"]:
        lut = [0] + [
            1 if any(w in m.lower() for w in NEOPLASTIC_WORDS) else 2 for m in model_classes[1:]
        ]
        return ClassSpace(sample.type_names[:3], np.array(lut))
    lower = [m.lower() for m in model_classes]
    if all(n in lower for n in names[1:]):
        lut = [names.index(m) if m in names else 0 for m in lower]
        return ClassSpace(sample.type_names, np.array(lut))
    return binary


def ground_truth(sample: Sample, space: ClassSpace) -> np.ndarray:
    """Return the sample's class map in an evaluation class space.

    Parameters
    ----------
    sample : Sample
        The sample.
    space : ClassSpace
        The evaluation classes.

    Returns
    -------
    numpy.ndarray
        (Y, X) uint8 class map.
    """
    if space.n_classes > 2 and sample.types is not None:
        return sample.types.astype(np.uint8)
    return (sample.labels > 0).astype(np.uint8)

import subprocess
import sys

import numpy as np
import pytest

from napari_scribble_refine._napari import _sample_data


def _check_tuples(tuples):
    assert isinstance(tuples, list) and tuples
    for data, meta, kind in tuples:
        assert kind in ("image", "labels")
        assert isinstance(meta, dict) and meta.get("name")
        assert isinstance(data, np.ndarray)
    return tuples


def test_synthetic_fluorescence_sample():
    (img, meta, kind), (lab, lmeta, lkind) = _check_tuples(
        _sample_data.make_synthetic_fluorescence()
    )
    assert kind == "image" and img.ndim == 2 and img.dtype == np.uint8
    assert lkind == "labels" and lab.shape == img.shape and lab.max() > 20
    np.testing.assert_array_equal(img, _sample_data.make_synthetic_fluorescence()[0][0])


def test_synthetic_he_sample():
    tuples = _check_tuples(_sample_data.make_synthetic_he())
    img, meta, _ = tuples[0]
    assert img.shape[-1] == 3 and meta["rgb"] is True
    types = tuples[2][0]
    assert set(np.unique(types)) <= {0, 1, 2, 3} and types.max() >= 2


def test_ihc_sample_is_real_rgb():
    ((img, meta, kind),) = _check_tuples(_sample_data.make_ihc())
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8 and meta["rgb"] is True


def test_manifest_lists_the_sample_data():
    npe2 = pytest.importorskip("npe2")
    from importlib.resources import files

    manifest = npe2.PluginManifest.from_file(files("napari_scribble_refine") / "napari.yaml")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    keys = {s.key: s.command for s in manifest.contributions.sample_data}
    assert set(keys) >= {"synthetic_fluorescence", "synthetic_he", "ihc"}
    for command in keys.values():
        module, func = commands[command].split(":")
        assert module == "napari_scribble_refine._napari._sample_data"
        assert callable(getattr(_sample_data, func))


def test_sample_data_module_does_not_import_napari():
    code = (
        "import sys; import napari_scribble_refine._napari._sample_data as s; "
        "s.make_synthetic_he(); "
        "assert 'napari' not in sys.modules, 'napari imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

import numpy as np
import pytest

from napari_scribble_refine.synthetic.scenes import (
    FLUO_CLASSES,
    HE_CLASSES,
    synthetic_fluorescence,
    synthetic_he,
)
from napari_scribble_refine.synthetic.shapes import hv_targets

GENERATORS = [synthetic_fluorescence, synthetic_he]


def _check_consistent(sample, n_channels):
    img, inst, types, hv = sample.image, sample.instances, sample.types, sample.hv
    assert img.dtype == np.uint8
    assert img.shape[:2] == inst.shape == types.shape == hv.shape[1:]
    assert (img.ndim == 2) if n_channels == 1 else (img.shape[2] == 3)
    assert inst.dtype == np.uint16 and types.dtype == np.uint8 and hv.dtype == np.float32
    # Instances are numbered 1..N without gaps.
    ids = np.unique(inst)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))
    # Types are non-zero exactly on nuclei, one type per nucleus.
    assert np.array_equal(types > 0, inst > 0)
    for i in ids[1:]:
        assert len(np.unique(types[inst == i])) == 1
    # HV: 0 on background, in [-1, 1], spans both signs on each multi-pixel nucleus.
    assert np.all(hv[:, inst == 0] == 0)
    assert hv.min() >= -1 and hv.max() <= 1
    np.testing.assert_array_equal(hv, hv_targets(inst))


@pytest.mark.parametrize("generator", GENERATORS)
def test_same_seed_same_sample(generator):
    a, b = generator((96, 128), seed=5), generator((96, 128), seed=5)
    for name in ("image", "instances", "types", "hv"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = generator((96, 128), seed=6)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(6))
def test_fluorescence_ground_truth(seed):
    s = synthetic_fluorescence((128, 160), seed=seed)
    _check_consistent(s, 1)
    assert s.class_names == FLUO_CLASSES
    assert s.instances.max() >= 1
    assert set(np.unique(s.types)) <= {0, 1}


@pytest.mark.parametrize("seed", range(6))
def test_he_ground_truth(seed):
    s = synthetic_he((128, 160), seed=seed)
    _check_consistent(s, 3)
    assert s.class_names == HE_CLASSES
    assert set(np.unique(s.types)) <= {0, 1, 2, 3}


def test_he_types_differ_in_size_and_darkness():
    areas = {1: [], 2: []}
    dark = {1: [], 2: []}
    for seed in range(8):
        s = synthetic_he((256, 256), seed=seed, scale=1.0)
        grey = s.image.mean(axis=2)
        for i in range(1, int(s.instances.max()) + 1):
            m = s.instances == i
            t = int(s.types[m][0])
            if t in areas and m.sum() > 10:
                areas[t].append(m.sum())
                dark[t].append(grey[m].mean())
    assert len(areas[1]) > 10 and len(areas[2]) > 10
    assert np.median(areas[1]) > 2.5 * np.median(areas[2])  # epithelial >> lymphocyte
    assert np.median(dark[2]) < np.median(dark[1])  # lymphocytes are darker


def test_all_he_types_appear():
    seen = set()
    for seed in range(6):
        seen |= set(np.unique(synthetic_he((192, 192), seed=seed).types).tolist())
    assert seen == {0, 1, 2, 3}


def test_fluorescence_size_controls():
    small = synthetic_fluorescence((256, 256), seed=1, radius=5, coverage=0.2, brightfield=False)
    large = synthetic_fluorescence((256, 256), seed=1, radius=20, coverage=0.2, brightfield=False)
    area = lambda s: np.median(np.bincount(s.instances.ravel())[1:])  # noqa: E731
    assert 40 < area(small) < 160
    assert 700 < area(large) < 2000
    assert small.instances.max() > 3 * large.instances.max()


def test_brightfield_variant_has_dark_nuclei_on_light_background():
    s = synthetic_fluorescence((256, 256), seed=2, brightfield=True)
    fg, bg = s.image[s.instances > 0], s.image[s.instances == 0]
    assert fg.mean() < bg.mean() - 30
    f = synthetic_fluorescence((256, 256), seed=2, brightfield=False)
    assert f.image[f.instances > 0].mean() > f.image[f.instances == 0].mean() + 10


def test_hv_targets_of_a_disk():
    yy, xx = np.mgrid[:21, :21]
    inst = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 49).astype(np.uint16)
    hv = hv_targets(inst)
    assert hv[0, 10, 3] == -1 and hv[0, 10, 17] == 1  # x: left -1, right +1
    assert hv[1, 3, 10] == -1 and hv[1, 17, 10] == 1  # y: top -1, bottom +1
    assert hv[0, 10, 10] == 0 and hv[1, 10, 10] == 0

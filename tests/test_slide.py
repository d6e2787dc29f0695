"""Large images (issue 10): lazy reads, tile features within a budget, slide sessions."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from _lazy_arrays import CountingArray

from napari_scribble_refine.core import RefineSession, load_model
from napari_scribble_refine.core import tile_normalisation as tn
from napari_scribble_refine.core.feature_tiles import TileFeatures
from napari_scribble_refine.core.lazy_image import LazyImage
from napari_scribble_refine.core.slide import SlideSession, scribble_box
from napari_scribble_refine.evaluation.robot import RobotUser
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence


@pytest.fixture(scope="module")
def model():
    return load_model("hovernet-fluo")


@pytest.fixture(scope="module")
def sample():
    return synthetic_fluorescence((256, 256), seed=11)


def _scribbles(sample, predicted: np.ndarray, k: int = 1) -> np.ndarray:
    truth = (sample.types > 0).astype(np.uint8)
    marks, strokes = RobotUser(truth, 2, seed=3).interact(predicted, np.zeros_like(truth), k)
    assert strokes
    return marks


def test_a_dask_image_is_read_only_where_a_region_needs_it(model, sample, monkeypatch):
    monkeypatch.setattr(tn, "EXACT_MAX_PIXELS", 256 * 256)  # this image counts as large
    monkeypatch.setattr(tn, "SAMPLE_PIXELS", 2 * 256 * 256)
    source = CountingArray(sample.image, (2048, 2048))
    image = da.from_array(source, chunks=256, asarray=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the built-in scaling is affine: no per-tile warning
        session = SlideSession(model, image, tile_size=256, tile_halo=16)
    sampled = source.read_pixels
    assert sampled <= 4 * 256 * 256  # the calibration sample's chunks only
    predicted = session.predict((slice(300, 400), slice(300, 400)))
    assert predicted.shape == (100, 100)
    assert session.features.computed == 1  # one tile under the region
    read = source.read_pixels - sampled
    assert read <= 4 * 256 * 256  # the tile and its halo: at most 2 x 2 chunks
    assert source.read_pixels < 0.1 * 2048 * 2048
    # the same region again: nothing is read or computed
    before = (source.read_pixels, session.features.computed)
    session.predict((slice(300, 400), slice(300, 400)))
    assert (source.read_pixels, session.features.computed) == before


def test_tile_features_are_dropped_beyond_the_budget_and_computed_again_identically(model, sample):
    image = LazyImage(sample.image)
    one_tile = (
        128
        * 128
        * sum(
            v.shape[1] * v.element_size() for v in model.features(sample.image[:128, :128]).values()
        )
    )
    tiles = TileFeatures(
        model, image, None, tile_size=128, halo=16, budget_bytes=int(1.5 * one_tile)
    )
    first = {k: v.clone() for k, v in tiles.get((0, 0, 0)).items()}
    tiles.get((0, 1, 1))
    assert not tiles.cached((0, 0, 0)) and tiles.dropped == 1
    assert tiles.nbytes <= 1.5 * one_tile
    again = tiles.get((0, 0, 0))
    assert tiles.computed == 3
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_lazy_session_gives_the_in_memory_result_on_a_small_image(model, sample, tmp_path):
    memory = RefineSession(model, sample.image)
    before = memory.predict()
    marks = _scribbles(sample, before)
    after = memory.run(marks).prediction
    tiff = tmp_path / "image.tif"
    tifffile.imwrite(tiff, sample.image)
    store = tmp_path / "image.zarr"
    zarr.open_array(
        str(store), mode="w", shape=sample.image.shape, chunks=(64, 64), dtype=sample.image.dtype
    )[:] = sample.image
    for source in (da.from_array(sample.image, chunks=64), str(tiff), store):
        slide = SlideSession(model, source)
        assert np.array_equal(slide.predict(), before)
        result = slide.run(marks, region=(slice(0, 256), slice(0, 256)))
        assert np.array_equal(result.prediction, after)
        assert np.array_equal(slide.predict(), after)
        labels, classes = slide.instances()
        assert np.array_equal(labels, memory.instances()[0]) and classes
        assert slide.undo() and np.array_equal(slide.predict(), before)
        assert slide.redo() and np.array_equal(slide.predict(), after)
        slide.close()


def test_tiles_match_the_in_memory_tiling(model, sample):
    memory = RefineSession(model, sample.image, tile_size=128)
    slide = SlideSession(model, sample.image, tile_size=128)
    assert slide.features.computed == 0
    assert np.array_equal(slide.predict(), memory.predict())
    assert slide.features.computed == 4
    features = slide.features.region((slice(40, 200), slice(0, 256)))
    for key, value in memory.features.items():
        assert torch.equal(features[key], value[..., 40:200, :])


def test_the_scaling_of_a_large_image_is_measured_once_as_an_affine_map(model, sample):
    pixels = sample.image.astype(np.float64)
    a, b = tn._affine_fit(pixels, (pixels * 0.01 - 0.3).astype(np.float32))
    assert a[0] == pytest.approx(0.01) and b[0] == pytest.approx(-0.3)
    assert tn._affine_fit(pixels, np.sqrt(pixels)) is None
    colour = np.stack([pixels, pixels], -1)
    a, b = tn._affine_fit(pixels, colour * [2, 3] + [1, 0])
    assert list(a) == pytest.approx([2, 3]) and list(b) == pytest.approx([1, 0])


def test_a_scaling_that_is_not_affine_is_applied_per_tile_with_a_warning(monkeypatch):
    monkeypatch.setattr(tn, "EXACT_MAX_PIXELS", 16)
    monkeypatch.setattr(tn, "SAMPLE_PIXELS", 32 * 32)

    class Root:
        name = "root"

        def normalise_image(self, image):
            return np.sqrt(image.astype(np.float32))

    image = LazyImage(np.arange(64 * 64, dtype=np.float32).reshape(64, 64) + 1)
    with pytest.warns(UserWarning, match="not a fixed affine map"):
        scale = tn.tile_normaliser(Root(), image)
    tile = image.read((slice(0, 8), slice(0, 8)))
    assert np.array_equal(scale(tile, (slice(0, 8), slice(0, 8))), np.sqrt(tile))


def test_the_whole_result_is_written_tile_by_tile_and_resumes(model, sample, tmp_path):
    slide = SlideSession(model, sample.image, tile_size=128)
    full = slide.write_prediction(tmp_path / "full.zarr")
    assert full.shape == (256, 256) and full.attrs["scribble_refine"]["done"]
    assert (np.asarray(full[:]) == slide.predict()).mean() > 0.99  # seams at tile borders only

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    again = SlideSession(model, sample.image, tile_size=128)
    with pytest.raises(Stop):
        again.write_prediction(tmp_path / "part.zarr", progress=stop_after_two)
    part = zarr.open_array(str(tmp_path / "part.zarr"), mode="r+")
    assert np.array_equal(np.asarray(part[:128]), np.asarray(full[:128]))
    assert not np.asarray(part[128:]).any()  # the run stopped after the first two tiles
    part[:128] = 255  # marks what a resumed run must not write again
    seen = []
    resumed = SlideSession(model, sample.image, tile_size=128).write_prediction(
        tmp_path / "part.zarr", progress=lambda done, total: seen.append(done)
    )
    assert seen == [1, 2, 3, 4]
    assert (np.asarray(resumed[:128]) == 255).all()
    assert np.array_equal(np.asarray(resumed[128:]), np.asarray(full[128:]))
    # a result of another image, or cut otherwise, is never extended
    other = SlideSession(model, sample.image[::-1].copy(), tile_size=128)
    with pytest.raises(ValueError, match="differs in: sample"):
        other.write_prediction(tmp_path / "part.zarr")
    with pytest.raises(ValueError, match="differs in: tile, chunks"):
        SlideSession(model, sample.image, tile_size=64).write_prediction(tmp_path / "part.zarr")

    marks = _scribbles(sample, slide.predict())
    slide.run(marks)
    with pytest.raises(ValueError, match="differs in: the model's head"):
        slide.write_prediction(tmp_path / "full.zarr")
    slide.write_prediction(tmp_path / "full.zarr", overwrite=True)


def test_the_working_region_is_the_scribbles_box_and_the_view(model, sample):
    slide = SlideSession(model, sample.image, tile_size=128, context=32)
    marks = np.zeros((256, 256), np.uint8)
    marks[100:110, 120:125] = 2
    assert scribble_box(marks) == (slice(100, 110), slice(120, 125))
    assert scribble_box(da.from_array(marks, chunks=64)) == (slice(100, 110), slice(120, 125))
    assert scribble_box(np.zeros((8, 8))) is None
    assert slide.working_region_for(marks) == (slice(68, 142), slice(88, 157))
    view = (slice(0, 64), slice(0, 64))
    assert slide.working_region_for(marks, view) == (slice(0, 110), slice(0, 125))
    marks[250, 250] = 1  # too far for one working region with the view below
    slide.max_region_pixels = 120 * 120
    with pytest.warns(UserWarning, match="1 scribbled pixel"):
        slide.run(marks, region=(slice(96, 112), slice(118, 128)))
    assert slide.working_region == (slice(96, 112), slice(118, 128))
    with pytest.raises(ValueError, match="give the region you look at"):
        slide.run(marks)


def test_a_new_working_region_starts_from_the_head_tuned_so_far(model, sample):
    slide = SlideSession(model, sample.image, tile_size=128, context=16)
    pretrained = slide.predict()
    marks = _scribbles(sample, pretrained)
    box = scribble_box(marks)
    slide.run(marks)
    tuned = slide.model.head_state()["weights"]
    other = (slice(0, 64), slice(0, 64)) if box[0].start > 64 else (slice(192, 256),) * 2
    slide.predict(other)
    far = np.zeros_like(marks)
    far[other][10:12, 10:20] = 1
    slide.run(far)
    assert slide.working_region[0].start >= other[0].start - 16  # around the far strokes
    assert slide.working_session.history_labels[:2] == ["pre-trained", "tuned on the slide"]
    assert slide.undo()  # back to the head tuned in the first region
    now = slide.model.head_state()["weights"]
    assert all(torch.equal(tuned[k], now[k]) for k in tuned)
    assert slide.reset()
    assert np.array_equal(slide.predict((slice(0, 256), slice(0, 256))), pretrained)


def test_requests_that_cannot_work_are_refused_with_the_way_out(model, sample):
    slide = SlideSession(model, sample.image, max_region_pixels=100 * 100)
    with pytest.raises(ValueError, match="write_prediction"):
        slide.predict()
    with pytest.raises(ValueError, match="max_region_pixels"):
        slide.predict((slice(0, 200), slice(0, 200)))
    with pytest.raises(ValueError, match="empty"):
        slide.predict((slice(10, 10), slice(0, 5)))
    with pytest.raises(ValueError, match="2 slices"):
        slide.predict((slice(0, 5),))
    with pytest.raises(ValueError, match="spatial shape"):
        slide.run(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="greyscale"):
        SlideSession(model, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="no such file"):
        SlideSession(model, "/nonexistent/slide.zarr")
    nan = sample.image.astype(np.float32)
    nan[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SlideSession(model, nan).predict()
    slide.close()
    with pytest.raises(ValueError, match="closed"):
        slide.predict((slice(0, 10), slice(0, 10)))


def test_a_stack_is_worked_on_slice_by_slice(model, sample):
    stack = np.stack([sample.image, sample.image[::-1]])
    memory = RefineSession(model, stack, rgb=False)
    slide = SlideSession(model, da.from_array(stack, chunks=(1, 128, 128)), rgb=False)
    region = (slice(1, 2), slice(0, 256), slice(0, 256))
    assert np.array_equal(slide.predict(region)[0], memory.predict()[1])
    assert slide.features.keys(region) == [(1, 0, 0)]


def test_an_ome_zarr_image_gives_its_full_resolution_level(tmp_path, sample):
    root = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    root.create_array("0", shape=(1, 1, 256, 256), dtype=np.uint8, chunks=(1, 1, 64, 64))[:] = (
        sample.image[None, None]
    )
    root.create_array("1", shape=(1, 1, 128, 128), dtype=np.uint8)
    root.attrs["multiscales"] = [
        {
            "axes": [{"name": n} for n in ("t", "c", "y", "x")],
            "datasets": [{"path": "0"}, {"path": "1"}],
        }
    ]
    image = LazyImage(tmp_path / "image.ome.zarr")
    assert image.spatial_shape == (256, 256)
    assert np.array_equal(image.read((slice(0, 256), slice(0, 256))), sample.image)


def test_the_first_region_asked_for_starts_on_a_tile_corner(model):
    big = synthetic_fluorescence((512, 512), seed=2).image
    slide = SlideSession(model, big, tile_size=128)
    slide.predict((slice(50, 306), slice(70, 326)))
    assert slide.features.computed == 4  # 2 x 2 tiles, not 3 x 3
    slide.predict((slice(0, 40), slice(0, 60)))  # the grid stays: one more tile
    assert slide.features.computed == 5
    again = SlideSession(model, big, tile_size=128)
    again.predict((slice(50, 306), slice(70, 326)))
    for key, value in slide.features.get((0, 1, 1)).items():
        assert torch.equal(value, again.features.get((0, 1, 1))[key])


def test_a_blank_region_is_background_and_leaves_the_session_usable(model, sample, tmp_path):
    image = np.zeros((512, 512), np.uint8)
    image[:256, :256] = sample.image  # tissue in one corner, scanner background elsewhere
    slide = SlideSession(model, image, tile_size=128, context=16)
    tissue = (slice(0, 256), slice(0, 256))
    marks = np.zeros((512, 512), np.uint8)
    marks[tissue] = _scribbles(sample, slide.predict(tissue))
    slide.run(marks)
    tuned = slide.predict(slide.working_region)
    blank = (slice(300, 500), slice(300, 500))
    assert not slide.predict(blank).any() and slide.instances(blank)[1] == {}
    far = np.zeros_like(marks)
    far[400:404, 400:420] = 1
    with pytest.raises(ValueError, match=r"region \[.*\] is blank .*nothing to segment"):
        slide.run(far)
    assert slide.working_session is not None and not slide.working_session.closed
    np.testing.assert_array_equal(slide.predict(slide.working_region), tuned)
    assert slide.reset()  # from the head tuned before the refusal
    np.testing.assert_array_equal(
        slide.predict(tissue), SlideSession(model, image, tile_size=128).predict(tissue)
    )
    written = slide.write_prediction(tmp_path / "out.zarr")  # blank chunks are background
    assert not np.asarray(written[256:, 256:]).any() and np.asarray(written[:256, :256]).any()


def test_the_scaling_sample_spreads_over_slices_rows_and_columns():
    stack = np.broadcast_to(np.arange(8, dtype=np.uint8)[:, None, None], (8, 1024, 1024))
    patches = LazyImage(stack, rgb=False).sample(8 * 256 * 256).reshape(-1, 256, 256)
    assert len(np.unique(patches[:, 0, 0])) >= 5  # most slices, not the first few
    grid = (np.arange(1024)[:, None] // 256 * 4 + np.arange(1024)[None, :] // 256).astype(np.uint8)
    patches = LazyImage(grid).sample(6 * 256 * 256).reshape(-1, 256, 256)
    assert len(np.unique(patches[:, 0, 0])) == 6  # six places, not one corner


def test_a_sample_of_one_value_scales_each_tile_on_its_own(model, monkeypatch):
    monkeypatch.setattr(tn, "EXACT_MAX_PIXELS", 16)
    monkeypatch.setattr(tn, "SAMPLE_PIXELS", 4 * 256 * 256)
    image = np.zeros((1024, 1024), np.uint8)
    image[100:200, 300:400] = 200  # tissue between the sample's patches
    with pytest.warns(UserWarning, match="its sample of the image is one value"):
        scale = tn.tile_normaliser(model, LazyImage(image))
    tile = image[64:256, 256:448]
    np.testing.assert_allclose(scale(tile, ()), model.normalise_image(tile))

"""Limits a session keeps: memory it refuses to exceed, one in-place tuner per model, close."""

from __future__ import annotations

import copy
import gc
import math
import os
import resource
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _tiny_nets import disks_scene

from napari_scribble_refine.core import RefineSession, load_model
from napari_scribble_refine.core.memory import (
    TooLargeError,
    available_memory,
    release_free_memory,
)
from napari_scribble_refine.core.tiling import compute_features


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _lazy_image(side: int) -> np.ndarray:
    """A huge uint8 image that costs (almost) no memory: zero pages and one bright square."""
    image = np.zeros((side, side), np.uint8)
    image[100:200, 100:200] = 200
    return image


def test_an_image_too_large_for_the_machine_is_refused_before_any_allocation():
    """32,768² needs about 190 GB of features: refused from the estimate, with the figures."""
    assert available_memory() is not None  # Linux: /proc/meminfo
    image = _lazy_image(32768)
    before = _peak_rss_mb()
    with pytest.raises(TooLargeError) as caught:
        RefineSession(load_model("hovernet-fluo"), image)
    message = str(caught.value)
    assert message.startswith("image: a session on shape (32768, 32768) needs about")
    assert "cached features 136.0 GB" in message  # 136 bytes per pixel, measured on a crop
    assert "is available. The largest image that fits is about" in message
    assert isinstance(caught.value, ValueError)
    assert _peak_rss_mb() - before < 1000  # the image was not even copied
    assert image[150, 150] == 200 and image.sum() == 200 * 100 * 100  # not modified


def test_the_memory_limit_is_a_setting_and_names_the_largest_image_that_fits(model2):
    image = disks_scene(np.random.default_rng(1), size=1100, n_bright=30, n_dim=0)[0]
    with pytest.raises(
        TooLargeError, match=r"shape \(1100, 1100\).* but 1\.0 GB is available"
    ) as e:
        RefineSession(model2, image, memory_limit_mb=1024, history_budget_mb=100)
    side = int(str(e.value).split("fits is about ")[1].split(" x ")[0].replace(",", ""))
    assert 256 <= side < 1100
    with pytest.raises(TooLargeError, match="no image fits"):
        RefineSession(model2, image, memory_limit_mb=500, history_budget_mb=1024)
    # a larger limit, or none at all, lets the same session start
    session = RefineSession(model2, image, memory_limit_mb=math.inf)
    assert session.predict().shape == (1100, 1100)
    session = RefineSession(model2, image, memory_limit_mb=8192, history_budget_mb=100)
    assert session.predict().shape == (1100, 1100)


def test_a_stack_too_large_is_refused_with_the_depth_that_fits(model2):
    stack = np.stack([disks_scene(np.random.default_rng(z), size=256)[0] for z in range(20)])
    with pytest.raises(TooLargeError, match=r"shape \(20, 256, 256\).*or \d+ slices of this"):
        RefineSession(model2, stack, memory_limit_mb=850, history_budget_mb=10)


def test_a_model_tuned_in_place_has_one_open_session_at_a_time(model2, scene, config):
    image, kinds = scene
    first = RefineSession(model2, image, config, copy_model=False)
    assert first.model is model2
    with pytest.raises(ValueError, match=r"already tuned in place .* copy_model=True"):
        RefineSession(model2, image, config, copy_model=False)
    copied = RefineSession(model2, image, config)  # its own copy: always allowed
    assert copied.model is not model2
    first.close()
    second = RefineSession(model2, image, config, copy_model=False)
    del second
    gc.collect()
    with RefineSession(model2, image, config, copy_model=False) as third:  # the other was freed
        assert third.predict().shape == image.shape
    RefineSession(model2, image, config, copy_model=False).close()  # closed by the block


def test_two_threads_cannot_tune_one_model_in_place(model2, scene, config):
    """Before: autograd errors in one thread and wrong results in the other."""
    image, kinds = scene
    scribbles = np.where(kinds > 0, 2, 1).astype(np.uint8) * (np.arange(96) % 7 == 0)[None]
    pristine = copy.deepcopy(model2)
    outcomes: list[object] = []
    started, opened = threading.Barrier(2), threading.Barrier(2)

    def work() -> None:
        started.wait()
        try:
            session = RefineSession(model2, image, config, copy_model=False)
        except ValueError as err:
            outcomes.append(err)
            opened.wait()
            return
        opened.wait()  # both sessions were asked for while this one is open
        outcomes.append(session.run(scribbles).prediction)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in outcomes if isinstance(o, ValueError)]
    results = [o for o in outcomes if isinstance(o, np.ndarray)]
    assert len(errors) == 1 and len(results) == 1
    assert "already tuned in place" in str(errors[0])
    # the session that tuned the model gives what one session alone gives
    alone = RefineSession(pristine, image, config).run(scribbles).prediction
    np.testing.assert_array_equal(results[0], alone)


def test_a_closed_session_refuses_work_and_frees_its_features(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    session.close()
    session.close()  # twice is fine
    assert session.features == {}
    for call in (
        session.predict,
        session.logits,
        session.instances,
        session.undo,
        session.redo,
        session.reset,
        lambda: session.run(np.ones(image.shape, np.uint8)),
        lambda: session.add_class("new"),
    ):
        with pytest.raises(ValueError, match="session: this RefineSession is closed"):
            call()


def test_the_trunk_reports_progress_tile_by_tile(model2, scene):
    image = np.tile(scene[0], (3, 3))  # 288², tiles of 128: 9 tiles
    calls: list[tuple[int, int]] = []
    compute_features(
        model2, image, is_3d=False, tile_size=128, halo=16, progress=lambda *a: calls.append(a)
    )
    assert calls == [(i, 9) for i in range(1, 10)]
    calls.clear()
    stack = np.stack([scene[0]] * 5)
    RefineSession(model2, stack, tile_size=48, progress=lambda *a: calls.append(a), rgb=False)
    assert calls[-1] == (len(calls), len(calls)) and len(calls) == 4 * 5  # 4 tiles x 5 slices


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_system():
    """The soak's 271 MB of RSS growth was freed heap glibc kept (23 MB was live)."""
    process_rss = Path("/proc/self/statm")

    def rss_mb() -> float:
        return int(process_rss.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    chunks = [np.ones(1000) for _ in range(100_000)]  # 8 KB each: on the heap, not mmap'd
    keep = chunks[-1]
    del chunks
    gc.collect()
    before = rss_mb()
    release_free_memory()
    assert before - rss_mb() > 400  # of about 800 MB freed
    assert keep.sum() == 1000

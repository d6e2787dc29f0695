"""The real-data training script: batches, the split, and resuming after an interruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

import train_real  # noqa: E402


def test_split_holds_out_whole_consep_tiles_and_every_dsb_modality():
    ids = train_real.validation_ids()
    rows = train_real.read_manifest()
    tiles = {r["sample_id"].rsplit("_", 1)[0] for r in rows if r["source"] == "consep"}
    held = {i.rsplit("_", 1)[0] for i in ids if i.startswith(("test_", "train_"))}
    assert held and held < tiles
    for tile in held:  # every patch of a held-out tile is held out
        patches = {r["sample_id"] for r in rows if r["sample_id"].rsplit("_", 1)[0] == tile}
        assert patches <= ids
    for prefix in ("fluo_", "histo_", "bfgray_"):
        assert any(i.startswith(prefix) for i in ids)
    assert sorted(train_real.make_split(rows)) == sorted(ids)  # the committed file is the rule's


def test_batches_are_a_pure_function_of_seed_and_step_and_mix_modalities():
    recipe = train_real.RECIPES["hovernet-fluo"]
    items = train_real.load_items(recipe, train_real.DATA, "train")
    assert not {i.sample_id for pool in items.values() for i in pool} & train_real.validation_ids()
    a = train_real.make_batch(items, recipe, seed=5, step=3, crop=64)
    b = train_real.make_batch(items, recipe, seed=5, step=3, crop=64)
    c = train_real.make_batch(items, recipe, seed=5, step=4, crop=64)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (sum(recipe["mix"].values()), 1, 64, 64)
    assert set(np.unique(a["np"].numpy())) <= {0, 1}


@pytest.mark.slow
def test_training_resumes_exactly_after_an_interruption(tmp_path):
    common = ["--model", "hovernet-fluo", "--crop", "64", "--val-every", "1",
              "--val-per-group", "1", "--log-every", "1"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_real.main([*common, "--steps", "3", "--scratch", str(straight), "--out", str(straight)])
    train_real.main([*common, "--steps", "3", "--scratch", str(resumed), "--out", str(resumed),
                     "--stop-after", "2"])  # fmt: skip
    assert not (resumed / "hovernet-fluo.safetensors").exists()  # interrupted before the end
    train_real.main([*common, "--steps", "3", "--scratch", str(resumed), "--out", str(resumed)])
    from safetensors.torch import load_file

    a = load_file(str(straight / "hovernet-fluo.safetensors"))
    b = load_file(str(resumed / "hovernet-fluo.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)

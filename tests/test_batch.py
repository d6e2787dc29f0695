"""Batch prediction on dask.distributed: outputs, skipping, failures, tuned models, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from distributed import LocalCluster

from napari_scribble_refine.batch import (
    MARKER_SUFFIX,
    BatchReport,
    apply_model,
    output_names,
    output_paths,
)
from napari_scribble_refine.cli import main
from napari_scribble_refine.core import RefineConfig, RefineSession, load_model
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

MODEL = "hovernet-fluo"
SEEDS = (930_000, 930_001, 930_002)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Three 128x128 synthetic fluorescence TIFFs in ``tmp_path/in``."""
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for seed in SEEDS:
        path = folder / f"img{seed}.tif"
        tifffile.imwrite(path, synthetic_fluorescence((128, 128), seed=seed).image)
        paths.append(path)
    return paths


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _direct(model: str | Path, path: Path) -> RefineSession:
    return RefineSession(load_model(model), tifffile.imread(path), RefineConfig(device="cpu"))


def _apply(model: str | Path, paths: list[Path], out: Path, **kwargs: object) -> BatchReport:
    """Apply on two in-process workers (threads: quick to start)."""
    kwargs = {"n_workers": 2, "processes": False, **kwargs}
    return apply_model(model, paths, out, **kwargs)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_every_output_is_written_and_equals_a_direct_prediction(images, out):
    calls: list[tuple[int, int]] = []
    threads = torch.get_num_threads()
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:  # a running scheduler, given by its address
        report = apply_model(
            MODEL,
            images,
            out,
            scheduler=cluster.scheduler_address,
            progress=lambda done, total: calls.append((done, total)),
        )
    assert sorted(report.written) == sorted(images)
    assert report.skipped == [] and report.failed == {} and report.ok
    assert report.summary().startswith("3 of 3 images written, 0 skipped")
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert torch.get_num_threads() == threads  # the tasks' single thread does not stay
    for path in images:
        session = _direct(MODEL, path)
        classes, instances, table, shapes, marker = output_paths(path, out)
        np.testing.assert_array_equal(tifffile.imread(classes), session.predict())
        expected_instances, expected_types = session.instances()
        np.testing.assert_array_equal(tifffile.imread(instances), expected_instances)
        rows = table.read_text().splitlines()
        assert rows[0].startswith("id,class,class_name") and len(rows) == len(expected_types) + 1
        features = json.loads(shapes.read_text())["features"]
        assert len(features) == len(expected_types) > 0
        record = json.loads(marker.read_text())
        assert record["input"] == str(path) and record["model"] == MODEL
        assert record["files"] == [p.name for p in (classes, instances, table, shapes)]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_second_run_skips_complete_outputs_and_leaves_them_untouched(images, out):
    first = _apply(MODEL, images, out)
    assert len(first.written) == 3
    before = _mtimes(out)
    assert len(before) == 3 * 5
    calls: list[tuple[int, int]] = []
    again = _apply(MODEL, images, out, progress=lambda d, t: calls.append((d, t)))
    assert sorted(again.skipped) == sorted(images)
    assert again.written == [] and again.failed == {}
    assert "0 of 3 images written, 3 skipped (already complete)" in again.summary()
    assert calls == [(3, 3)]
    assert _mtimes(out) == before


def test_outputs_of_a_changed_input_or_another_model_are_redone(images, out, tmp_path):
    _apply(MODEL, images, out)
    changed = images[1]
    tifffile.imwrite(changed, synthetic_fluorescence((128, 128), seed=930_100).image)
    report = _apply(MODEL, images, out)
    assert report.written == [changed] and len(report.skipped) == 2
    classes = output_paths(changed, out)[0]
    np.testing.assert_array_equal(tifffile.imread(classes), _direct(MODEL, changed).predict())
    # another model file: redone; a byte-for-byte copy of it under another name: skipped
    other = _direct(MODEL, images[0]).save_model(tmp_path / "other.safetensors")
    assert sorted(_apply(other, images, out).written) == sorted(images)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(other.read_bytes())
    assert sorted(_apply(copy, images, out).skipped) == sorted(images)


def test_a_corrupt_input_is_reported_and_the_others_are_still_written(images, out, tmp_path):
    corrupt = tmp_path / "in" / "corrupt.tif"
    corrupt.write_text("this is not a TIFF file\n")
    four_d = tmp_path / "in" / "four_d.tif"
    tifffile.imwrite(four_d, np.ones((2, 2, 16, 16), np.uint8))
    missing = tmp_path / "in" / "missing.tif"
    inputs = [corrupt, images[0], four_d, images[1], missing, images[2]]
    report = _apply(MODEL, inputs, out)
    assert sorted(report.written) == sorted(images)
    assert set(report.failed) == {corrupt, four_d, missing}
    assert "cannot read" in report.failed[corrupt] and "as a TIFF" in report.failed[corrupt]
    assert "no such file" in report.failed[missing]
    assert "4D images are not supported" in report.failed[four_d]
    assert all("\n" not in reason for reason in report.failed.values())
    assert not report.ok and "3 failed" in report.summary()
    for path in images:
        assert all(p.is_file() for p in output_paths(path, out))
    for path in (corrupt, four_d, missing):
        assert not any(p.exists() for p in output_paths(path, out))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_half_written_output_is_redone(images, out):
    _apply(MODEL, images, out)
    half = images[2]
    classes, *_, marker = output_paths(half, out)
    expected = tifffile.imread(classes)
    # An interrupted run: the marker gone, one output cut short, a temporary file left.
    marker.unlink()
    classes.write_bytes(classes.read_bytes()[:100])
    stale = out / f".{half.stem}.partial-0123456789ab_instances.tif"
    stale.write_bytes(b"partial")
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(half.stem)}
    report = _apply(MODEL, images, out)
    assert report.written == [half] and sorted(report.skipped) == sorted(images[:2])
    np.testing.assert_array_equal(tifffile.imread(classes), expected)
    assert json.loads(marker.read_text())["input"] == str(half)
    assert not stale.exists()
    assert {n: t for n, t in _mtimes(out).items() if n in kept} == {
        n: t for n, t in kept.items() if not n.startswith(".")
    }


@pytest.mark.slow
def test_a_tuned_model_file_gives_its_own_predictions_on_worker_processes(images, out, tmp_path):
    image = tifffile.imread(images[0])
    truth = synthetic_fluorescence((128, 128), seed=SEEDS[0]).instances
    session = RefineSession(load_model(MODEL), image, RefineConfig(max_iterations=20, device="cpu"))
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[(truth > 0) & (np.arange(128)[None, :] < 64)] = 1  # nuclei called background
    session.run(scribbles)
    tuned = session.save_model(tmp_path / "tuned.safetensors")
    report = apply_model(tuned, images, out, n_workers=2, processes=True)
    assert sorted(report.written) == sorted(images) and report.failed == {}
    changed = 0
    for path in images:
        written = tifffile.imread(output_paths(path, out)[0])
        np.testing.assert_array_equal(written, _direct(tuned, path).predict())
        changed += int((written != _direct(MODEL, path).predict()).sum())
    assert changed > 100  # the tuned head, not the shipped one


def test_bad_batches_are_refused_before_any_work(images, out, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / images[0].name
    twin.write_bytes(images[0].read_bytes())
    with pytest.raises(ValueError, match="is given twice"):
        _apply(MODEL, [images[0], images[0]], out)
    with pytest.raises(ValueError, match="does not exist; create it"):
        _apply(MODEL, images, tmp_path / "no-such-folder")
    with pytest.raises(ValueError, match="no input images"):
        _apply(MODEL, [], out)
    with pytest.raises(ValueError, match="Unknown model"):
        _apply("no-such-model", images, out)
    with pytest.raises(ValueError, match="n_workers must be 1 or more"):
        _apply(MODEL, images, out, n_workers=0)
    with pytest.raises(ValueError, match="a scheduler has its own workers"):
        _apply(MODEL, images, out, scheduler="tcp://127.0.0.1:8786")
    # an input that the outputs of another would replace
    victim = images[0].parent / f"{images[1].stem}_classes.tif"
    victim.write_bytes(images[0].read_bytes())
    with pytest.raises(ValueError, match="would be overwritten by the outputs of"):
        _apply(MODEL, [images[1], victim], images[0].parent)
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_the_apply_command_end_to_end(images, out, tmp_path, capsys):
    corrupt = tmp_path / "in" / "corrupt.tif"
    corrupt.write_text("not a TIFF")
    args = ["apply", "--model", MODEL, *map(str, images), str(corrupt), "--out", str(out)]
    assert main([*args, "--workers", "2", "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert "3 of 4 images written, 0 skipped (already complete), 1 failed" in captured.out
    assert f"1 of 4 images failed:\n  {corrupt}: input: cannot read" in captured.err
    for path in images:
        classes = tifffile.imread(output_paths(path, out)[0])
        np.testing.assert_array_equal(classes, _direct(MODEL, path).predict())
    before = _mtimes(out)
    assert main(args[:-3] + ["--out", str(out), "--no-progress"]) == 0
    assert "0 of 3 images written, 3 skipped" in capsys.readouterr().out
    assert _mtimes(out) == before
    assert main([*args[:-1], str(tmp_path / "missing")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main([*args, "--workers", "0"]) == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err


def test_the_marker_is_written_last(images, out, monkeypatch):
    """An output that fails to be written leaves no marker (and no temporary files)."""
    from napari_scribble_refine import batch

    def broken(*args: object, **kwargs: object) -> list[Path]:
        raise OSError("disk full")

    monkeypatch.setattr(batch, "write_instances", broken)
    report = _apply(MODEL, images[:1], out)
    assert report.failed == {images[0]: "disk full"}
    assert not (out / f"{images[0].stem}{MARKER_SUFFIX}").exists()
    assert os.listdir(out) == []


def test_inputs_that_share_a_name_are_told_apart_by_their_folders(images, out, tmp_path):
    twin_dir = tmp_path / "elsewhere"
    twin_dir.mkdir()
    twin = twin_dir / images[0].name
    twin.write_bytes(images[0].read_bytes())
    names = output_names([*images, twin])
    assert names[images[1]] == images[1].stem  # a name no other input has stays
    assert names[images[0]] == f"in_{images[0].stem}" and names[twin] == f"elsewhere_{twin.stem}"
    assert output_names([Path("a/x/image.tif"), Path("b/x/image.tif")]) == {
        Path("a/x/image.tif"): "a_x_image",
        Path("b/x/image.tif"): "b_x_image",
    }
    report = _apply(MODEL, [images[0], twin], out)
    assert sorted(report.written) == sorted([images[0], twin])
    for path in (images[0], twin):
        assert all(p.is_file() for p in output_paths(path, out, names[path]))
    assert _apply(MODEL, [images[0], twin], out).skipped  # re-run: both finished

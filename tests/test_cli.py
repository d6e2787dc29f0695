"""The command line: predict, refine (with --apply-to), the demo, and bad input."""

import numpy as np
import tifffile

from napari_scribble_refine.cli import main
from napari_scribble_refine.core import RefineConfig, RefineSession, load_model
from napari_scribble_refine.core.synthetic import synthetic_fluorescence


def _write_sample(path, seed):
    sample = synthetic_fluorescence((96, 96), seed=seed)
    tifffile.imwrite(path, sample.image)
    return sample


def test_predict_writes_classes_and_instances(tmp_path):
    _write_sample(tmp_path / "img.tif", 920_000)
    assert main(["predict", str(tmp_path / "img.tif"), "--out", str(tmp_path / "res")]) == 0
    classes = tifffile.imread(tmp_path / "res_classes.tif")
    instances = tifffile.imread(tmp_path / "res_instances.tif")
    assert classes.shape == instances.shape == (96, 96)
    assert set(np.unique(classes)) <= {0, 1} and classes.any()
    assert np.array_equal(instances > 0, classes > 0)


def test_refine_writes_a_refined_prediction_and_applies_it_to_other_images(tmp_path, capsys):
    sample = _write_sample(tmp_path / "img.tif", 920_001)
    _write_sample(tmp_path / "other.tif", 920_002)
    scribbles = np.zeros((96, 96), np.uint8)
    scribbles[:6, :] = 1  # background along the top edge
    scribbles[(sample.instances > 0) & (np.arange(96)[None, :] < 48)] = 2
    before = tifffile.imread(tmp_path / "img.tif").copy()
    tifffile.imwrite(tmp_path / "scribbles.tif", scribbles)
    args = [
        "refine",
        str(tmp_path / "img.tif"),
        str(tmp_path / "scribbles.tif"),
        "--out",
        str(tmp_path / "ref"),
        "--apply-to",
        str(tmp_path / "other.tif"),
    ]
    assert main(args) == 0
    assert "scribbled pixels" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "img.tif"), "--out", str(tmp_path / "pre")]) == 0
    assert main(["predict", str(tmp_path / "other.tif"), "--out", str(tmp_path / "pre_other")]) == 0
    refined = tifffile.imread(tmp_path / "ref_classes.tif")
    applied = tifffile.imread(tmp_path / "ref_other_classes.tif")
    assert np.array_equal(tifffile.imread(tmp_path / "img.tif"), before)

    # The same refinement through the library: the CLI writes its prediction, and predicts
    # the other image with the refined head (not the pre-trained one).
    session = RefineSession(load_model("hovernet-fluo"), sample.image, RefineConfig())
    result = session.run(scribbles)
    np.testing.assert_array_equal(refined, result.prediction)
    other = tifffile.imread(tmp_path / "other.tif")
    expected = RefineSession(session.model, other, RefineConfig()).predict()
    np.testing.assert_array_equal(applied, expected)
    pretrained_other = tifffile.imread(tmp_path / "pre_other_classes.tif")
    assert (applied != pretrained_other).sum() > 20  # the refinement reaches the other image
    # ... and changes the scribbled image beyond the (pinned) scribbled and grown pixels
    free = result.grown_scribbles == 0
    pretrained = tifffile.imread(tmp_path / "pre_classes.tif")
    assert (refined[free] != pretrained[free]).sum() > 20


def test_demo_runs_and_writes_tiffs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--interactions", "1", "--size", "128"]) == 0
    assert '"seconds_per_interaction"' in capsys.readouterr().out
    for label in ("fluorescence", "he"):
        for part in ("image", "scribbles", "prediction", "instances", "truth_classes"):
            assert (out / f"{label}_{part}.tif").is_file()


def test_bad_input_is_a_clear_message_and_exit_2(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.tif" in capsys.readouterr().err
    _write_sample(tmp_path / "img.tif", 920_003)
    tifffile.imwrite(tmp_path / "bad.tif", np.zeros((10, 10), np.uint8))
    args = ["refine", str(tmp_path / "img.tif"), str(tmp_path / "bad.tif"), "--out", "x"]
    assert main(args) == 2
    assert "scribbles" in capsys.readouterr().err


def test_a_missing_out_folder_is_refused_before_any_work(tmp_path, capsys):
    _write_sample(tmp_path / "img.tif", 920_004)
    missing = tmp_path / "no" / "such" / "res"
    for command in (
        ["predict", str(tmp_path / "img.tif")],
        ["refine", str(tmp_path / "img.tif"), str(tmp_path / "img.tif")],
    ):
        assert main([*command, "--out", str(missing)]) == 2
        err = capsys.readouterr()
        assert f"the folder {missing.parent} does not exist" in err.err
        assert err.out == ""  # refused before loading a model or predicting
    assert not (tmp_path / "no").exists()


def test_non_finite_settings_are_refused_with_exit_2(tmp_path, capsys):
    sample = _write_sample(tmp_path / "img.tif", 920_005)
    tifffile.imwrite(tmp_path / "scr.tif", (sample.types[:, :] > 0).astype(np.uint8) + 1)
    args = ["refine", str(tmp_path / "img.tif"), str(tmp_path / "scr.tif")]
    assert main([*args, "--learning-rate", "inf", "--out", str(tmp_path / "r")]) == 2
    assert "RefineConfig.learning_rate must be a finite number, got inf" in capsys.readouterr().err
    assert not list(tmp_path.glob("r_*"))

"""The command line: predict, refine (with --apply-to), the demo, and bad input."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from napari_scribble_refine.cli import main
from napari_scribble_refine.core import RefineConfig, RefineSession, load_model
from napari_scribble_refine.core.hovernet_postprocess import MIN_OBJECT_SIZE
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence


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
    assert not (instances > 0)[classes == 0].any()
    # every nucleus pixel is in an instance, except specks HoVer-Net's rule drops
    specks, _ = ndi.label(classes > 0)  # 4-connected, as the rule labels them
    sizes = np.bincount(specks.ravel())
    missed = (classes > 0) & (instances == 0)
    assert (sizes[specks[missed]] < MIN_OBJECT_SIZE).all()


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


def test_an_image_larger_than_memory_is_refused_from_the_tiff_header(tmp_path, capsys):
    """A 300,000² TIFF (90 GB, a sparse file here) is refused before it is read."""
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, shape=(300_000, 300_000), dtype=np.uint8, bigtiff=True)
    assert main(["predict", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line, no traceback
    assert "image: " in err and "(300000, 300000) (uint8) that needs 83.8 GB" in err
    assert "`scribble-refine slide` reads it tile by tile" in err


def test_a_damaged_tiff_is_a_one_line_message(tmp_path, capsys):
    _write_sample(tmp_path / "img.tif", 920_006)
    data = (tmp_path / "img.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    for name in ("cut.tif", "junk.tif"):
        assert main(["predict", str(tmp_path / name), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"scribble-refine predict: image: cannot read {tmp_path / name}")
        assert err.count("\n") == 1


def _script(module: torch.nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))


def test_torchscript_models_run_from_the_command_line(tmp_path, unet2, capsys):
    """Before: --allow-code then "missing 1 required positional argument: 'head'"."""
    sample = _write_sample(tmp_path / "img.tif", 920_007)
    _script(unet2, tmp_path / "net.pt")
    scribbles = np.zeros((96, 96), np.uint8)
    scribbles[:4] = 1
    scribbles[sample.instances == sample.instances.max()] = 2
    tifffile.imwrite(tmp_path / "scr.tif", scribbles)
    common = ["--model", str(tmp_path / "net.pt"), "--allow-code", "--size-multiple", "2"]
    with pytest.warns(UserWarning, match=r"no head given; tuning 'final'"):
        status = main(["predict", str(tmp_path / "img.tif"), *common, "--out", str(tmp_path / "p")])
    assert status == 0
    args = ["refine", str(tmp_path / "img.tif"), str(tmp_path / "scr.tif"), *common]
    args += ["--head", "dec", "--class-names", "background,nucleus", "--out", str(tmp_path / "r")]
    with pytest.warns(UserWarning, match="execute code"):
        assert main(args) == 0
    assert "scribbled pixels" in capsys.readouterr().out
    predicted = tifffile.imread(tmp_path / "p_classes.tif")
    refined = tifffile.imread(tmp_path / "r_classes.tif")
    assert predicted.shape == refined.shape == (96, 96)
    assert (predicted != refined).any()  # the tuned layers changed the prediction
    # the options name what they are for
    builtin = ["predict", str(tmp_path / "img.tif"), "--head", "x", "--out", str(tmp_path / "b")]
    assert main(builtin) == 2
    assert "apply to TorchScript models and bioimage.io packages only" in capsys.readouterr().err


class _FailsOnLargeImages(torch.nn.Module):
    """Passes the loader's 64² probe, then fails on a real image (a bug in a model's code)."""

    def __init__(self) -> None:
        super().__init__()
        self.final = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 64:
            raise RuntimeError("this model has a bug")
        return self.final(x)


def test_an_unexpected_error_is_a_short_message_and_a_log(tmp_path, capsys):
    _write_sample(tmp_path / "img.tif", 920_008)
    _script(_FailsOnLargeImages(), tmp_path / "buggy.pt")
    args = ["predict", str(tmp_path / "img.tif"), "--model", str(tmp_path / "buggy.pt")]
    with pytest.warns(UserWarning):
        status = main([*args, "--allow-code", "--out", str(tmp_path / "r")])
    assert status == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("scribble-refine predict: unexpected error (")
    assert "this model has a bug" in err
    log = Path(err.split("The details are in ")[1].split("; please report")[0])
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "this model has a bug" in text
    assert f"predict {tmp_path / 'img.tif'}" in text  # the command, to reproduce it
    log.unlink()


def test_long_work_shows_progress_on_a_terminal(tmp_path):
    """Before: a 2048² predict was silent for 26 s. Bars go to stderr when it is a terminal."""
    sample = _write_sample(tmp_path / "img.tif", 920_009)
    scribbles = np.zeros((96, 96), np.uint8)
    scribbles[:4] = 1
    scribbles[sample.instances == sample.instances.max()] = 2
    tifffile.imwrite(tmp_path / "scr.tif", scribbles)
    command = [sys.executable, "-m", "napari_scribble_refine.cli", "refine"]
    command += [str(tmp_path / "img.tif"), str(tmp_path / "scr.tif"), "--out", str(tmp_path / "r")]

    def run_on_a_terminal(extra: list[str]) -> str:
        leader, follower = pty.openpty()
        size = struct.pack("HHHH", 24, 100, 0, 0)  # rows, columns: a terminal has a size
        fcntl.ioctl(follower, termios.TIOCSWINSZ, size)
        done = subprocess.run(command + extra, stderr=follower, stdout=subprocess.DEVNULL)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        assert done.returncode == 0
        return b"".join(chunks).decode(errors="replace")

    shown = run_on_a_terminal([])
    assert "running the network" in shown and "refining" in shown
    assert "separating nuclei" in shown
    assert run_on_a_terminal(["--no-progress"]).strip() == ""

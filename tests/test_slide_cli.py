"""``scribble-refine slide``: a slide refined and written to zarr from the command line."""

from __future__ import annotations

import numpy as np
import tifffile
import torch
import zarr

from napari_scribble_refine.cli import main
from napari_scribble_refine.core import RefineSession, SlideSession, load_model
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence


def test_slide_refines_writes_zarr_and_refuses_another_head(tmp_path, capsys):
    sample = synthetic_fluorescence((256, 256), seed=8)
    image = tmp_path / "slide.tif"
    tifffile.imwrite(image, sample.image)
    model = load_model("hovernet-fluo")
    pretrained = RefineSession(model, sample.image).predict()
    found = [i for i in range(1, 8) if pretrained[sample.instances == i].mean() > 0.8]
    marks = np.zeros((256, 256), np.uint8)
    ys, xs = np.nonzero(sample.instances == found[0])
    cy, cx = int(ys.mean()), int(xs.mean())
    marks[cy - 2 : cy + 2, cx - 8 : cx + 8] = 1  # "this nucleus is background"
    scribbles = tmp_path / "scribbles.tif"
    tifffile.imwrite(scribbles, marks)
    out = tmp_path / "result.zarr"
    tuned = tmp_path / "tuned.safetensors"
    argv = ["slide", str(image), "--out", str(out), "--no-progress"]
    assert main([*argv, "--scribbles", str(scribbles), "--save-model", str(tuned)]) == 0
    printed = capsys.readouterr().out
    assert "refined on the region [" in printed and "wrote the class map (256, 256)" in printed
    written = np.asarray(zarr.open_array(str(out), mode="r")[:])
    expected = SlideSession(model, sample.image)
    expected.run(marks)
    assert (written == expected.predict((slice(0, 256), slice(0, 256)))).all()
    assert (written[cy - 2 : cy + 2, cx - 8 : cx + 8] == 0).all()  # the stroke is kept
    assert not np.array_equal(written, pretrained)
    # the saved model holds the tuned head, not the pre-trained one
    saved = SlideSession(load_model(str(tuned)), sample.image).model.head_state()["weights"]
    refined = expected.model.head_state()["weights"]
    pretrained_head = SlideSession(model, sample.image).model.head_state()["weights"]
    assert all(torch.equal(saved[k], refined[k]) for k in refined)
    assert not all(torch.equal(saved[k], pretrained_head[k]) for k in refined)
    # the pre-trained model's result must not extend the tuned one's
    assert main(argv) == 2
    assert "differs in: the model's head" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert main([*argv, "--scribbles", str(scribbles), "--region", "1:2"]) == 2
    assert "give 2 ranges" in capsys.readouterr().err
    assert main([*argv, "--region", "0:64,0:64"]) == 2
    assert "give --scribbles too" in capsys.readouterr().err

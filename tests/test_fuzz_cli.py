"""Property-based tests of the command line: bad arguments and damaged TIFFs give exit 2.

``main([...])`` gets random arguments around a valid call (unknown devices, non-finite or
negative numbers, missing or unwritable output folders, models that do not exist) and
TIFF files that are damaged (truncated, bytes flipped, a header claiming a huge image) or
hold arrays the engine refuses (4-D, boolean, complex, constant, NaN, one pixel). Each run
either succeeds (exit 0, the class map written with the image's shape) or returns exit 2
with a one-line message on stderr; it never raises, never writes into its inputs, and never
allocates more than 500 MiB. Every example loads a model, so there are few of them.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _fuzz import DTYPES, arrays, examples, memory_bound, write_tiny_hovernet
from hypothesis import given
from hypothesis import strategies as st

from napari_scribble_refine.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny model, a valid image and scribbles for it, and an out folder."""
    folder = tmp_path_factory.mktemp("cli")
    write_tiny_hovernet(folder / "tiny.safetensors")
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "image.tif", rng.random((16, 16)).astype(np.float32))
    scribbles = np.zeros((16, 16), np.uint8)
    scribbles[2:4, 2:4], scribbles[10:12, 10:12] = 1, 2
    tifffile.imwrite(folder / "scribbles.tif", scribbles)
    (folder / "notes.txt").write_text("not a TIFF\n")
    (folder / "out").mkdir()
    return folder


def _ifd_entries(data: bytes) -> list[tuple[int, int, int, int]]:
    """(offset, tag, type, count) of the first IFD's entries of a little-endian TIFF."""
    (ifd,) = struct.unpack("<I", data[4:8])
    (n,) = struct.unpack("<H", data[ifd : ifd + 2])
    out = []
    for i in range(n):
        at = ifd + 2 + 12 * i
        tag, kind, count = struct.unpack("<HHI", data[at : at + 8])
        out.append((at, tag, kind, count))
    return out


@st.composite
def damaged_tiffs(draw: st.DrawFn) -> tuple[str, bytes]:
    """A TIFF file's bytes, damaged or holding an array the engine refuses; and a label."""
    shape = draw(st.sampled_from([(16, 16), (12, 16, 3), (2, 8, 8)]))
    compress = draw(st.sampled_from([None, "zlib"]))
    buffer = io.BytesIO()
    kind = draw(st.sampled_from(["array", "truncate", "flip", "claim"]))
    if kind == "array":
        array = draw(arrays(max_side=5, dtypes=[d for d in DTYPES if d.kind != "O"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                tifffile.imwrite(buffer, array, compression=compress)
            except Exception:  # noqa: BLE001 - a dtype or shape TIFF cannot hold
                tifffile.imwrite(buffer, np.zeros((1, 1), np.uint8))
                return "an unwritable array (1x1 zeros instead)", buffer.getvalue()
        return f"{array.dtype} array of shape {array.shape}", buffer.getvalue()
    rng = np.random.default_rng(draw(st.integers(0, 100)))
    tifffile.imwrite(buffer, (rng.random(shape) * 255).astype(np.uint8), compression=compress)
    data = bytearray(buffer.getvalue())
    if kind == "truncate":
        size = draw(st.integers(0, len(data) - 1))
        return f"truncated to {size} of {len(data)} bytes", bytes(data[:size])
    if kind == "flip":
        flips = {}
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, len(data) - 1))
            flips[at] = draw(st.integers(1, 255))
            data[at] ^= flips[at]
        return f"bytes xor-ed at {flips}", bytes(data)
    tags = {
        256: "ImageWidth",
        257: "ImageLength",
        258: "BitsPerSample",
        277: "SamplesPerPixel",
        278: "RowsPerStrip",
        279: "StripByteCounts",
        273: "StripOffsets",
    }
    entries = [e for e in _ifd_entries(bytes(data)) if e[1] in tags]
    at, tag, _, count = draw(st.sampled_from(entries))
    value = draw(st.sampled_from([0, 1, 3, 65535, 100_000, 2**31 - 1, 2**32 - 1]))
    data[at + 2 : at + 8] = struct.pack("<HI", 4, 1)  # one LONG value held in the entry
    data[at + 8 : at + 12] = struct.pack("<I", value)
    return f"{tags[tag]} = {value} (was {count} value(s))", bytes(data)


def _run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run ``main(argv)`` in ``cwd`` within the memory bound: (exit status, stdout, stderr).

    ``SystemExit`` (argparse's way with bad arguments) becomes its status; any other
    exception propagates and fails the test.
    """
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
            memory_bound(),
        ):
            warnings.simplefilter("ignore")
            try:
                status = main(argv)
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 1
                err.write("\n[SystemExit]")
    finally:
        os.chdir(before)
    return status, out.getvalue(), err.getvalue()


def _check_exit(status: int, stderr: str, command: str, argv: list[str]) -> None:
    """Exit 0, or exit 2 with one line on stderr naming the command."""
    assert status in (0, 2), f"exit {status} for {argv}: {stderr}"
    if status == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, f"not one line for {argv}: {stderr!r}"
        assert lines[0].startswith(f"scribble-refine {command}: "), lines[0]


def _input_bytes(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths if p.is_file()}


OPTIONS = {
    "--model": st.sampled_from(
        ["tiny.safetensors", "no-such-model", "missing.safetensors", "notes.txt", "image.tif"]
    ),
    "--device": st.sampled_from(["cpu", "cpu", "bogus", "cuda:7", "mps", "", "CPU "]),
    "--iterations": st.sampled_from(["1", "2", "0", "-1", "x", "1e3", "99999999999999999999"]),
    "--learning-rate": st.sampled_from(["0.1", "nan", "inf", "-1", "0", "x", "1e400"]),
    "--out": st.sampled_from(["out/res", "out/res", "missing/res", "out/", "notes.txt/res"]),
}
FLAGS = ["--rgb", "--no-rgb", "--no-region-growing", "--allow-code"]


@st.composite
def arguments(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A predict or refine command line around the workspace's files, some parts bad."""
    command = draw(st.sampled_from(["predict", "refine"]))
    image = draw(st.sampled_from(["image.tif", "image.tif", "missing.tif", "notes.txt", "out"]))
    argv = [command, image]
    if command == "refine":
        argv.append(
            draw(st.sampled_from(["scribbles.tif", "scribbles.tif", "image.tif", "missing.tif"]))
        )
    options = {"--model": "tiny.safetensors", "--device": "cpu", "--out": "out/res"}
    if command == "refine":
        options["--iterations"] = "1"
    for name in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=3, unique=True)):
        if command == "predict" and name in ("--iterations", "--learning-rate"):
            continue
        options[name] = draw(OPTIONS[name])
    for name, value in options.items():
        argv += [name, value]
    argv += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    if command == "refine" and draw(st.booleans()):
        argv += ["--apply-to", draw(st.sampled_from(["image.tif", "missing.tif", "notes.txt"]))]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(
            draw(st.integers(0, len(argv))), draw(st.sampled_from(["--bogus", "-x", "--", "extra"]))
        )
    return command, argv


@examples(10)
@given(arguments())
def test_cli_bad_arguments_exit_2_with_one_line(workspace, args):
    command, argv = args
    before = _input_bytes([workspace / n for n in ("image.tif", "scribbles.tif", "notes.txt")])
    status, _, stderr = _run(argv, workspace)
    _check_exit(status, stderr, command, argv)
    assert _input_bytes(list(before)) == before, "the command changed an input file"
    if status == 0:
        prefix = argv[argv.index("--out") + 1]
        classes = tifffile.imread(workspace / f"{prefix}_classes.tif")
        assert classes.shape == (16, 16)


@examples(20)
@given(damaged_tiffs(), st.sampled_from(["predict", "refine-image", "refine-scribbles"]))
def test_cli_damaged_or_unusable_tiffs_exit_2_with_one_line(workspace, tiff, role):
    label, content = tiff
    damaged = workspace / "damaged.tif"
    damaged.write_bytes(content)
    image, scribbles = "image.tif", "scribbles.tif"
    if role == "refine-scribbles":
        scribbles = damaged.name
    else:
        image = damaged.name
    command = "predict" if role == "predict" else "refine"
    argv = [command, image] + ([scribbles, "--iterations", "1"] if command == "refine" else [])
    argv += ["--model", "tiny.safetensors", "--device", "cpu", "--out", "out/damaged"]
    status, _, stderr = _run(argv, workspace)
    _check_exit(status, stderr, command, [label, *argv])
    assert damaged.read_bytes() == content, "the command changed its input file"


@pytest.mark.parametrize("bad", [["--bogus"], ["--iterations", "x"]])
def test_cli_argument_errors_return_2_with_one_line(workspace, bad):
    argv = ["refine", "image.tif", "scribbles.tif", "--out", "out/r", *bad]
    status, _, stderr = _run(argv, workspace)
    assert not stderr.endswith("[SystemExit]"), "main() raised SystemExit"
    assert status == 2 and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("size", ["0", "-3"])
def test_cli_demo_names_a_bad_size(workspace, size):
    status, _, stderr = _run(["demo", "--out", "out/demo", "--size", size], workspace)
    assert status == 2 and "--size" in stderr

"""Property-based tests of load_model on damaged files: a usable model or a clear error.

Real, valid files are damaged the ways files get damaged or forged: truncated, bytes
flipped, the safetensors header length or its JSON changed (tensor shapes claiming
terabytes, unknown dtypes, offsets out of the file, a configuration claiming huge or
negative widths, broken class names and normalisation). ``load_model`` must return a model
that works (a session on a small image opens and predicts) or raise ValueError naming the
file, and must never allocate more than 500 MiB doing so.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _fuzz import check_call, examples, write_tiny_hovernet
from hypothesis import given
from hypothesis import strategies as st

from napari_scribble_refine.core import RefineConfig, RefineSession, load_model
from napari_scribble_refine.core.models.base import SegmentationModel
from napari_scribble_refine.core.models.registry import builtin_weights

HUGE = [2**31, 2**40, 2**63 - 1, 2**64, 10**30]
ODD_JSON = st.one_of(
    st.integers(-3, 10),
    st.sampled_from([*HUGE, -(2**40), 0.5, 1e300, "x", "", None, True, [], {}, [1, "a"]]),
    st.lists(st.integers(-2, 2**33), max_size=5),
    st.dictionaries(
        st.sampled_from(["kind", "low", "high", "x"]), st.integers(-1, 200), max_size=3
    ),
)


class Files(dict):
    """File name -> bytes, shown by name only in reports of failing examples."""

    def __repr__(self) -> str:
        return f"Files({sorted(self)})"


@pytest.fixture(scope="module")
def base_files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """The valid files that get damaged: a tiny HoVer-Net, the built-in model, a checkpoint."""
    folder = tmp_path_factory.mktemp("valid_models")
    tiny = write_tiny_hovernet(folder / "tiny.safetensors")
    checkpoint = folder / "claim.tar"  # the key that makes the loader build a HoVer-Net
    torch.save({"desc": {"decoder.np.u3.conva.weight": torch.zeros(2, 2, 3, 3)}}, checkpoint)
    return Files(
        {
            "tiny.safetensors": tiny.read_bytes(),
            "hovernet-fluo.safetensors": builtin_weights("hovernet-fluo").read_bytes(),
            "claim.tar": checkpoint.read_bytes(),
        }
    )


class Damage(bytes):
    """Damaged file bytes that describe the damage (not the bytes) when printed.

    ``must_refuse`` marks damage no loader may accept: a weight's dtype changed to another
    kind of number (the same bytes read as integers, say), which casting would hide.
    """

    description = ""
    must_refuse = False

    @classmethod
    def of(cls, data: bytes, description: str, must_refuse: bool = False) -> Damage:
        """Wrap ``data`` with a description of how it was damaged."""
        out = cls(data)
        out.description = description
        out.must_refuse = must_refuse
        return out

    def __repr__(self) -> str:
        return f"Damage({self.description}, {len(self)} bytes)"


def _split(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's JSON header and the tensor bytes after it."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header: dict, body: bytes) -> bytes:
    """A safetensors file from a header and tensor bytes (header padded to 8 bytes)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _kind(dtype: object) -> str:
    """The kind of number of a safetensors dtype name (``"other"`` for invalid names)."""
    if not isinstance(dtype, str) or not dtype:
        return "other"
    return {
        "F": "float",
        "B": "float" if dtype == "BF16" else "bool",
        "I": "int",
        "U": "int",
        "C": "complex",
    }.get(dtype[0], "other")


@st.composite
def header_mutations(draw: st.DrawFn, data: bytes) -> Damage:
    """Change one thing in a safetensors header: a tensor's entry or a metadata entry."""
    header, body = _split(data)
    metadata = header.setdefault("__metadata__", {})
    tensors = sorted(k for k in header if k != "__metadata__")
    must_refuse = False
    what = draw(st.sampled_from(["shape", "dtype", "offsets", "drop", "config", "meta"]))
    name = draw(st.sampled_from(tensors))
    if what == "shape":
        header[name]["shape"] = draw(
            st.one_of(st.lists(st.sampled_from([0, 1, 3, *HUGE, -1]), max_size=4), ODD_JSON)
        )
        change = f"{name}.shape = {header[name]['shape']!r}"
    elif what == "dtype":
        old_dtype = header[name]["dtype"]
        header[name]["dtype"] = draw(
            st.sampled_from(
                ["F64", "F16", "BF16", "I8", "U8", "BOOL", "I64", "F8_E4M3", "C64", "XYZ", 5, None]
            )
        )
        change = f"{name}.dtype = {header[name]['dtype']!r}"
        must_refuse = _kind(header[name]["dtype"]) != _kind(old_dtype)
    elif what == "offsets":
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = draw(
            st.one_of(
                st.just([end, start]),
                st.just([start, end + 4]),
                st.just([0, 2**62]),
                st.lists(st.integers(-4, len(body) + 8), min_size=2, max_size=2),
                ODD_JSON,
            )
        )
        change = f"{name}.data_offsets = {header[name]['data_offsets']!r}"
    elif what == "drop":
        del header[name]
        change = f"tensor {name} removed"
    elif what == "config":
        config = json.loads(metadata["config"])
        field = draw(st.sampled_from(sorted(config)))
        if draw(st.booleans()):
            config[field] = draw(ODD_JSON)
            change = f"config.{field} = {config[field]!r}"
        else:
            del config[field]
            change = f"config.{field} removed"
        metadata["config"] = json.dumps(config)
    else:
        key = draw(
            st.sampled_from(
                [
                    "class_names",
                    "normalisation",
                    "format",
                    "in_channels",
                    "format_version",
                    "__metadata__",
                ]
            )
        )
        value = draw(
            st.one_of(
                ODD_JSON,
                st.lists(st.text(max_size=3), max_size=6),
                st.fixed_dictionaries(
                    {"kind": st.sampled_from(["percentile", "minmax", "uint8", "none", "x"])},
                    optional={"low": ODD_JSON, "high": ODD_JSON},
                ),
            )
        )
        if key == "__metadata__":
            header["__metadata__"] = value
            change = f"__metadata__ = {value!r}"
        elif draw(st.integers(0, 4)) == 0:
            metadata.pop(key, None)
            change = f"metadata {key} removed"
        else:
            metadata[key] = value if draw(st.booleans()) else json.dumps(value)
            change = f"metadata {key} = {metadata[key]!r}"
    return Damage.of(_join(header, body), f"header: {change}", must_refuse)


@st.composite
def damaged(draw: st.DrawFn, data: bytes, safetensors: bool) -> Damage:
    """A damaged copy of a file's bytes."""
    kinds = (
        ["truncate", "flip", "length", "header", "header"] if safetensors else ["truncate", "flip"]
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "truncate":
        size = draw(st.integers(0, len(data) - 1))
        return Damage.of(data[:size], f"truncated to {size} bytes")
    if kind == "flip":
        out = bytearray(data)
        (length,) = struct.unpack("<Q", data[:8])
        region = draw(st.sampled_from([min(len(data), 8 + length), len(data)]))
        flips = {}
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, region - 1))
            flips[at] = draw(st.integers(1, 255))
            out[at] ^= flips[at]
        return Damage.of(bytes(out), f"bytes xor-ed at {flips}")
    if kind == "length":
        value = draw(
            st.one_of(
                st.sampled_from([0, 1, 7, len(data), 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)
            )
        )
        return Damage.of(struct.pack("<Q", value) + data[8:], f"header length = {value}")
    return draw(header_mutations(data))


def _check_loaded(model: object) -> None:
    """A loaded model has sane classes and works: a session on a small image predicts."""
    assert isinstance(model, SegmentationModel)
    assert len(model.class_names) == model.n_classes >= 2
    assert all(isinstance(c, str) for c in model.class_names)
    rng = np.random.default_rng(0)
    shape = (16, 16) if model.in_channels == 1 else (40, 40, model.in_channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = RefineSession(
            model,
            rng.random(shape).astype(np.float32),
            RefineConfig(device="cpu"),
            rgb=model.in_channels > 1,
        )
        prediction = session.predict()
    assert prediction.shape == session.spatial_shape and prediction.dtype == np.int32


def _load(path: Path, must_refuse: bool = False) -> None:
    outcome = check_call(load_model, path, names=(path.name,))
    if outcome.ok:
        assert not must_refuse, "a weight stored as another kind of number was accepted"
        _check_loaded(outcome.result)


@examples(80)
@given(st.data())
def test_a_damaged_tiny_safetensors_file_loads_or_is_refused_by_name(
    base_files, tmp_path_factory, data
):
    damaged_bytes = data.draw(damaged(base_files["tiny.safetensors"], safetensors=True))
    path = tmp_path_factory.mktemp("damaged") / "damaged-tiny.safetensors"
    path.write_bytes(damaged_bytes)
    _load(path, damaged_bytes.must_refuse)


@examples(10)
@given(st.data())
def test_a_damaged_builtin_weights_file_loads_or_is_refused_by_name(
    base_files, tmp_path_factory, data
):
    damaged_bytes = data.draw(damaged(base_files["hovernet-fluo.safetensors"], safetensors=True))
    path = tmp_path_factory.mktemp("damaged") / "damaged-fluo.safetensors"
    path.write_bytes(damaged_bytes)
    _load(path, damaged_bytes.must_refuse)


@examples(30)
@given(st.data())
def test_a_damaged_checkpoint_loads_or_is_refused_by_name(base_files, tmp_path_factory, data):
    damaged_bytes = data.draw(damaged(base_files["claim.tar"], safetensors=False))
    path = tmp_path_factory.mktemp("damaged") / "damaged.tar"
    path.write_bytes(damaged_bytes)
    _load(path, damaged_bytes.must_refuse)


SIZE_FIELDS = [
    "stem_channels",
    "stem_kernel",
    "dense_bottleneck",
    "dense_growth",
    "in_channels",
    "np_channels",
    "nr_types",
    "kernel_size",
    "block_mid",
    "block_out",
    "block_units",
    "decoder_channels",
    "dense_units",
]


@examples(20)
@given(
    st.sampled_from(SIZE_FIELDS),
    st.integers(0, 3),
    st.sampled_from([3, 64, 4097, 10**5, 2**31 - 1, 2**40, 2**63 - 1]),
)
def test_a_config_claiming_huge_layers_is_refused_without_allocating_them(
    base_files, tmp_path_factory, field, index, value
):
    """The metadata's architecture is a claim: checked against the file before any memory."""
    config = json.loads(_split(base_files["tiny.safetensors"])[0]["__metadata__"]["config"])
    if isinstance(config[field], list):
        config[field][index % len(config[field])] = value
    else:
        config[field] = value
    folder = tmp_path_factory.mktemp("claims")
    path = _edited(base_files, folder, _edit_config(**{field: config[field]}))
    _load(path)


def test_the_undamaged_files_load(base_files, tmp_path):
    for name, content in base_files.items():
        if name.endswith(".safetensors"):
            (tmp_path / name).write_bytes(content)
            _load(tmp_path / name)


def _edited(base_files: Files, folder: Path, edit) -> Path:
    """Write the tiny model with its safetensors header changed by ``edit(header)``."""
    header, body = _split(base_files["tiny.safetensors"])
    edit(header)
    path = folder / "edited.safetensors"
    path.write_bytes(_join(header, body))
    return path


def _edit_config(**changes: object):
    def edit(header: dict) -> None:
        config = json.loads(header["__metadata__"]["config"])
        config.update(changes)
        header["__metadata__"]["config"] = json.dumps(config)

    return edit


def _refused(path: Path, *words: str, limit_mb: float = 500) -> str:
    outcome = check_call(load_model, path, names=(path.name,), limit_mb=limit_mb)
    assert isinstance(outcome.error, ValueError), outcome
    assert all(w in str(outcome.error) for w in words), str(outcome.error)
    return str(outcome.error)


@pytest.mark.parametrize(
    ("name", "dtype"), [("conv0.bn.weight", "I32"), ("conv0.bn.num_batches_tracked", "C64")]
)
def test_a_weight_stored_as_another_kind_of_number_is_refused(base_files, tmp_path, name, dtype):
    """Regression (fuzzing): a header whose dtype read a weight's bytes as int32 (or a
    counter's as complex64) loaded, load_state_dict casting the garbage silently."""

    def edit(header: dict) -> None:
        header[name]["dtype"] = dtype

    _refused(_edited(base_files, tmp_path, edit), "dtype mismatches", name)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"input_scale": "x"}, ["input_scale"]),  # loaded; the session failed on Tensor / str
        ({"dense_groups": 0}, ["dense_groups"]),  # ZeroDivisionError inside the config
        ({"stem_channels": -4}, ["stem_channels"]),
    ],
)
def test_a_config_with_wrong_types_or_ranges_is_refused_at_load(
    base_files, tmp_path, changes, words
):
    """Regression (fuzzing): HoVerNetConfig took any type from the file's metadata."""
    _refused(_edited(base_files, tmp_path, _edit_config(**changes)), *words)


def test_an_integer_input_scale_too_large_for_torch_is_read_as_a_float(base_files, tmp_path):
    """Regression (fuzzing): input_scale 2**64 loaded, then the network's x / input_scale
    raised OverflowError (int too big to convert) in the first session."""
    path = _edited(base_files, tmp_path, _edit_config(input_scale=2**64))
    _check_loaded(check_call(load_model, path, names=(path.name,)).result)


def test_a_config_claiming_a_billion_units_is_refused_without_building_them(base_files, tmp_path):
    """Regression (fuzzing): block_units of 10**9 built the skeleton's modules one by one
    (on the meta device, but each a Python object) before the weights were compared."""
    path = _edited(base_files, tmp_path, _edit_config(block_units=[10**9, 1, 1, 1]))
    _refused(path, "units", limit_mb=100)


def test_a_broken_normalisation_is_refused_at_load_and_a_missing_kind_means_none(
    base_files, tmp_path
):
    """Regression (fuzzing): percentile low=500 loaded and the first session failed in
    np.percentile; a normalisation without "kind" loaded and failed with KeyError 'kind'."""

    def normalisation(value: dict):
        def edit(header: dict) -> None:
            header["__metadata__"]["normalisation"] = json.dumps(value)

        return edit

    bad = {"kind": "percentile", "low": 500}
    _refused(_edited(base_files, tmp_path, normalisation(bad)), "low=500")
    path = _edited(base_files, tmp_path, normalisation({"low": 0}))
    _check_loaded(check_call(load_model, path, names=(path.name,)).result)


def test_a_tiny_checkpoint_claiming_a_hovernet_is_refused_before_building_it(tmp_path):
    """Regression (fuzzing): a 1 kB .tar holding one official key made the loader build the
    official HoVer-Net (37 M weights, 134 MB) before comparing the weights."""
    path = tmp_path / "claim.tar"
    torch.save({"desc": {"decoder.np.u3.conva.weight": torch.zeros(2, 2, 3, 3)}}, path)
    _refused(path, "missing keys", limit_mb=60)


def test_a_zip_with_undecodable_names_is_not_torchscript_but_refused_by_name(tmp_path):
    """Regression (fuzzing): is_torchscript() let zipfile's UnicodeDecodeError escape."""
    path = tmp_path / "names.tar"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"x")
    data = bytearray(buffer.getvalue())
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x08  # general purpose flag bit 11 (0x800): names are UTF-8
    name_at = data.index(b"a.txt", central)
    data[name_at] = 0xE3  # not valid UTF-8
    path.write_bytes(bytes(data))
    _refused(path, "names.tar")

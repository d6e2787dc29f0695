"""Loading is safe and says what it did: pickles only as weights, code only when allowed."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from napari_scribble_refine import load_model
from napari_scribble_refine.core.models import TorchModuleModel

ROOT = Path(__file__).parents[1]
SOURCES = sorted(
    p for folder in ("src", "scripts", "benchmarks", "tests") for p in (ROOT / folder).rglob("*.py")
)
CODE_LOADERS = {"torchscript.py", "bioimageio_package.py"}
"""The modules that may run code from a file, each behind ``allow_code=True``."""

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _calls(path: Path, module: str, function: str) -> list[ast.Call]:
    """Calls of ``module.function(...)`` (e.g. ``torch.load``) in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        dotted = (
            f"{getattr(owner.value, 'id', '')}.{name}" if isinstance(owner, ast.Attribute) else name
        )
        if node.func.attr == function and dotted == module:
            found.append(node)
    return found


def test_every_torch_load_reads_weights_only():
    unsafe = []
    for path in SOURCES:
        for call in _calls(path, "torch", "load"):
            flag = {k.arg: k.value for k in call.keywords}.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not unsafe, f"torch.load without weights_only=True (runs pickled code): {unsafe}"
    assert sum(len(_calls(p, "torch", "load")) for p in SOURCES) >= 3  # the scan sees them


def test_only_the_allow_code_loaders_load_torchscript():
    where = {
        f"{p.relative_to(ROOT)}:{c.lineno}"
        for p in SOURCES
        if p.parts[-2] != "tests"
        for c in _calls(p, "torch.jit", "load")
    }
    assert where, "the scan finds torch.jit.load calls"
    outside = sorted(w for w in where if Path(w.split(":")[0]).name not in CODE_LOADERS)
    assert not outside, f"torch.jit.load outside the allow_code loaders: {outside}"


def test_torchscript_needs_allow_code(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(nn.Conv2d(1, 2, 1)), str(path))
    with pytest.raises(ValueError, match=r"execute|runs when the model does.*allow_code=True"):
        load_model(path)


def _one_sentence(text: str) -> None:
    assert text.startswith(("Loaded ", "Wrapped ")) and text.endswith(".") and "\n" not in text


def test_every_loader_says_what_it_loaded(tmp_path):
    for name, classes in (("hovernet-fluo", "background, nucleus"), ("hovernet-he", "epithelial")):
        text = load_model(name).description
        _one_sentence(text)
        assert f"HoVer-Net {name!r}" in text and "head u0.conv" in text and classes in text
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    text = TorchModuleModel(net, ["background", "nucleus"]).description
    _one_sentence(text)
    assert "(Sequential): head '2'" in text and "classes background, nucleus" in text
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        text = load_model(path, allow_code=True).description
    _one_sentence(text)
    assert f"TorchScript file {str(path)!r}: head '2'" in text and "classes background" in text

"""The engine imports without napari, Qt, scoring or synthetic data (a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt")

OUTSIDE = ("napari_scribble_refine.evaluation", "napari_scribble_refine.synthetic")
"""Scoring and synthetic data: the engine never imports them."""

SCRIPT = f"""
import json, sys
OUTSIDE = {OUTSIDE!r}
import napari_scribble_refine.core
from napari_scribble_refine.core import RefineSession, TorchModuleModel, TorchScriptModel
import napari_scribble_refine.core.session, napari_scribble_refine.core.models.module
import napari_scribble_refine.core.models.torchscript, napari_scribble_refine.core.devices
gui = {GUI_MODULES!r}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in gui)))
print(json.dumps(sorted(m for m in sys.modules if m.startswith(OUTSIDE))))
"""


def test_core_imports_without_gui_modules():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=300
    )
    gui, outside = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert gui == [], f"core imported GUI modules: {gui}"
    assert outside == [], f"core imported scoring or synthetic-data modules: {outside}"


def test_package_import_is_gui_free_too():
    script = (
        "import json, sys, napari_scribble_refine\n"
        f"gui = {GUI_MODULES!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in gui)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

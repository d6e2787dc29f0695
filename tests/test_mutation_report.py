"""The summary that ``make mutation`` prints (``scripts/mutation_report.py``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "mutation_report.py"
_SPEC = importlib.util.spec_from_file_location("mutation_report", _PATH)
mutation_report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mutation_report)


def test_last_line_is_killed_over_all_mutants(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.mutmut]\nonly_mutate = ["src/pkg/a.py", "src/pkg/b.py"]\n', "utf-8"
    )
    meta = tmp_path / "mutants" / "src" / "pkg"
    meta.mkdir(parents=True)
    # a: 3 killed (exit codes 1 and 3), 1 survived; b: 1 killed, 1 timeout, 1 no tests, 1 None
    codes_a = {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 3, "pkg.a.x_f__mutmut_3": 1}
    codes_a["pkg.a.x_f__mutmut_4"] = 0
    codes_b = {"pkg.b.x_g__mutmut_1": 1, "pkg.b.x_g__mutmut_2": 36, "pkg.b.x_g__mutmut_3": 33}
    codes_b["pkg.b.x_g__mutmut_4"] = None
    for name, codes in (("a.py.meta", codes_a), ("b.py.meta", codes_b)):
        (meta / name).write_text(json.dumps({"exit_code_by_key": codes}), "utf-8")
    lines = mutation_report.report(mutation_report.module_results(tmp_path), list_mutants=True)
    assert lines[-1] == "mutation kill rate: 50.0 %"  # 4 of 8
    assert "survived  pkg.a.x_f__mutmut_4" in lines
    assert "timeout   pkg.b.x_g__mutmut_2" in lines
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith(("a.py", "b."))}
    assert rows["a.py"] == ["3", "1", "0", "0", "0", "4", "75.0"]
    assert rows["b.py"] == ["1", "0", "1", "1", "1", "4", "25.0"]


def test_a_module_without_results_is_an_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.mutmut]\nonly_mutate = ["src/a.py"]\n')
    with pytest.raises(SystemExit, match=r"no mutmut results for src/a\.py"):
        mutation_report.module_results(tmp_path)

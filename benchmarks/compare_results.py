"""Check that two benchmark runs give the same accuracy figures.

Compares every number of two ``results.json`` files except machine time and run metadata
(keys with ``sec``, ``seconds``, ``wall``, ``load``, ``date``, ``threads``, and the ``meta`` and
``performance`` sections) and prints, as JSON, how many figures were compared, how many
differ, the largest absolute difference and the first few differences. Exits 1 if any
figure differs by more than ``--tolerance`` (default 0: identical)::

    python benchmarks/compare_results.py run1/results.json run2/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SKIPPED_SECTIONS = ("meta", "performance")
TIMING_WORDS = ("sec", "seconds", "wall", "load", "date", "threads")


def _timing(key: str) -> bool:
    return any(word in key for word in TIMING_WORDS)


def figures(obj: object, path: str = "") -> dict[str, object]:
    """Flatten a results tree into ``path -> value``, leaving out timings and metadata."""
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            if (not path and key in SKIPPED_SECTIONS) or _timing(str(key)):
                continue
            out.update(figures(value, f"{path}/{key}"))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out.update(figures(value, f"{path}[{i}]"))
    else:
        out[path] = obj
    return out


def compare(a: dict, b: dict, tolerance: float = 0.0) -> dict:
    """Compare the accuracy figures of two results dictionaries."""
    fa, fb = figures(a), figures(b)
    differences = []
    largest = 0.0
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if isinstance(va, int | float) and isinstance(vb, int | float):
            if math.isnan(va) and math.isnan(vb):
                continue
            if math.isnan(va) or math.isnan(vb):
                differences.append((key, va, vb))
                continue
            gap = abs(float(va) - float(vb))
            largest = max(largest, gap)
            if gap > tolerance:
                differences.append((key, va, vb))
        elif va != vb:
            differences.append((key, va, vb))
    return {
        "figures_compared": len(set(fa) & set(fb)),
        "only_in_one": len(set(fa) ^ set(fb)),
        "differing": len(differences),
        "largest_abs_difference": largest,
        "first_differences": differences[:10],
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--tolerance", type=float, default=0.0)
    args = p.parse_args(argv)
    report = compare(
        json.loads(args.first.read_text()), json.loads(args.second.read_text()), args.tolerance
    )
    print(json.dumps(report, indent=2))
    return 1 if report["differing"] else 0


if __name__ == "__main__":
    sys.exit(main())

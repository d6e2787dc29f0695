"""Summarise a ``mutmut run`` per engine module; the last line is the overall kill rate.

Run by ``make mutation`` after mutmut, from the repository root. It reads mutmut's result
files (``mutants/<module>.py.meta``) for the modules listed in ``[tool.mutmut] only_mutate``
of ``pyproject.toml`` and prints, per module, how many mutants were killed, survived, timed
out or were reached by no selected test, then ``mutation kill rate: NN.N %``: killed mutants
over all mutants of those modules (a timeout, a mutant no test reaches and a survivor all
count as not killed). With ``--list`` it first names every mutant that was not killed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mutmut itself depends on a TOML reader there
    import toml as tomllib  # type: ignore[no-redef]

STATUS_BY_EXIT_CODE = {
    0: "survived",
    1: "killed",
    3: "killed",  # an internal pytest error in a mutant's run counts as a kill (as mutmut)
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    24: "timeout",  # SIGXCPU: the mutant ran past its CPU-time limit
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    -9: "segfault",
    -11: "segfault",
    None: "not checked",
}
"""mutmut 3's exit codes of a mutant's test run (``mutmut.stats.status_by_exit_code``)."""

COLUMNS = ("killed", "survived", "timeout", "no tests", "other")


def status(exit_code: int | None) -> str:
    """Name a mutant's outcome from its exit code.

    Parameters
    ----------
    exit_code : int or None
        The exit code mutmut recorded (None: not run).

    Returns
    -------
    str
        One of :data:`COLUMNS`.
    """
    name = STATUS_BY_EXIT_CODE.get(exit_code, "suspicious")
    return name if name in COLUMNS else "other"


def module_results(root: Path) -> dict[str, dict[str, str]]:
    """Read each mutated module's mutant outcomes.

    Parameters
    ----------
    root : pathlib.Path
        Repository root (holds ``pyproject.toml`` and ``mutants/``).

    Returns
    -------
    dict
        Module path (as in ``only_mutate``) -> {mutant name: status}.

    Raises
    ------
    SystemExit
        When a module has no result file (mutmut has not run).
    """
    config = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))["tool"]["mutmut"]
    results: dict[str, dict[str, str]] = {}
    for module in config["only_mutate"]:
        meta = root / "mutants" / f"{module}.meta"
        if not meta.is_file():
            raise SystemExit(f"no mutmut results for {module} ({meta}): run `make mutation`")
        codes = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
        results[module] = {name: status(code) for name, code in sorted(codes.items())}
    return results


def report(results: dict[str, dict[str, str]], list_mutants: bool = False) -> list[str]:
    """Format the per-module table and the kill-rate line (last).

    Parameters
    ----------
    results : dict
        From :func:`module_results`.
    list_mutants : bool
        Also list every mutant that was not killed, before the table.

    Returns
    -------
    list of str
        Lines to print.
    """
    lines: list[str] = []
    if list_mutants:
        for outcomes in results.values():
            lines.extend(f"{kind:9s} {name}" for name, kind in outcomes.items() if kind != "killed")
        lines.append("")
    width = max(len(Path(m).name) for m in results)
    header = f"{'module':{width}s}  " + "  ".join(f"{c:>8s}" for c in COLUMNS)
    lines += [header + "     total  killed %", "-" * (len(header) + 20)]
    overall: Counter[str] = Counter()
    for module, outcomes in results.items():
        counts = Counter(outcomes.values())
        overall.update(counts)
        total = sum(counts.values())
        rate = 100.0 * counts["killed"] / total if total else 0.0
        cells = "  ".join(f"{counts[c]:8d}" for c in COLUMNS)
        lines.append(f"{Path(module).name:{width}s}  {cells}  {total:8d}  {rate:7.1f}")
    total = sum(overall.values())
    cells = "  ".join(f"{overall[c]:8d}" for c in COLUMNS)
    lines.append(f"{'all':{width}s}  {cells}  {total:8d}")
    rate = 100.0 * overall["killed"] / total if total else 0.0
    lines.append(f"mutation kill rate: {rate:.1f} %")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the report for the repository in the working directory.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="name every mutant not killed")
    args = parser.parse_args(argv)
    print("\n".join(report(module_results(Path.cwd()), list_mutants=args.list)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""docs/benchmarks.md from the results dictionary of ``run_benchmark.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from groups import ALL, image_groups, is_source

NOTES = Path(__file__).resolve().parent / "notes.md"
"""Hand-written discussion appended to the generated report (kept across re-runs)."""

PRODUCT = "ours"
"""The method the verdict judges (other ``ours-*`` names are ablations)."""

ALL_WEIGHTS = "ours-all-weights"
"""The BIFSeg-like variant: a rival in goal 2, compared on the images it ran on."""

RIVALS = ("paint-only", "grow+paint", "random-walker", "grabcut", "random-forest", "dense-crf")
"""Baselines goal 2 names: a verdict group where one of them did not run misses goal 2."""

VERDICT_GROUPS = ("dsb2018/fluo", "dsb2018/histo", "dsb2018/bfgray", "pannuke_breast")
"""Groups the verdict judges (issue 16: per DSB modality and PanNuke)."""

TABLE_GROUPS = ("dsb2018", ALL)
"""Groups shown in the per-group tables besides the verdict groups."""

LOSE_DROP = 0.02
"""A step "loses" when Dice drops by more than this (``evaluate.LOSE_DROP``)."""

MIN_GAIN = 0.01
"""Goal 1: mean Dice@1 at least Dice@0 plus this."""

MAX_LOSE_SHARE = 0.05
"""Goal 1: at most this share of (image, k) steps lose more than :data:`LOSE_DROP`."""

TYPES_GROUP = "pannuke_breast"
"""Goal 3: the group with per-pixel types."""

MIN_CLASS_DICE = 0.75
"""Goal 3: class Dice@5 at least this."""

MIN_HEAD_AGREEMENT = 0.9
"""Goal 4: head agreement@5 (the tuned head's fit to the scribbles, before pinning)."""

SPEED_SIDE = 512
"""Goal 5: the image side of the speed figures (``performance.size_scaling``)."""

MAX_SEC_MEDIAN = 0.5
"""Goal 5: median seconds per interaction at most this."""

MAX_SEC_P90 = 1.0
"""Goal 5: 90th percentile of seconds per interaction at most this."""

MAX_THREADS = 2
"""Goal 5: on at most this many threads."""

GOALS = {
    1: "never worse",
    2: "best",
    3: "types",
    4: "the network learns the scribbles",
    5: "still fast",
}
"""Issue 16's goals by number."""

BEST_KEYS = (("dice@1", False, "Dice@1"), ("dice@3", False, "Dice@3"), ("noc90", True, "NoC@0.90"))
"""Goal 2's figures: key, lower is better, label."""

_EPS = 1e-9
"""Slack for comparisons of rounded means."""

_CURVES = {
    "dice@0": ("dice_curve", 0),
    "dice@1": ("dice_curve", 1),
    "dice@3": ("dice_curve", 3),
    "dice@5": ("dice_curve", 5),
    "class_dice@5": ("class_dice_curve", 5),
    "head_agreement@5": ("head_agreement_curve", 5),
}
"""Figures an older ``results.json`` lacks that its curves give: curve, k."""

_NO_GROUP = "no figures of ours for this group in these results"

Check = tuple[bool, str]
"""One verdict line and whether its goal is met there."""


def _f(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def sources_of(methods: dict) -> list[str]:
    """Return the sources of a run (its groups that are neither modalities nor ``all``).

    Parameters
    ----------
    methods : dict
        ``results["methods"]``: ``{name: {group: figures}}``.

    Returns
    -------
    list of str
        The source names, sorted.
    """
    return sorted({g for m in methods.values() for g in m if is_source(g)})


def figure(m: dict | None, key: str, k_max: int) -> float | None:
    """Return one figure of a method's group summary, or None when it is missing.

    Figures an older ``results.json`` lacks (``dice@0``, ``dice@1``, ``class_dice@5``,
    ``head_agreement@5``) are read off its curves.

    Parameters
    ----------
    m : dict or None
        A method's summary in one group (``results["methods"][name][group]``).
    key : str
        The figure, e.g. ``"dice@1"``, ``"noc90"``, ``"lose_share"``.
    k_max : int
        K, the run's interactions (a curve's ``@k`` reads ``min(k, K)``).

    Returns
    -------
    float or None
        The figure.
    """
    if not m:
        return None
    if m.get(key) is not None:
        return m[key]
    if key in _CURVES:
        name, k = _CURVES[key]
        curve = m.get(name) or []
        k = min(k, k_max)
        return curve[k] if len(curve) > k else None
    return None


def image_figure(rec: dict, key: str, k_max: int, cap: int) -> float | None:
    """Return ``dice@k`` or ``noc90`` of one method on one image (its per-image record).

    Parameters
    ----------
    rec : dict
        ``results["images"][i]["methods"][name]``.
    key : str
        ``"dice@<k>"`` or ``"noc90"``.
    k_max : int
        K (``dice@k`` reads ``min(k, K)``).
    cap : int
        NoC cap (an image that never reached 0.90 counts as ``cap``, as in the means).

    Returns
    -------
    float or None
        The figure (None when the record lacks it).
    """
    if key == "noc90":
        return float(cap if rec.get("noc90") is None else rec["noc90"])
    k = min(int(key.split("@", 1)[1]), k_max)
    dices = rec.get("dice") or []
    return dices[k] if len(dices) > k else None


def _mean(values: list[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def subset_means(
    results: dict, group: str, names: tuple[str, ...], keys: tuple[str, ...]
) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """Mean figures of some methods over the images of a group where all of them ran.

    Parameters
    ----------
    results : dict
        The results dictionary (its per-image records, ``results["images"]``).
    group : str
        The group (see :func:`groups.image_groups`).
    names : tuple of str
        The methods.
    keys : tuple of str
        Figures (see :func:`image_figure`).

    Returns
    -------
    samples : list of str
        The images used.
    means : dict
        ``{name: {key: mean}}`` over those images.
    """
    meta = results["meta"]
    images = [
        im
        for im in results.get("images", [])
        if group in image_groups(im) and all(n in im["methods"] for n in names)
    ]
    means = {
        n: {
            key: _mean(
                [
                    image_figure(im["methods"][n], key, meta["interactions"], meta["noc_cap"])
                    for im in images
                ]
            )
            for key in keys
        }
        for n in names
    }
    return [im["sample"] for im in images], means


def _line(goal: int, where: str, misses: list[str], detail: str) -> Check:
    head = f"- Goal {goal} ({GOALS[goal]}), {where}: "
    if misses:
        return False, head + "**not met**: " + "; ".join(misses)
    return True, head + f"met ({detail})"


def _goal_never_worse(results: dict) -> list[Check]:
    """Goal 1: Dice@1 >= Dice@0 + 0.01 and at most 5 % of steps lose > 0.02, per group."""
    k_max = results["meta"]["interactions"]
    out = []
    for group in VERDICT_GROUPS:
        m = results["methods"].get(PRODUCT, {}).get(group)
        if m is None:
            out.append(_line(1, group, [_NO_GROUP], ""))
            continue
        d0, d1 = figure(m, "dice@0", k_max), figure(m, "dice@1", k_max)
        share = figure(m, "lose_share", k_max)
        misses = []
        if d0 is None or d1 is None:
            misses.append(f"Dice@0 {_f(d0)}, Dice@1 {_f(d1)} (missing)")
        elif d1 < d0 + MIN_GAIN - _EPS:
            misses.append(f"Dice@1 {_f(d1)} < Dice@0 {_f(d0)} + {MIN_GAIN:g}")
        if share is None:
            misses.append("share of steps that lost more than 0.02: – (not in this run)")
        elif share > MAX_LOSE_SHARE + _EPS:
            misses.append(
                f"{_pct(share)} of steps lost more than {LOSE_DROP:g} Dice "
                f"(at most {_pct(MAX_LOSE_SHARE)})"
            )
        detail = (
            f"Dice@0 {_f(d0)} → Dice@1 {_f(d1)}; {_pct(share)} of steps lost more than "
            f"{LOSE_DROP:g}"
        )
        out.append(_line(1, group, misses, detail))
    return out


def _compare(
    label: str, lower: bool, mine: float | None, rivals: dict[str, float | None]
) -> tuple[str | None, str]:
    """Compare ours with rivals on one figure: (the miss or None, the detail when met).

    Ours is best when no rival is better; a tie with some rivals counts as best, a tie with
    every rival (e.g. no method ever reaches Dice 0.90) does not.
    """
    digits = 2 if lower else 3  # NoC or Dice

    def fmt(value: float) -> str:
        return f"{value:.{digits}f}"

    vals = {n: v for n, v in rivals.items() if v is not None}
    if mine is None:
        return f"{label} of ours: – (missing)", ""
    if not vals:
        return f"{label}: no rival has it", ""
    better = {n: v for n, v in vals.items() if (v < mine - _EPS if lower else v > mine + _EPS)}
    if better:
        best = min(better.values()) if lower else max(better.values())
        names = ", ".join(n for n, v in better.items() if abs(v - best) <= _EPS)
        sign = ">" if lower else "<"
        return f"{label} {fmt(mine)} {sign} {names} {fmt(best)}", ""
    tied = [n for n, v in vals.items() if abs(v - mine) <= _EPS]
    if len(tied) == len(vals):
        everyone = f"ours and {tied[0]} both" if len(tied) == 1 else "every method"
        return f"{label}: no difference, {everyone} score {fmt(mine)}", ""
    if tied:
        return None, f"{label} {fmt(mine)}, tied with {', '.join(tied)}"
    runner = min(vals.values()) if lower else max(vals.values())
    names = ", ".join(n for n, v in vals.items() if abs(v - runner) <= _EPS)
    return None, f"{label} {fmt(mine)}, next {names} {fmt(runner)}"


def _goal_best(results: dict, rivals: tuple[str, ...]) -> list[Check]:
    """Goal 2: ours has the best Dice@1, Dice@3 and NoC@0.90 of all rivals, per group.

    Rivals are every method but the ``ours-*`` ablations, compared on the group's means when
    they ran on every image of the group. The all-weights variant, and any baseline that
    ran on part of the group, is compared on the images where it ran, with ours' means over
    the same images (from the per-image records).
    """
    k_max = results["meta"]["interactions"]
    every = results["methods"]
    out: list[Check] = []
    for group in VERDICT_GROUPS:
        present = {n: per[group] for n, per in every.items() if group in per}
        if PRODUCT not in present:
            out.append(_line(2, group, [_NO_GROUP], ""))
            continue
        n_all = max(m["n_images"] for m in present.values())
        complete = {
            n: m for n, m in present.items() if m["n_images"] == n_all and not n.startswith("ours")
        }
        partial = [n for n in present if n not in complete and not n.startswith("ours")]
        if ALL_WEIGHTS in present:
            partial.insert(0, ALL_WEIGHTS)
        misses = []
        if present[PRODUCT]["n_images"] < n_all:
            misses.append(f"ours ran on {present[PRODUCT]['n_images']} of {n_all} images")
        absent = [r for r in rivals if r not in present]
        if absent:
            misses.append("did not run: " + ", ".join(absent))
        details = []
        for key, lower, label in BEST_KEYS:
            miss, detail = _compare(
                label,
                lower,
                figure(present[PRODUCT], key, k_max),
                {n: figure(m, key, k_max) for n, m in complete.items()},
            )
            if miss:
                misses.append(miss)
            else:
                details.append(detail)
        where = f"{group} ({n_all} images; rivals that ran on all of them: {len(complete)})"
        out.append(_line(2, where, misses, "; ".join(details)))
        out += [_subset_check(results, group, rival) for rival in partial]
    return out


def _subset_check(results: dict, group: str, rival: str) -> Check:
    """Goal 2 against a rival that ran on part of a group, on exactly those images."""
    keys = tuple(k for k, _, _ in BEST_KEYS)
    samples, means = subset_means(results, group, (PRODUCT, rival), keys)
    where = (
        f"{group}, against {rival} on the {len(samples)} images it ran on "
        "(ours' means over the same images)"
    )
    if not samples:
        return _line(2, where, ["no per-image records of both in this results file"], "")
    misses, details = [], []
    for key, lower, label in BEST_KEYS:
        miss, detail = _compare(label, lower, means[PRODUCT][key], {rival: means[rival][key]})
        if miss:
            misses.append(miss)
        else:
            details.append(detail)
    return _line(2, where, misses, "; ".join(details))


def _goal_types(results: dict) -> list[Check]:
    """Goal 3: PanNuke class Dice@5 of ours at least 0.75."""
    k_max = results["meta"]["interactions"]
    m = results["methods"].get(PRODUCT, {}).get(TYPES_GROUP)
    value = figure(m, "class_dice@5", k_max)
    if value is None:
        misses = ["class Dice@5: – (not in this run)"]
    elif value < MIN_CLASS_DICE - _EPS:
        misses = [f"class Dice@5 {_f(value)} < {MIN_CLASS_DICE:g}"]
    else:
        misses = []
    return [_line(3, TYPES_GROUP, misses, f"class Dice@5 {_f(value)}")]


def _goal_learns(results: dict) -> list[Check]:
    """Goal 4: head agreement@5 of ours at least 0.9, per group."""
    k_max = results["meta"]["interactions"]
    out = []
    for group in VERDICT_GROUPS:
        value = figure(results["methods"].get(PRODUCT, {}).get(group), "head_agreement@5", k_max)
        if value is None:
            misses = ["head agreement@5: – (not in this run)"]
        elif value < MIN_HEAD_AGREEMENT - _EPS:
            misses = [f"head agreement@5 {_f(value)} < {MIN_HEAD_AGREEMENT:g}"]
        else:
            misses = []
        out.append(_line(4, group, misses, f"head agreement@5 {_f(value)}"))
    return out


def row_p90(row: dict) -> float | None:
    """Return a size-scaling row's 90th percentile of seconds per interaction.

    Parameters
    ----------
    row : dict
        A row of ``results["performance"]["size_scaling"]``.

    Returns
    -------
    float or None
        ``sec_p90``, or (an older ``results.json``) the percentile of its ``sec`` list; None
        when it has neither.
    """
    if row.get("sec_p90") is not None:
        return row["sec_p90"]
    return float(np.percentile(row["sec"], 90)) if row.get("sec") else None


def _goal_fast(results: dict) -> list[Check]:
    """Goal 5: median ≤ 0.5 s and p90 ≤ 1 s per interaction at 512², on ≤ 2 threads."""
    scaling = results.get("performance", {}).get("size_scaling") or []
    row = next((r for r in scaling if r.get("side") == SPEED_SIDE and "error" not in r), None)
    where = f"{SPEED_SIDE}²"
    if row is None or row.get("sec_median") is None:
        return [_line(5, where, ["not measured in this run"], "")]
    median = row["sec_median"]
    p90 = row_p90(row)
    threads = row.get("threads", results["meta"]["threads"])
    misses = []
    if median > MAX_SEC_MEDIAN + _EPS:
        misses.append(f"median {median:.2f} s > {MAX_SEC_MEDIAN:g} s")
    if p90 is None:
        misses.append("p90: – (not in this run)")
    elif p90 > MAX_SEC_P90 + _EPS:
        misses.append(f"p90 {p90:.2f} s > {MAX_SEC_P90:g} s")
    if threads > MAX_THREADS:
        misses.append(f"{threads} threads > {MAX_THREADS}")
    calls = len(row.get("sec", []))
    detail = (
        f"median {median:.2f} s, p90 {_f(p90, 2)} s per interaction on {threads} threads, "
        f"{calls} calls"
    )
    return [_line(5, where, misses, detail)]


def verdict(results: dict, rivals: tuple[str, ...] = RIVALS) -> list[str]:
    """Say, goal by goal and group by group, whether ``ours`` meets issue 16's goals.

    One line per goal and group: "met" with its figures, or "not met" with the figure that
    misses. The first line sums up: "**Goals met**" or "**Goals not met**: " and the
    numbers of the goals missed. Figures missing from the results (an older
    ``results.json``, a partial run) count as misses.

    Parameters
    ----------
    results : dict
        The results dictionary of ``run_benchmark.py``.
    rivals : tuple of str
        Baselines goal 2 requires in every verdict group (default :data:`RIVALS`).

    Returns
    -------
    list of str
        Markdown lines.
    """
    checks = {
        1: _goal_never_worse(results),
        2: _goal_best(results, rivals),
        3: _goal_types(results),
        4: _goal_learns(results),
        5: _goal_fast(results),
    }
    missed = [goal for goal, lines in checks.items() if not all(ok for ok, _ in lines)]
    if missed:
        first = "**Goals not met**: " + ", ".join(str(g) for g in missed)
    else:
        first = "**Goals met**"
    first += " (issue 16; judged on `ours`, the other `ours-*` rows are ablations):"
    return [first, "", *(line for lines in checks.values() for _, line in lines)]


def _group_table(results: dict, group: str) -> list[str]:
    """Table of one group: per method Dice@0/1/3, NoC@0.90, losing steps, head, class Dice."""
    methods = results["methods"]
    k_max = results["meta"]["interactions"]
    rows = [(n, per[group]) for n, per in methods.items() if group in per]
    if not rows:
        return ["(not in this run)"]
    n_all = max(m["n_images"] for _, m in rows)
    lines = [
        f"| method | Dice@0 | Dice@1 | Dice@3 | NoC@0.90 (never) | steps lost > {LOSE_DROP:g} | "
        "head agreement@5 | class Dice@5 |",
        "|" + "---|" * 8,
    ]
    for name, m in rows:
        shown = name if m["n_images"] == n_all else f"{name} ({m['n_images']} of {n_all} images)"
        share = figure(m, "lose_share", k_max)
        lost = _pct(share)
        if share is not None and m.get("steps"):
            lost += f" ({m.get('lose_steps')} of {m['steps']})"
        head = figure(m, "head_agreement@5", k_max) if name.startswith("ours") else None
        dices = " | ".join(_f(figure(m, f"dice@{k}", k_max)) for k in (0, 1, 3))
        noc = f"{_f(m.get('noc90'), 2)} ({_f(m.get('never90'))})"
        lines.append(
            f"| {shown} | {dices} | {noc} | {lost} | {_f(head)} | "
            f"{_f(figure(m, 'class_dice@5', k_max))} |"
        )
    return lines


def table_groups(methods: dict) -> list[str]:
    """Return the groups that get a per-group table, in order.

    Parameters
    ----------
    methods : dict
        ``results["methods"]``.

    Returns
    -------
    list of str
        The verdict groups (all of them; a missing one says so), other modalities, the
        remaining sources and ``all``.
    """
    found = {g for per in methods.values() for g in per}
    order = list(VERDICT_GROUPS)
    order += sorted(g for g in found if "/" in g and g not in order)
    order += [s for s in sources_of(methods) if s not in order]
    order += [g for g in TABLE_GROUPS if g not in order and g in found]
    return order


def _method_table(results: dict, source: str) -> list[str]:
    methods = results["methods"]
    k_max = results["meta"]["interactions"]
    head = (
        f"| method | NoC@0.85 (never) | NoC@0.90 (never) | Dice@0 | Dice@1 | Dice@3 | Dice@5 | "
        f"Dice@{k_max} | IoU@5 | class Dice@5 | AJI@0 → @{k_max} | scribble agreement@5 | "
        f"scribbled px@5 | s/call median | p90 | setup s |"
    )
    lines = [head, "|" + "---|" * 16]
    n_all = max(per[source]["n_images"] for per in methods.values() if source in per)
    for name, per in methods.items():
        m = per.get(source)
        if not m:
            continue
        c = m["dice_curve"]

        def at(curve: list, k: int) -> object:
            return curve[k] if len(curve) > k else None

        shown = name if m["n_images"] == n_all else f"{name} ({m['n_images']} of {n_all} images)"
        lines.append(
            f"| {shown} | {_f(m['noc85'], 2)} ({m['never85']}) | {_f(m['noc90'], 2)} "
            f"({m['never90']}) | {_f(at(c, 0))} | {_f(at(c, 1))} | {_f(m['dice@3'])} | "
            f"{_f(m['dice@5'])} | {_f(at(c, k_max))} | {_f(at(m['iou_curve'], 5))} | "
            f"{_f(at(m['class_dice_curve'], 5))} | {_f(m['aji0'])} → {_f(m['ajiK'])}"
            f"{_own(m)} | "
            f"{_f(at(m['agreement_curve'], 5))}{_head(m)} | {_f(at(m['scribbled_curve'], 5), 0)} | "
            f"{_f(m['sec_median'], 2)} | {_f(m['sec_p90'], 2)} | {_f(m['setup_sec_mean'], 2)} |"
        )
    return lines


def _head(m: dict) -> str:
    curve = m.get("head_agreement_curve") or []
    return "" if len(curve) <= 5 or curve[5] is None else f" (head {curve[5]:.3f})"


def _own(m: dict) -> str:
    own = m.get("ajiK_own")
    return "" if own is None else f" (own {own:.3f})"


def _paper_table(results: dict, sources: list[str]) -> list[str]:
    paper = results["paper"]["dice"]
    ours = results["methods"].get("ours", {})
    lines = [
        "| k | paper (nuclei) | " + " | ".join(f"ours, {s}" for s in sources) + " |",
        "|---|---|" + "---|" * len(sources),
    ]
    for k, p in enumerate(paper, start=1):
        curves = [ours.get(s, {}).get("dice_curve", []) for s in sources]
        row = [_f(c[k]) if len(c) > k else "–" for c in curves]
        lines.append(f"| {k} | {p:.2f} | " + " | ".join(row) + " |")
    return lines


def _fixed_table(results: dict, source: str) -> list[str]:
    fixed = results.get("fixed", {})
    rows = [(n, f[source]) for n, f in fixed.items() if source in f]
    if not rows:
        return ["(not run)"]
    keys = list(rows[0][1])
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, vals in rows:
        lines.append(f"| {name} | " + " | ".join(_f(vals[k]) for k in keys) + " |")
    return lines


def _performance(results: dict) -> list[str]:
    perf = results.get("performance", {})
    lines = ["### Seconds per interaction versus image size (ours, synthetic fluorescence)", ""]
    rows = perf.get("size_scaling") or []
    if rows:
        lines += [
            "| side | setup s (trunk pass) | s per interaction (median) | p90 | all |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['side']}² | failed: {r['error']} | | | |")
            else:
                secs = ", ".join(f"{s:.2f}" for s in r.get("sec", []))
                lines.append(
                    f"| {r['side']}² | {_f(r['setup_sec'], 2)} | {_f(r['sec_median'], 2)} | "
                    f"{_f(row_p90(r), 2)} | {secs} |"
                )
    else:
        lines.append("(not run)")
    lines += ["", "### Core benchmark (`benchmarks/bench_refine.py`, cached vs naive)", ""]
    core = perf.get("core_benchmark")
    if core is None:
        lines.append("(not run, or the script is missing)")
    else:
        ratio = _find_ratio(core)
        if ratio is not None:
            lines.append(f"Cached-vs-naive speed-up: **{ratio:.1f}×**.")
            lines.append("")
        lines += ["```json", json.dumps(core, indent=1)[:6000], "```"]
    return lines


def _find_ratio(obj: object) -> float | None:
    """Find the first number under a key naming a speed-up or ratio, anywhere in ``obj``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = k.lower()  # "iterations" contains "ratio": match whole words only
            if isinstance(v, int | float) and ("speedup" in name or name.endswith("ratio")):
                return float(v)
        for v in obj.values():
            found = _find_ratio(v)
            if found is not None:
                return found
    if isinstance(obj, list):
        for v in obj:
            found = _find_ratio(v)
            if found is not None:
                return found
    return None


def write_report(results: dict, path: Path, plots: list[Path]) -> None:
    """Write the Markdown report.

    Parameters
    ----------
    results : dict
        The results dictionary.
    path : Path
        Output file (``docs/benchmarks.md``).
    plots : list of Path
        Plot files to link (relative to the report's folder).
    """
    meta = results["meta"]
    methods = results["methods"]
    sources = sources_of(methods)
    n_images = {s: max(m[s]["n_images"] for m in methods.values() if s in m) for s in sources}
    limited = meta.get("limited_run")
    out = [
        "# Benchmark: correcting nucleus segmentations with a robot user",
        "",
        f"Generated by `{meta['command']}` on {meta['date_utc']}; do not edit by hand "
        "(the discussion comes from `benchmarks/notes.md`).",
        "",
    ]
    if limited:
        out += [
            f"> **Limited run**: only the first {meta['limit']} samples of each source "
            f"({', '.join(f'{s}: {n}' for s, n in n_images.items())} images). The full run is "
            "`python benchmarks/run_benchmark.py`; figures from a limited run are anecdotes, "
            "not evidence.",
            "",
        ]
    out += [
        "## Set-up",
        "",
        f"- Machine: {meta['cpu']}, {meta['logical_cpus']} logical CPUs; {meta['platform']}; "
        f"Python {meta['python']}, torch {meta['torch']}.",
        f"- Threads: {meta['threads']}. Accuracy runs: {meta.get('jobs', 1)} worker "
        f"process(es) sharing the samples, {meta.get('torch_threads_per_job', meta['threads'])} "
        "torch/BLAS thread(s) each, so their seconds per call are single-worker figures; the "
        f"performance section uses all {meta['threads']} threads in one process. "
        f"Load average at start {meta['load_average_start']}, at end "
        f"{meta['load_average_end']} (other work on the machine inflates the seconds).",
        f"- Wall time: {meta['wall_seconds']:.0f} s for the accuracy runs, "
        f"{meta.get('wall_seconds_total', meta['wall_seconds']):.0f} s in all.",
        f"- Data: `{meta['data']}`: "
        + ", ".join(f"{s} ({n} images)" for s, n in n_images.items())
        + f". Grey images use `{meta['models']['grey']}`, RGB images `{meta['models']['rgb']}` "
        f"(input scaling: {meta['model_normalisation']}). "
        "Sources with per-pixel types (PanNuke) are scored in their classes, the model's "
        "epithelial class standing for Neoplastic and its other nucleus classes for "
        "Non-neoplastic; the rest are scored as background / nucleus.",
        f"- Robot user (seed {meta['seed']}): at each interaction, for every class, one stroke "
        "in the largest 8-connected region that is truly that class but predicted otherwise "
        "and not yet scribbled (regions under 30 px ignored), along the region's skeleton, "
        "extended along its major axis when the skeleton is short, about 0.9·√area px long "
        "(clipped to [5, 60]), 3–5 px wide; only pixels truly of the class are painted. "
        "Scribbles accumulate; each method is scribbled against its own previous output.",
        f"- K = {meta['interactions']} interactions for the curves; NoC@0.85 / NoC@0.90 count "
        f"the interactions until foreground Dice reaches the threshold (k = 0 allowed), "
        f"capped at {meta['noc_cap']}; images that never reach it count as "
        f"{meta['noc_cap']} and are also counted in brackets. Seconds are the machine time of "
        "the method call only (after a warm-up); setup (our trunk pass, the forest's "
        "features) is listed apart. AJI and PQ use the same distance-watershed "
        "instances for every method; for ours, the AJI of the model's own instances (HoVer-Net's "
        'HV watershed) at k = K is added as "own".',
        "- Methods: `ours` (head-only fine-tuning with region growing checked against the "
        "head's features, then the trust region, "
        "the edge-aware CRF and one class per nucleus, scribbles pinned; the default "
        "`RefineConfig`, the product, and the only row the verdict judges), `ours-no-grow`, "
        "`ours-paper` (the paper's plain "
        "Algorithm 1: mean cross-entropy plus proximity, plain SGD, no pins, no trust region), "
        "`ours-type-classifier` (typed sources only: `ours` with the `type_classifier` "
        "switch, type strokes teach a per-image classifier that retypes look-alike nuclei; "
        "off by default, benchmarks/notes.md table K), "
        "`ours-all-weights` (BIFSeg-like: every weight tuned; only on the first images up "
        "to 512² of each source, `--all-weights-limit`), "
        "`paint-only` (scribbles overwrite the prediction), `grow+paint` (our region "
        "growing, then paint-only), `random-walker` (scikit-image; seeds: scribbles and "
        "pixels predicted with probability ≥ 0.95 farther than 10 px from a scribble), "
        "`grabcut` (OpenCV; prediction as probable fore/background, scribbles as sure), "
        "`random-forest` (ilastik-like; multiscale features, trained on scribbles only), "
        "`dense-crf` (pydensecrf2; model probabilities as unaries, scribbles pinned).",
        "",
        "## Verdict",
        "",
        *verdict(results),
        "",
        "## Results per group",
        "",
        "Groups: each DSB modality (the sample id's prefix: `fluo`, `histo`, `bfgray`), "
        "PanNuke, DSB as a whole and all images. Dice@k is the mean foreground Dice after k "
        f"interactions; a step (image, k) for k = 1..{meta['interactions']} *lost* when its "
        f"Dice fell by more than {LOSE_DROP:g} from k − 1; head agreement@5 is the tuned "
        "head's fit to the scribbles before pinning (ours variants); class Dice@5 is scored "
        "in the PanNuke types. Methods that ran on part of a group show how many images.",
        "",
    ]
    for group in table_groups(methods):
        out += [f"### {group}", "", *_group_table(results, group), ""]
    out += [
        "## Results per source",
        "",
    ]
    for source in [*sources, ALL]:
        out += [f"### {source}", "", *_method_table(results, source), ""]
    out += [
        "## Against the paper",
        "",
        "Sambaturu et al. (MICCAI 2021) report these nucleus Dice values after 1..5 "
        "interactions; their data, model and user differ from ours.",
        "",
        *_paper_table(results, sources),
        "",
        "## Fixed scribbles",
        "",
        "One scribble set per image drawn on the initial prediction (the robot keeps "
        "scribbling its errors), the same for every method: Dice after k interactions' worth.",
        "",
    ]
    for source in sources:
        out += [f"### {source}", "", *_fixed_table(results, source), ""]
    out += ["## Performance", "", *_performance(results), "", "## Plots", ""]
    for p in plots:
        out.append(f"![{p.stem}]({p.name})")
        out.append("")
    if NOTES.is_file():
        out += ["## Discussion", "", NOTES.read_text().strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")

"""docs/benchmarks.md from the results dictionary of ``run_benchmark.py``."""

from __future__ import annotations

import json
from pathlib import Path

NOTES = Path(__file__).resolve().parent / "notes.md"
"""Hand-written discussion appended to the generated report (kept across re-runs)."""

TARGET_SEC = 1.0
"""Target median seconds per interaction at 512 x 512 on 2 cores."""


def _f(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _best(methods: dict, source: str, key: str, lower: bool) -> tuple[list[str], float | None]:
    vals = {
        n: m[source][key]
        for n, m in methods.items()
        if source in m and m[source].get(key) is not None
    }
    if not vals:
        return [], None
    best = min(vals.values()) if lower else max(vals.values())
    return [n for n, v in vals.items() if abs(v - best) < 1e-9], best


def _complete(methods: dict, source: str) -> dict:
    """Keep the methods that ran on every image of a source (only they are compared)."""
    n_all = max((m[source]["n_images"] for m in methods.values() if source in m), default=0)
    return {n: m for n, m in methods.items() if source in m and m[source]["n_images"] == n_all}


def verdict(results: dict) -> list[str]:
    """Lines saying, per source, whether ours has the best NoC@0.90 and Dice@3.

    Methods that ran on a subset of a source's images (the all-weights variant) are left
    out there: their means are over other images.
    """
    every = results["methods"]
    sources = sorted({s for m in every.values() for s in m if s != "all"})
    lines = []
    all_ok = True
    for source in sources:
        methods = _complete(every, source)
        ours = [n for n in methods if n.startswith("ours")]
        partial = sorted(set(every) - set(methods))
        for key, lower, label in (("noc90", True, "NoC@0.90"), ("dice@3", False, "Dice@3")):
            winners, best = _best(methods, source, key, lower)
            ours_best = [n for n in winners if n in ours]
            n_methods = sum(
                source in m and m[source].get(key) is not None for m in methods.values()
            )
            if ours_best and len(winners) == n_methods:
                all_ok = False
                lines.append(
                    f"- {source}, {label}: **no difference**: every method scores {_f(best, 2)}"
                )
            elif ours_best and len(winners) > len(ours_best):
                lines.append(
                    f"- {source}, {label}: **ours ties for best** ({', '.join(winners)}: "
                    f"{_f(best, 2)})"
                )
            elif ours_best:
                lines.append(
                    f"- {source}, {label}: **ours wins** ({', '.join(winners)}: {_f(best, 2)})"
                )
            else:
                all_ok = False
                mine = [methods[n][source].get(key) for n in ours if source in methods[n]]
                mine = [v for v in mine if v is not None]
                best_ours = (min(mine) if lower else max(mine)) if mine else None
                lines.append(
                    f"- {source}, {label}: **ours loses**: best is {', '.join(winners)} with "
                    f"{_f(best, 2)}, best of ours {_f(best_ours, 2)}"
                )
        if partial:
            lines.append(
                f"- {source}: not compared ({', '.join(partial)} ran on a subset of its images)"
            )
    scaling = results.get("performance", {}).get("size_scaling") or []
    at512 = next((r for r in scaling if r.get("side") == 512 and "error" not in r), None)
    if at512 and at512.get("sec_median") is not None:
        ok = at512["sec_median"] <= TARGET_SEC and results["meta"]["threads"] <= 2
        all_ok &= ok
        lines.append(
            f"- Speed at 512²: median {at512['sec_median']:.2f} s per interaction on "
            f"{results['meta']['threads']} threads: **{'met' if ok else 'missed'}** "
            f"(target ≤ {TARGET_SEC:.0f} s on 2 cores)"
        )
    lines.insert(0, f"**Target {'met' if all_ok else 'not met'}** in this run:")
    return lines


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
            "| side | setup s (trunk pass) | s per interaction (median) | all |",
            "|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['side']}² | failed: {r['error']} | | |")
            else:
                secs = ", ".join(f"{s:.2f}" for s in r.get("sec", []))
                lines.append(
                    f"| {r['side']}² | {_f(r['setup_sec'], 2)} | {_f(r['sec_median'], 2)} | "
                    f"{secs} |"
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
    sources = sorted({s for m in methods.values() for s in m if s != "all"})
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
        "- Methods: `ours` (head-only fine-tuning, region growing on), `ours-no-grow`, "
        "`ours-all-weights` (BIFSeg-like: every weight tuned; images up to 512² only), "
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
        "## Results per source",
        "",
    ]
    for source in [*sources, "all"]:
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

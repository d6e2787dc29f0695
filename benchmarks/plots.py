"""PNG plots of the benchmark: Dice versus interaction, and seconds per interaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

STYLE = {
    "ours": ("tab:red", "-", "o"),
    "ours-no-grow": ("tab:orange", "-", "s"),
    "ours-paper": ("tab:pink", "-", "v"),
    "ours-type-classifier": ("tab:red", "--", "o"),
    "ours-all-weights": ("tab:brown", "-", "^"),
    "paint-only": ("tab:gray", "--", "."),
    "grow+paint": ("tab:olive", "--", "x"),
    "random-walker": ("tab:blue", ":", "v"),
    "grabcut": ("tab:green", ":", "D"),
    "random-forest": ("tab:purple", ":", "P"),
    "dense-crf": ("tab:cyan", ":", "*"),
}


def _style(name: str) -> tuple[str, str, str]:
    return STYLE.get(name, ("black", "-", None))


def write_plots(results: dict, folder: Path) -> list[Path]:
    """Write ``benchmark_dice.png``, ``benchmark_seconds.png`` and ``benchmark_scaling.png``.

    Parameters
    ----------
    results : dict
        The results dictionary of ``run_benchmark.py``.
    folder : Path
        Output folder (created).

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    methods = results["methods"]
    sources = sorted({s for m in methods.values() for s in m if s != "all" and "/" not in s})
    label = " (limited run)" if results["meta"].get("limited_run") else ""
    written = []

    fig, axes = plt.subplots(1, len(sources), figsize=(5.5 * len(sources), 4.2), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        n = max(m[source]["n_images"] for m in methods.values() if source in m)
        for name, per_source in methods.items():
            fig_ = per_source.get(source)
            if not fig_:
                continue
            curve = np.array([np.nan if v is None else v for v in fig_["dice_curve"]])
            colour, ls, marker = _style(name)
            shown = name if fig_["n_images"] == n else f"{name} ({fig_['n_images']} images)"
            ax.plot(np.arange(len(curve)), curve, ls, color=colour, marker=marker, label=shown)
        paper = results.get("paper", {}).get("dice")
        if paper:
            ax.plot(range(1, len(paper) + 1), paper, "k--", lw=1, label="paper (nuclei)")
        ax.set_title(f"{source} ({n} images){label}")
        ax.set_xlabel("interaction k")
        ax.set_ylabel("foreground Dice")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = folder / "benchmark_dice.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(8, 4.2))
    names = list(methods)
    width = 0.8 / max(len(sources), 1)
    for i, source in enumerate(sources):
        med = [methods[n].get(source, {}).get("sec_median") or 0.0 for n in names]
        p90 = [methods[n].get(source, {}).get("sec_p90") or 0.0 for n in names]
        x = np.arange(len(names)) + i * width
        ax.bar(x, med, width, label=f"{source} median")
        ax.errorbar(x, med, yerr=[np.zeros(len(med)), np.subtract(p90, med)], fmt="none", c="k")
    ax.set_xticks(np.arange(len(names)) + width * (len(sources) - 1) / 2)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("seconds per interaction (median, bar to p90)")
    ax.set_yscale("log")
    ax.set_title(f"Machine time of one method call, {results['meta']['threads']} threads{label}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = folder / "benchmark_seconds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    rows = [r for r in results.get("performance", {}).get("size_scaling", []) if "error" not in r]
    if rows:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        sides = [r["side"] for r in rows]
        ax.plot(sides, [r.get("sec_median") or np.nan for r in rows], "o-", label="per interaction")
        ax.plot(sides, [r["setup_sec"] for r in rows], "s--", label="setup (trunk pass)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("image side (px)")
        ax.set_ylabel("seconds")
        ax.set_title(f"ours vs image size, {results['meta']['threads']} threads")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / "benchmark_scaling.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written

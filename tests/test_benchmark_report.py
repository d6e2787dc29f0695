"""The benchmark's groups, per-group figures and issue-16 verdict, on hand-made results."""

import copy

import evaluate  # noqa: E402
import pytest
import report  # noqa: E402
from evaluate import aggregate, lose_steps  # noqa: E402
from groups import group_names, image_groups  # noqa: E402
from report import subset_means, verdict, write_report  # noqa: E402

K = 5
CAP = 20
NAN = float("nan")

SAMPLES = {
    "dsb2018": ["fluo_a", "fluo_b", "histo_a", "histo_b", "bfgray_a", "bfgray_b"],
    "pannuke_breast": ["00000010", "00000029"],
}

GOOD = [0.70, 0.80, 0.85, 0.91, 0.92, 0.93]  # ours: +0.10 at k = 1, Dice 0.90 at k = 3
FLAT = [0.70, 0.72, 0.74, 0.76, 0.78, 0.80]  # the rival: never reaches 0.90


def _rec(dice, head=None, class_dice=None):
    """A per-image record of ``evaluate.evaluate_method`` (only what the report reads)."""
    dice = list(dice)
    noc90 = next((k for k, d in enumerate(dice) if d >= 0.90), None)
    rec = {
        "dice": dice,
        "iou": dice,
        "class_dice": list(class_dice) if class_dice else [NAN] * len(dice),
        "scribbled": [0] * len(dice),
        "agreement": [NAN] * len(dice),
        "sec": [0.1] * (len(dice) - 1),
        "setup_sec": 0.0,
        "noc85": next((k for k, d in enumerate(dice) if d >= 0.85), None),
        "noc90": noc90,
    }
    if head is not None:
        rec["head_agreement"] = [NAN] + [head] * (len(dice) - 1)
    return rec


def _images(ours=None, rival=None, all_weights=None):
    """Two images per group; ``ours``/``rival``/``all_weights``: sample id -> Dice list."""
    images = []
    for source, ids in SAMPLES.items():
        for sample_id in ids:
            types = [NAN, 0.5, 0.6, 0.7, 0.75, 0.8] if source == "pannuke_breast" else None
            methods = {
                "ours": _rec((ours or {}).get(sample_id, GOOD), head=0.95, class_dice=types),
                "paint-only": _rec((rival or {}).get(sample_id, FLAT), class_dice=types),
            }
            if all_weights and sample_id in all_weights:
                methods["ours-all-weights"] = _rec(all_weights[sample_id], head=0.9)
            images.append({"sample": f"{source}/{sample_id}", "source": source, "methods": methods})
    return images


def _results(images, sec_median=0.2, sec_p90=0.3):
    return {
        "meta": {
            "command": "python benchmarks/run_benchmark.py",
            "date_utc": "today",
            "limit": None,
            "limited_run": False,
            "data": "nuclei",
            "interactions": K,
            "noc_cap": CAP,
            "seed": 0,
            "models": {"grey": "g", "rgb": "r"},
            "model_normalisation": "stored",
            "threads": 2,
            "cpu": "cpu",
            "logical_cpus": 2,
            "platform": "linux",
            "python": "3",
            "torch": "2",
            "load_average_start": [0, 0, 0],
            "load_average_end": [0, 0, 0],
            "wall_seconds": 1.0,
        },
        "paper": {"dice": [0.54, 0.62, 0.76, 0.81, 0.86]},
        **aggregate(images, K, CAP),
        "images": images,
        "performance": {
            "size_scaling": [
                {"side": 512, "threads": 2, "setup_sec": 0.1, "sec": [0.2] * 3}
                | {"sec_median": sec_median}
                | ({} if sec_p90 is None else {"sec_p90": sec_p90})
            ],
            "core_benchmark": None,
        },
    }


def _lines(lines, goal, group):
    return [ln for ln in lines if ln.startswith(f"- Goal {goal} ") and f", {group}" in ln]


def test_groups_per_source_and_dsb_modality():
    images = _images()
    assert image_groups(images[0]) == ["dsb2018", "dsb2018/fluo", "all"]
    assert image_groups(images[-1]) == ["pannuke_breast", "all"]  # no modality prefix
    expected = [
        "dsb2018",
        "dsb2018/bfgray",
        "dsb2018/fluo",
        "dsb2018/histo",
        "pannuke_breast",
        "all",
    ]
    assert group_names(images) == expected
    methods = aggregate(images, K, CAP)["methods"]
    assert list(methods["ours"]) == expected
    assert methods["ours"]["dsb2018/fluo"]["n_images"] == 2
    assert methods["ours"]["dsb2018"]["n_images"] == 6
    assert methods["ours"]["all"]["n_images"] == 8
    fluo = methods["ours"]["dsb2018/fluo"]
    assert fluo["dice@1"] == pytest.approx(0.80)
    assert fluo["head_agreement@5"] == pytest.approx(0.95)
    assert methods["ours"]["pannuke_breast"]["class_dice@5"] == pytest.approx(0.8)
    assert "head_agreement@5" not in methods["paint-only"]["dsb2018/fluo"]


def test_lose_share_counts_steps_up_to_k_that_drop_more_than_0_02():
    recs = [
        _rec([0.80, 0.75, 0.76, 0.74]),  # -0.05 loses; +0.01; -0.02 exactly does not
        _rec([0.50, 0.60, 0.57, 0.60, 0.10]),  # -0.03 loses; the k = 4 step is beyond K
    ]
    assert lose_steps(recs, 3) == (2, 6)
    figures = evaluate.summarise(recs, 3, CAP)
    assert figures["lose_share"] == pytest.approx(2 / 6)
    assert (figures["lose_steps"], figures["steps"]) == (2, 6)
    assert evaluate.summarise(recs, 4, CAP)["lose_share"] == pytest.approx(3 / 7)
    assert lose_steps([{"dice": [0.5, None, 0.2]}], 2) == (0, 0)  # missing Dice: no step
    assert report.LOSE_DROP == evaluate.LOSE_DROP


def test_verdict_met_when_ours_is_best_everywhere():
    lines = verdict(_results(_images()), rivals=("paint-only",))
    assert lines[0].startswith("**Goals met**")
    goal_lines = [ln for ln in lines if ln.startswith("- Goal")]
    assert goal_lines and all(": met (" in ln for ln in goal_lines)
    for group in report.VERDICT_GROUPS:
        for goal in (1, 2, 4):
            assert len(_lines(lines, goal, group)) == 1
    assert len(_lines(lines, 3, "pannuke_breast")) == 1
    assert any(ln.startswith("- Goal 5 ") for ln in lines)


def test_verdict_names_group_and_figure_where_ours_loses_at_dice3():
    better = [0.70, 0.72, 0.92, 0.95, 0.95, 0.95]  # below ours at k = 1, above it at k = 3
    images = _images(rival={"histo_a": better, "histo_b": better})
    lines = verdict(_results(images), rivals=("paint-only",))
    assert lines[0].startswith("**Goals not met**: 2 ")
    (line,) = _lines(lines, 2, "dsb2018/histo")
    assert "**not met**" in line and "Dice@3 0.910 < paint-only 0.950" in line
    assert "Dice@1" not in line
    assert "NoC@0.90 3.00 > paint-only 2.00" in line
    assert ": met (" in _lines(lines, 2, "dsb2018/fluo")[0]


def test_verdict_goal_1_misses_when_the_first_stroke_gains_under_0_01():
    small = [0.70, 0.705, 0.85, 0.91, 0.92, 0.93]
    images = _images(ours={"bfgray_a": small, "bfgray_b": small})
    lines = verdict(_results(images), rivals=("paint-only",))
    (line,) = _lines(lines, 1, "dsb2018/bfgray")
    assert "**not met**" in line and "Dice@1 0.705 < Dice@0 0.700 + 0.01" in line
    assert "1" in lines[0].split(": ", 1)[1].split(" (")[0].split(", ")
    assert ": met (" in _lines(lines, 1, "dsb2018/fluo")[0]


def test_verdict_goal_1_misses_when_too_many_steps_lose():
    wobbly = [0.70, 0.80, 0.85, 0.80, 0.92, 0.93]  # 1 of 5 steps loses: 20 %
    lines = verdict(_results(_images(ours={"fluo_a": wobbly})), rivals=("paint-only",))
    (line,) = _lines(lines, 1, "dsb2018/fluo")
    assert "10.0 % of steps lost more than 0.02" in line and "**not met**" in line


def test_verdict_goals_3_to_5():
    images = _images()
    for im in images:
        im["methods"]["ours"]["head_agreement"] = [NAN] + [0.5] * K
    results = _results(images, sec_median=0.6, sec_p90=1.5)
    results["methods"]["ours"]["pannuke_breast"]["class_dice@5"] = 0.7
    lines = verdict(results, rivals=("paint-only",))
    assert lines[0].startswith("**Goals not met**: 3, 4, 5 ")
    assert "class Dice@5 0.700 < 0.75" in _lines(lines, 3, "pannuke_breast")[0]
    assert "head agreement@5 0.500 < 0.9" in _lines(lines, 4, "dsb2018/histo")[0]
    (speed,) = [ln for ln in lines if ln.startswith("- Goal 5 ")]
    assert "median 0.60 s > 0.5 s" in speed and "p90 1.50 s > 1 s" in speed


def test_all_weights_is_compared_on_its_own_images_only():
    # On fluo_a the all-weights variant beats ours; on fluo_b (where it did not run) ours is
    # far ahead, so over the whole group ours' mean would win.
    images = _images(
        ours={"fluo_a": [0.70, 0.75, 0.80, 0.85, 0.86, 0.87], "fluo_b": [0.7, 1, 1, 1, 1, 1]},
        all_weights={"fluo_a": [0.70, 0.80, 0.90, 0.91, 0.92, 0.93]},
    )
    results = _results(images)
    assert results["methods"]["ours"]["dsb2018/fluo"]["dice@1"] == pytest.approx(0.875)
    samples, means = subset_means(
        results, "dsb2018/fluo", ("ours", "ours-all-weights"), ("dice@1",)
    )
    assert samples == ["dsb2018/fluo_a"]
    assert means["ours"]["dice@1"] == pytest.approx(0.75)
    assert means["ours-all-weights"]["dice@1"] == pytest.approx(0.80)
    lines = verdict(results, rivals=("paint-only",))
    (main, subset) = _lines(lines, 2, "dsb2018/fluo")
    assert "rivals that ran on all of them: 1" in main and "ours-all-weights" not in main
    assert ": met (" in main  # the ablation is no rival in the group's means
    assert "against ours-all-weights on the 1 images it ran on" in subset
    assert "**not met**" in subset and "Dice@1 0.750 < ours-all-weights 0.800" in subset
    assert "NoC@0.90 20.00 > ours-all-weights 2.00" in subset
    assert lines[0].startswith("**Goals not met**: 2 ")


def test_a_missing_rival_misses_goal_2():
    lines = verdict(_results(_images()), rivals=("paint-only", "dense-crf"))
    (line,) = _lines(lines, 2, "pannuke_breast")
    assert "**not met**" in line and "did not run: dense-crf" in line


def test_old_results_without_new_figures_render_with_dashes(tmp_path):
    results = _results(_images(), sec_p90=None)
    old = copy.deepcopy(results)
    for per_group in old["methods"].values():
        for key in list(per_group):
            if "/" in key:
                del per_group[key]  # no modality groups
        for fig in per_group.values():
            for key in ("dice@1", "lose_share", "lose_steps", "steps", "class_dice@5"):
                fig.pop(key, None)
            fig.pop("head_agreement@5", None)
    lines = verdict(old, rivals=("paint-only",))
    assert lines[0].startswith("**Goals not met**: 1, 2, 4 ")
    assert "– (not in this run)" in _lines(lines, 1, "pannuke_breast")[0]
    assert "no figures of ours" in _lines(lines, 2, "dsb2018/fluo")[0]
    # figures read off the curves where an old file has them; p90 from the calls' seconds
    assert ": met (" in _lines(lines, 3, "pannuke_breast")[0]
    assert ": met (" in _lines(lines, 4, "pannuke_breast")[0]
    assert "p90 0.20 s" in [ln for ln in lines if ln.startswith("- Goal 5 ")][0]
    path = tmp_path / "benchmarks.md"
    write_report(old, path, [])
    text = path.read_text()
    assert "### dsb2018/fluo\n\n(not in this run)" in text
    assert "| ours | 0.700 | 0.800 | 0.910 | 3.00 (0) | – | 0.950 | 0.800 |" in text


def test_report_has_a_table_per_group(tmp_path):
    path = tmp_path / "benchmarks.md"
    write_report(_results(_images()), path, [])
    text = path.read_text()
    for group in [*report.VERDICT_GROUPS, "dsb2018", "all"]:
        assert f"### {group}\n" in text
    assert "| ours | 0.700 | 0.800 | 0.910 | 3.00 (0) | 0.0 % (0 of 10) | 0.950 | – |" in text
    assert (
        "| paint-only | 0.700 | 0.720 | 0.760 | 20.00 (2) | 0.0 % (0 of 10) | – | 0.800 |" in text
    )

import json

from compare_results import compare, main  # noqa: E402


def _results(dice3: float, sec: float) -> dict:
    return {
        "meta": {"date_utc": "today", "wall_seconds": sec},
        "methods": {"ours": {"dsb": {"dice@3": dice3, "sec_median": sec, "noc90": None}}},
        "images": [{"methods": {"ours": {"dice": [0.5, dice3], "sec": [sec]}}}],
        "performance": {"size_scaling": [{"sec_median": sec}]},
    }


def test_timings_and_metadata_are_ignored():
    report = compare(_results(0.7, 1.0), _results(0.7, 9.0))
    assert report["differing"] == 0 and report["only_in_one"] == 0
    assert report["figures_compared"] == 4  # dice@3, noc90 and the two dice values


def test_a_changed_accuracy_figure_is_reported(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_results(0.7, 1.0)))
    b.write_text(json.dumps(_results(0.71, 1.0)))
    report = compare(json.loads(a.read_text()), json.loads(b.read_text()))
    assert report["differing"] == 2
    assert abs(report["largest_abs_difference"] - 0.01) < 1e-9
    assert main([str(a), str(b)]) == 1
    assert main([str(a), str(b), "--tolerance", "0.02"]) == 0
    assert main([str(a), str(a)]) == 0


def test_nan_against_a_number_differs():
    a = {"methods": {"x": 0.5}}
    b = {"methods": {"x": float("nan")}}
    assert compare(a, b)["differing"] == 1
    assert compare(b, b)["differing"] == 0

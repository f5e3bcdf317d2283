"""benchmarks/study.py's interleaved-timing table for a setting other than K = 5: every timed
method with its median, range and ratio, under the conditions the timing recorded."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_script

study = load_script("study")

META = {"setting": "5w1s_k1", "rounds": 8, "block": 20, "threads": 1, "reference": "first-order MAML (tuned)",
        "machine": "x86_64, 2 CPUs", "load_start": 1.84, "load_end": 1.17, "torch": "2.13.0+cpu",
        "date": "2026-12-04 19:12"}


def _row(method: str, median: float, low: float, high: float, ratio: float) -> dict[str, object]:
    return {"method": method, "sec_per_iter_median": median, "sec_per_iter_min": low, "sec_per_iter_max": high,
            "ratio_median": ratio, "ratio_min": ratio - 0.1, "ratio_max": ratio + 0.1}


def _study(runs: Path) -> object:
    return study.Study(runs, "full", [], {"5w1s_k1": {}})


def test_each_timed_method_gets_its_row_and_the_conditions_are_stated(tmp_path: Path) -> None:
    rows = [_row("AHE, exact HVP (tuned)", 0.2284, 0.1984, 0.2521, 1.2556),
            _row("first-order MAML (tuned)", 0.1799, 0.1680, 0.1963, 1.0)]
    (tmp_path / "cost_5w1s_k1.json").write_text(json.dumps({"meta": META, "rows": rows}))
    md = study.interleaved(_study(tmp_path), "5w1s_k1")
    assert md[0] == "#### Cost per meta-iteration, 5w1s_k1"
    assert "| AHE, exact HVP (tuned) | 0.228 (0.198–0.252) | 1.26 (1.16–1.36) |" in md
    assert "| first-order MAML (tuned) | 0.180 (0.168–0.196) | 1.00 (0.90–1.10) |" in md
    assert "× first-order MAML (tuned)" in md[2]
    note = md[-1]
    assert "2026-12-04 19:12" in note and "8 rounds" in note and "load average 1.8 at start, 1.2 at end" in note


def test_an_untimed_setting_prints_nothing(tmp_path: Path) -> None:
    assert study.interleaved(_study(tmp_path), "20w1s_k1") == []

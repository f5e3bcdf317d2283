"""benchmarks/study.py's report of one setting: the efficiency table in a setting other than K = 5
(placed by the setting's own interleaved timing, with a Pareto front and plot, and without K = 5's
"× its K = 1 cost"), and the test section's paired tables, Reptile's among them once it is in."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_script

from gs_tune.results.tables import write_evaluation

study = load_script("study")

SETTING = "5w1s_k1"
META = {"setting": SETTING, "rounds": 8, "block": 20, "threads": 1, "reference": "first-order MAML (tuned)",
        "machine": "x86_64, 2 CPUs", "load_start": 1.84, "load_end": 1.17, "torch": "2.13.0+cpu",
        "date": "2026-12-04 19:12"}
# (label, config_source, params, test accuracy per seed, interleaved median s / iteration)
METHODS = [
    ("AHE, exact HVP (tuned)", "tuned", {"algorithm": "ahe", "hvp": "exact"}, [0.89, 0.90, 0.91], 0.228),
    ("MAML (tuned)", "baselines-run", {"algorithm": "maml"}, [0.91, 0.91, 0.92], 0.217),
    ("first-order MAML (tuned)", "baselines-run", {"algorithm": "fomaml"}, [0.87, 0.88, 0.89], 0.180),
]


def _study(runs: Path, *, evaluated: bool = True, methods: list = METHODS) -> object:
    run = runs / f"{SETTING}_ahe"
    run.mkdir(parents=True)
    if evaluated:
        write_evaluation(run, [
            {"method": params["algorithm"], "config_source": source, "seed": 1000 + i,
             "test_accuracy": acc, "test_ci95": 0.01, "test_tasks": 600, "sec_per_iter": 0.25,
             "peak_memory_mb": 640.0, "params": {**params, "iterations": 2000}}
            for label, source, params, accs, _ in methods for i, acc in enumerate(accs)])
        rows = [{"method": label, "sec_per_iter_median": secs, "sec_per_iter_min": secs * 0.9,
                 "sec_per_iter_max": secs * 1.1, "ratio_median": secs / 0.180, "ratio_min": secs / 0.180 - 0.1,
                 "ratio_max": secs / 0.180 + 0.1} for label, *_, secs in methods]
        (runs / f"cost_{SETTING}.json").write_text(json.dumps({"meta": META, "rows": rows}))
    return study.Study(runs, "full", [], {SETTING: {"ahe": run}})


def test_the_setting_is_placed_by_its_own_timing(tmp_path: Path) -> None:
    md = study.efficiency(_study(tmp_path / "runs"), tmp_path, SETTING)
    assert md[0] == f"#### Efficiency, {SETTING}"
    table = {line.split(" | ")[0].lstrip("| "): line for line in md if line.startswith("| ") and "%" in line}
    # AHE is dominated: MAML is both more accurate and cheaper in the interleaved timing
    assert table["AHE, exact HVP (tuned)"].endswith("| 7.6 | 640 |  |")
    assert table["MAML (tuned)"].endswith("| 7.2 | 640 | yes |")
    assert table["first-order MAML (tuned)"].endswith("| 6.0 | 640 | yes |")
    assert "| 0.228 | 1.27 (1.17–1.37) |" in table["AHE, exact HVP (tuned)"]
    assert not any("K = 1" in line for line in md)
    assert "2026-12-04 19:12" in "\n".join(md)
    assert (tmp_path / f"pareto_{SETTING}.png").stat().st_size > 0


def test_a_setting_not_yet_evaluated_prints_nothing(tmp_path: Path) -> None:
    assert study.efficiency(_study(tmp_path / "runs", evaluated=False), tmp_path, SETTING) == []


REPTILE = ("Reptile, K=9 (tuned)", "baselines-run", {"algorithm": "reptile", "inner_steps": 9},
           [0.86, 0.84, 0.87], 1.468)


def _test_tables(md: list[str]) -> dict[str, list[str]]:
    """Each bold-titled table of the test section: its title, and its rows' first two cells."""
    tables: dict[str, list[str]] = {}
    title = None
    for line in md:
        if line.startswith("**") and "(percentage points)" in line:
            title = line.split("**")[1]
            tables[title] = []
        elif title and line.startswith("| ") and " pp " in line:
            tables[title].append(" | ".join(cell.strip() for cell in line.strip("| ").split(" | ")[:2]))
    return tables


def test_the_other_methods_are_paired_with_reptile_once_it_is_in(tmp_path: Path) -> None:
    runs = _study(tmp_path / "runs", methods=[*METHODS, REPTILE])
    tables = _test_tables(study.test_section(runs, SETTING, tmp_path))
    # method − Reptile over the three shared seeds: AHE (0.89, 0.90, 0.91) − (0.86, 0.84, 0.87)
    assert tables["The other first-order baseline: minus tuned Reptile"] == [
        "AHE, exact HVP (tuned) | +4.33 pp ± 3.79 pp", "MAML (tuned) | +5.67 pp ± 2.87 pp"]
    assert "Reptile, K=9 (tuned) | -2.33 pp ± 3.79 pp" in tables["Paired differences from tuned first-order MAML"]


def test_without_reptile_there_is_no_reptile_table(tmp_path: Path) -> None:
    tables = _test_tables(study.test_section(_study(tmp_path / "runs"), SETTING, tmp_path))
    assert "Paired differences from tuned first-order MAML" in tables
    assert not any("Reptile" in title for title in tables)

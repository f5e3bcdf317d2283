"""Per-method summaries and paired differences of evaluation.parquet (gs_tune/results/evaluation.py)
and their place in `gs-tune report`."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from gs_tune.results.evaluation import (
    PAIRS_SCHEMA,
    aggregate,
    format_summary,
    markdown_table,
    method_results,
    paired_results,
    read_pairs,
    write_pairs,
)
from gs_tune.results.report import write_report
from gs_tune.results.tables import write_evaluation
from gs_tune.rundir import EVALUATION_PAIRS_FILE

TASK = {"dataset": "digits", "data_root": None, "ways": 5, "shots": 1, "query": 15, "test_tasks": 600}


def _row(method: str, seed: int, acc: float | None, spi: float = 0.2, mem: float = 600.0,
         source: str = "baselines-run", **params: Any) -> dict[str, Any]:
    return {"method": method, "config_source": source, "seed": seed, "test_accuracy": acc,
            "test_ci95": None if acc is None else 0.01, "test_tasks": 600, "sec_per_iter": spi,
            "peak_memory_mb": mem, "params": {**TASK, "seed": seed, **params}}


ROWS = [
    _row("ahe (tuned)", 1000, 0.80, 0.22, 690.0, "tuned"), _row("ahe (tuned)", 1001, 0.84, 0.24, 700.0, "tuned"),
    _row("maml", 1000, 0.78), _row("maml", 1001, None),  # one seed diverged
    _row("reptile", 1000, None), _row("reptile", 1001, None),
]

# Two-sided 95% Student-t quantiles from a printed table: over a few seeds they are far from 1.96.
T_975 = {1: 12.706, 2: 4.303, 4: 2.776}


def test_aggregate_is_t_over_seeds_and_per_task_for_one_seed() -> None:
    one = aggregate([0.5], [0.03], [600])  # one seed: its own interval over its test tasks
    assert (one.mean, one.half_width, one.n, one.over) == (0.5, 0.03, 600, "test tasks")
    three = aggregate([0.4, 0.5, 0.6], [0.01, 0.01, 0.01], [600] * 3)
    assert three.mean == pytest.approx(0.5) and (three.n, three.over) == (3, "seeds")
    assert three.half_width == pytest.approx(T_975[2] * 0.1 / math.sqrt(3), rel=1e-4)
    # the per-task intervals of the seeds do not enter: only the spread over seeds does
    assert aggregate([0.4, 0.5, 0.6], [0.2, 0.2, 0.2], [600] * 3) == three


def test_method_results_per_method_in_table_order() -> None:
    tuned, maml, reptile = method_results(ROWS)
    assert (tuned.method, tuned.source, tuned.seeds, tuned.finished) == ("ahe (tuned)", "tuned", 2, 2)
    assert tuned.accuracy == pytest.approx(0.82)
    assert tuned.ci95 == pytest.approx(T_975[1] * math.sqrt(0.0008) / math.sqrt(2), rel=1e-4)
    assert tuned.sec_per_iter == pytest.approx(0.23) and tuned.peak_memory_mb == 700.0
    # the diverged seed counts in seeds and time, not in accuracy or memory; one seed left: per task
    assert (maml.seeds, maml.finished, maml.accuracy, maml.ci95) == (2, 1, 0.78, 0.01)
    assert (maml.interval.n, maml.interval.over) == (600, "test tasks")
    assert reptile.interval is None and reptile.peak_memory_mb is None


def test_terminal_and_markdown_tables_say_what_each_interval_is_over() -> None:
    text = format_summary(ROWS).splitlines()
    assert text[0].split()[:3] == ["method", "source", "seeds"] and "95% t-interval over" in text[0]
    tuned = next(line for line in text if line.startswith("ahe (tuned)"))
    assert "82.00% ±" in tuned and tuned.rstrip().endswith("700") and " 2 seeds " in tuned
    maml = next(line for line in text if line.startswith("maml "))
    assert " 1/2 " in maml and "78.00% ± 1.00%" in maml and " 600 test tasks " in maml
    assert "diverged" in next(line for line in text if line.startswith("reptile "))
    assert any("Student-t" in line for line in text)
    md = markdown_table(ROWS)
    assert md[0].startswith("| method |") and "95% t-interval over" in md[0] and len(md) == 2 + 3
    assert md[3] == "| maml | baselines-run | 1/2 | 78.00% ± 1.00% | 600 test tasks | 0.2000 | 600 |"


def _accs(method: str, accs: dict[int, float | None]) -> list[dict[str, Any]]:
    return [_row(method, seed, acc) for seed, acc in accs.items()]


def test_paired_difference_uses_the_shared_seeds_only() -> None:
    rows = (_accs("fomaml", {1000: 0.70, 1001: 0.74, 1002: 0.72, 1003: 0.71, 1004: None})
            + _accs("ahe", {1000: 0.73, 1001: 0.75, 1002: None, 1003: 0.74, 1004: 0.90}))
    [pair] = paired_results(rows, "fomaml")
    assert (pair.method, pair.reference, pair.seeds) == ("ahe", "fomaml", (1000, 1001, 1003))
    diffs = [0.03, 0.01, 0.03]  # 1002: ahe diverged; 1004: the reference diverged
    sd = math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    assert pair.interval.mean == pytest.approx(sum(diffs) / 3)
    assert pair.interval.half_width == pytest.approx(T_975[2] * sd / math.sqrt(3), rel=1e-4)
    assert (pair.interval.n, pair.interval.over) == (3, "seeds")
    assert "paired on the 3 seeds both finished" in pair.note
    assert "seed 1002 (ahe diverged)" in pair.note and "seed 1004 (fomaml (reference) diverged)" in pair.note
    # and the printed table says so next to the number
    text = format_summary(rows, [pair])
    line = next(x for x in text[text.index("Paired differences"):].splitlines() if x.startswith("ahe "))
    assert "+2.33 pp ±" in line and "3 seeds" in line and "seed 1002 (ahe diverged)" in line


def test_pairing_removes_the_shared_noise() -> None:
    # Seeds differ a lot (hard and easy test task sets), the method gains 1 point on each: the
    # unpaired intervals overlap, the paired difference is exactly +1 point.
    base = {1000: 0.60, 1001: 0.80, 1002: 0.70}
    rows = _accs("fomaml", base) + _accs("ahe", {s: a + 0.01 for s, a in base.items()})
    [pair] = paired_results(rows, "fomaml")
    assert pair.interval.mean == pytest.approx(0.01) and pair.interval.half_width == pytest.approx(0.0, abs=1e-12)
    assert method_results(rows)[0].ci95 > 0.2


def test_no_pair_across_different_test_tasks_and_none_without_a_shared_seed() -> None:
    rows = _accs("fomaml", {1000: 0.7, 1001: 0.72}) + [_row("maml", 1000, 0.8, ways=20), _row("maml", 1001, 0.8, ways=20)]
    rows += _accs("reptile", {1002: 0.6})
    maml, reptile = paired_results(rows, "fomaml")
    assert maml.interval is None and maml.note == "not paired: different test tasks (ways 20 vs 5)"
    assert reptile.interval is None and reptile.seeds == ()
    assert "seed 1000 (reptile has no run)" in reptile.note
    with pytest.raises(ValueError, match="reference 'nope' is not a method"):
        paired_results(rows, "nope")


def test_one_shared_seed_has_no_interval() -> None:
    [pair] = paired_results(_accs("fomaml", {1000: 0.7}) + _accs("ahe", {1000: 0.75}), "fomaml")
    assert pair.interval.mean == pytest.approx(0.05) and math.isnan(pair.interval.half_width)
    assert "+5.00 pp, no interval" in format_summary(_accs("fomaml", {1000: 0.7}), [pair])


def test_pairs_file_round_trip(tmp_path: Path) -> None:
    rows = (_accs("fomaml", {1000: 0.70, 1001: 0.74, 1002: 0.72}) + _accs("ahe", {1000: 0.73, 1001: 0.75, 1002: None})
            + _accs("maml", {1000: 0.8}))
    pairs = paired_results(rows, "fomaml")
    write_pairs(tmp_path, pairs)
    table = pq.read_table(tmp_path / EVALUATION_PAIRS_FILE)
    assert table.schema.equals(PAIRS_SCHEMA, check_metadata=False)
    assert table.column("seeds").to_pylist() == [2, 1] and table.column("ci95").to_pylist()[1] is None
    back = read_pairs(tmp_path)
    assert [(p.method, p.seeds, p.note) for p in back] == [(p.method, p.seeds, p.note) for p in pairs]
    assert back[0].interval == pairs[0].interval
    write_pairs(tmp_path, [])  # a later evaluation without a reference leaves no stale pairs
    assert read_pairs(tmp_path) == []


def test_report_shows_the_evaluation_with_labelled_intervals(make_run) -> None:
    run: Path = make_run("single")
    assert "evaluation.png" not in write_report(run).read_text()
    rows = [*ROWS, *_accs("fomaml", {1000: 0.75, 1001: 0.77}),
            _row("ahe (tuned, w=0)", 1000, 0.76, source="tuned-ablation", algorithm="ahe", w_cos=0.0),
            _row("ahe (tuned, w=0)", 1001, 0.78, source="tuned-ablation", algorithm="ahe", w_cos=0.0)]
    write_evaluation(run, rows)
    write_pairs(run, paired_results(rows, "fomaml"))
    md = write_report(run).read_text()
    section = md[md.index("## Test split"):]
    assert "| maml | baselines-run | 1/2 | 78.00% ± 1.00% | 600 test tasks |" in section
    assert re.search(r"\| ahe \(tuned\) \| tuned \| 2 \| 82\.00% ± [\d.]+% \| 2 seeds \|", section)
    assert "Paired differences from **fomaml**" in section
    assert re.search(r"\| ahe \(tuned\) \| \+6\.00 pp ± [\d.]+ pp \| 2 seeds \|", section)
    assert "95% t-interval" in section and "Student-t" in section
    # the ablation is described for what it is where it is shown
    assert "first-order MAML at AHE's tuned step sizes, outer learning rate included" in section
    assert "it is not a tuned first-order MAML" in section
    for name in ("evaluation.png", "pairs.png"):
        png = run / "report" / name
        assert f"]({name})" in section and png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000

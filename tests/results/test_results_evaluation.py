"""Per-method summaries of evaluation.parquet (gs_tune/results/evaluation.py) and their place in
`gs-tune report`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gs_tune.results.evaluation import aggregate, format_summary, markdown_table, method_results
from gs_tune.results.report import write_report
from gs_tune.results.tables import write_evaluation


def _row(method: str, seed: int, acc: float | None, spi: float = 0.2, mem: float = 600.0,
         source: str = "baselines-run") -> dict[str, Any]:
    return {"method": method, "config_source": source, "seed": seed, "test_accuracy": acc,
            "test_ci95": None if acc is None else 0.01, "test_tasks": 600, "sec_per_iter": spi,
            "peak_memory_mb": mem, "params": {"seed": seed}}


ROWS = [
    _row("ahe (tuned)", 1000, 0.80, 0.22, 690.0, "tuned"), _row("ahe (tuned)", 1001, 0.84, 0.24, 700.0, "tuned"),
    _row("maml", 1000, 0.78), _row("maml", 1001, None),  # one seed diverged
    _row("reptile", 1000, None), _row("reptile", 1001, None),
]


# Two-sided 95% Student-t quantiles from a printed table: over a few seeds they are far from 1.96.
T_975 = {1: 12.706, 2: 4.303}


def test_aggregate_over_seeds() -> None:
    assert aggregate([0.5], [0.03]) == (0.5, 0.03)  # one seed: its own CI over tasks
    mean, ci = aggregate([0.4, 0.5, 0.6], [0.01, 0.01, 0.01])
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(T_975[2] * 0.1 / math.sqrt(3), rel=1e-4)


def test_method_results_per_method_in_table_order() -> None:
    tuned, maml, reptile = method_results(ROWS)
    assert (tuned.method, tuned.source, tuned.seeds, tuned.finished) == ("ahe (tuned)", "tuned", 2, 2)
    assert tuned.accuracy == pytest.approx(0.82)
    assert tuned.ci95 == pytest.approx(T_975[1] * math.sqrt(0.0008) / math.sqrt(2), rel=1e-4)
    assert tuned.sec_per_iter == pytest.approx(0.23) and tuned.peak_memory_mb == 700.0
    # the diverged seed counts in seeds and time, not in accuracy or memory
    assert (maml.seeds, maml.finished, maml.accuracy, maml.ci95) == (2, 1, 0.78, 0.01)
    assert reptile.accuracy is None and reptile.peak_memory_mb is None


def test_terminal_and_markdown_tables() -> None:
    text = format_summary(ROWS).splitlines()
    assert text[0].split()[:3] == ["method", "source", "seeds"]
    assert text[1].startswith("ahe (tuned)") and "82.00% ±" in text[1]
    assert text[2].startswith("maml") and " 1/2 " in text[2] and "78.00% ± 1.00%" in text[2]
    assert text[3].startswith("reptile") and "diverged" in text[3]
    md = markdown_table(ROWS)
    assert md[0].startswith("| method |") and len(md) == 2 + 3
    assert md[3] == "| maml | baselines-run | 1/2 | 78.00% ± 1.00% | 0.2000 | 600 |"


def test_report_shows_the_evaluation_when_there_is_one(make_run) -> None:
    run: Path = make_run("single")
    assert "evaluation.png" not in write_report(run).read_text()
    write_evaluation(run, ROWS)
    md = write_report(run).read_text()
    assert "## Test split" in md and "| maml | baselines-run | 1/2 | 78.00% ± 1.00% |" in md
    png = run / "report" / "evaluation.png"
    assert "![evaluation](evaluation.png)" in md and png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000

"""write_report and its pure plot-data functions."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from results_helpers import FIXED, SEARCH

from gs_tune.results.analysis import DEFAULT_OBJECTIVE, Objective, late_slope
from gs_tune.results.report import curves_data, history_data, pareto_data, slice_data, write_report
from gs_tune.results.tables import read_metrics, read_trials, write_evaluation
from gs_tune.rundir import new_run_info, write_run
from gs_tune.search.space import parse_space

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _embedded(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def _check_pngs(report: Path) -> list[str]:
    md = report.read_text()
    names = _embedded(md)
    for name in names:
        data = (report.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    # every PNG in the directory is referenced (no stale plots of an earlier report)
    assert sorted(p.name for p in report.parent.glob("*.png")) == sorted(names)
    return names


def test_report_single_objective(make_run) -> None:
    run = make_run("single")
    report = write_report(run)
    assert report == run / "report" / "report.md"
    names = _check_pngs(report)
    assert {"history.png", "importances.png", "curves.png", "slice_w_cos.png", "slice_inner_lr.png"} <= set(names)
    assert "pareto.png" not in names
    md = report.read_text()
    assert "`t2` (completed): best_val_accuracy = 0.72" in md
    assert "| w_cos | 0.1 |" in md
    assert "4 completed, 1 early_stopped, 1 diverged" in md
    # t2 validated at 100, 200, 300: two points in its second half fix a line but not its noise
    assert "| `t2` | 0.72 (iteration 300) | fewer than 3 validations |" in md


def test_report_multi_objective_and_rewrite(make_run) -> None:
    run = make_run("multi")
    (run / "report").mkdir()
    (run / "report" / "slice_gone.png").write_bytes(b"stale")
    names = _check_pngs(write_report(run))
    assert "pareto.png" in names and "slice_gone.png" not in names
    md = (run / "report" / "report.md").read_text()
    assert "`t5`: best_val_accuracy (max) = 0.65, sec_per_iter (min) = 0.03" in md


def test_report_interrupted_run_without_study(make_run) -> None:
    run = make_run("interrupted")
    (run / "study.db").unlink()
    (run / "metrics.parquet").unlink()
    names = _check_pngs(write_report(run))
    assert "importances.png" not in names and "curves.png" in names
    assert "Skipped: no study.db in" in (run / "report" / "report.md").read_text()


def test_history_data_tracks_best_so_far(make_run) -> None:
    data = history_data(read_trials(make_run("single")))
    assert data.numbers == [1, 2, 3, 4, 5, 6]
    assert data.values == pytest.approx([0.55, 0.60, 0.72, 0.35, 0.20, 0.65])
    assert data.best_so_far == pytest.approx([0.55, 0.60, 0.72, 0.72, 0.72, 0.72])
    loss = history_data([{"trial_id": "a", "v": 2.0}, {"trial_id": "b", "v": None}, {"trial_id": "c", "v": 1.0}],
                        Objective("loss", "v", "min"))
    assert loss.best_so_far == [2.0, 2.0, 1.0] and loss.values == [2.0, None, 1.0]


def test_slice_data_scales() -> None:
    rows = [{"trial_id": str(i), "best_val_accuracy": 0.5 + i / 100, "param_lr": lr, "param_k": k,
             "param_w": w, "param_algo": "ahe"}
            for i, (lr, k, w) in enumerate([(1e-4, 1, 0.0), (1e-3, 2, 0.001), (1e-1, 3, 1.0)])]
    by_name = {s.param: s for s in slice_data(rows)}
    assert set(by_name) == {"lr", "k", "w"}  # strings are not sliced
    assert by_name["lr"].x_scale == "log"
    assert by_name["k"].x_scale == "linear"
    assert by_name["w"].x_scale == "symlog"  # zeros of an inactive weight stay on the plot
    assert by_name["k"].x == [1.0, 2.0, 3.0] and by_name["k"].y == pytest.approx([0.5, 0.51, 0.52])
    assert [s.param for s in slice_data(rows, params=["param_k"])] == ["k"]


def test_curves_data_top_k_best_first(make_run) -> None:
    run = make_run("single")
    curves = curves_data(read_trials(run), read_metrics(run), DEFAULT_OBJECTIVE, top_k=2)
    assert [c.trial_id for c in curves] == ["t2", "t5"]
    assert curves[0].iterations == [100, 200, 300]
    assert curves[0].val_accuracy == pytest.approx([0.50, 0.70, 0.72])


def test_late_slope_reads_only_the_second_half_against_its_own_scatter() -> None:
    its = list(range(200, 2001, 200))
    steep_then_flat = [0.40, 0.60, 0.70, 0.78, 0.80, 0.81, 0.79, 0.80, 0.81, 0.80]
    flat = late_slope(its, steep_then_flat)
    assert flat is not None and flat.n == 6 and flat.over == "validations"  # iterations 1000-2000
    assert flat.mean - flat.half_width < 0 < flat.mean + flat.half_width
    rising = late_slope(its, [0.40 + 0.02 * k + (0.003 if k % 2 else -0.003) for k in range(10)])
    assert rising is not None and rising.mean == pytest.approx(0.1, abs=0.01)  # 2 pp per 200 it.
    assert rising.mean - rising.half_width > 0
    assert late_slope([100, 200, 300], [0.5, 0.7, 0.72]) is None
    assert late_slope(its, [*steep_then_flat[:-1], float("nan")]).n == 5


def test_pareto_data(make_run) -> None:
    trials = read_trials(make_run("multi"))
    assert pareto_data(trials, [DEFAULT_OBJECTIVE]) is None
    data = pareto_data(trials, [DEFAULT_OBJECTIVE, Objective("sec_per_iter", "sec_per_iter", "min")])
    assert data is not None
    front = {t for t, keep in zip(data.trial_ids, data.on_front) if keep}
    assert front == {"t2", "t3", "t5"}
    assert data.front == sorted(data.front) and data.x_label == "sec_per_iter (min)"


def _with_old_test_columns(run: Path) -> Path:
    """An older run's trials.parquet, from when every trial evaluated the test split: test columns
    with values that appear nowhere else."""
    table = read_trials(run)
    for name, value in (("test_accuracy", 0.987654), ("test_ci95", 0.0123987), ("test_loss", 3.21987)):
        column = pa.array([value] * table.num_rows, pa.float64())
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, column) if i >= 0 else table.append_column(name, column)
    pq.write_table(table, run / "trials.parquet")
    return run


def test_search_section_shows_no_test_values(make_run) -> None:
    run = _with_old_test_columns(make_run("single"))
    md = write_report(run).read_text().replace(str(run), "RUN_DIR")  # pytest's tmp path says "test"
    assert "test" not in md.lower() and not re.search(r"0\.98|98\.7|3\.21|0\.012", md)
    # the test split is shown only from evaluation.parquet, under its own heading
    write_evaluation(run, [{"method": "fomaml", "seed": 1000, "test_accuracy": 0.5, "test_ci95": 0.02,
                            "test_tasks": 600, "params": {"seed": 1000}}])
    md = write_report(run).read_text().replace(str(run), "RUN_DIR")
    search, test = md.split("## Test split")
    assert "test" not in search.lower() and "50.00% ± 2.00% | 600 test tasks" in test


@pytest.mark.parametrize(("grace", "rung", "trials", "left_out"), [(150, 200, 5, 1), (300, 300, 4, 2)])
def test_report_of_an_asha_search_adds_importances_at_the_first_rung(make_run, grace: int, rung: int, trials: int,
                                                                    left_out: int) -> None:
    """At the first validation at or past the grace period (validations every 100 here), over the
    trials that validated there: t4 diverged at 100, t3 was stopped after 200."""
    run = make_run("single")
    space = parse_space({"fixed": FIXED, "search": SEARCH, "objective": {"metric": "val_accuracy", "mode": "max"},
                         "scheduler": {"name": "asha", "grace_period": grace}}, run.name)
    write_run(run, new_run_info(run, space), space)
    names = _check_pngs(write_report(run))
    assert "importances_rung.png" in names and "importances.png" in names
    md = (run / "report" / "report.md").read_text()
    assert f"At ASHA's first rung (iteration {rung})" in md
    assert (f"fANOVA over {trials} trials, val_accuracy at iteration {rung} (one budget for all; "
            f"{left_out} without a value there left out).") in md

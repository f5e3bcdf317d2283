"""benchmarks/study_archive.py: the study's finished steps survive the loss of its run directories.
A search is archived only once it has ended all its trials, an evaluation's journal while it runs,
and a restore never overwrites what the machine holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from benchmark_scripts import load_script
from test_evaluate import BEST, OTHER, build_run

from gs_tune.rundir import EVALUATION_FILE, EVALUATION_RUNS_FILE, TRIALS_FILE, read_space


def _study(runs: Path) -> None:
    """A study's run directory mid-way: one search done (with an evaluation under way), one running."""
    done = runs / "s_ahe"
    build_run(done, [(f"t{i}", BEST if i == 0 else OTHER, 0.5 + i / 100, "completed") for i in range(12)])
    assert read_space(done).num_samples == 12
    (done / "study.db").write_bytes(b"optuna")
    (done / "tune").mkdir()
    (done / "tune" / "checkpoint_000001").write_bytes(b"weights")
    (done / EVALUATION_RUNS_FILE).write_text('{"key": "k", "row": {}}\n')
    build_run(runs / "s_maml", [("a", OTHER, 0.5, "completed"), ("b", OTHER, 0.6, "running")])
    (runs / "spaces").mkdir()
    (runs / "spaces" / "cosine_l2.yaml").write_text("space\n")
    (runs / "study.tsv").write_text("mode\tfull\ns\tahe\ts_ahe\ns\tmaml\ts_maml\n")
    (runs / "study.invocations").write_text("2026-12-04 14:31:31\t3bac847\t492a27d\tclean\n")
    (runs / "cost_s.json").write_text("{}\n")


def test_save_keeps_finished_searches_and_the_journal_not_checkpoints(tmp_path: Path) -> None:
    archive_mod = load_script("study_archive")
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    _study(runs)

    archive_mod.save(runs, archive)

    held = sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file())
    assert held == ["cost_s.json", "s_ahe/evaluation_runs.jsonl", "s_ahe/metrics.parquet", "s_ahe/space.yaml",
                    "s_ahe/study.db", "s_ahe/trials.parquet", "spaces/cosine_l2.yaml", "study.invocations",
                    "study.tsv"]
    assert archive_mod.save(runs, archive) == []  # nothing changed, nothing copied


def test_restore_brings_back_what_a_new_machine_lacks_and_overwrites_nothing(tmp_path: Path) -> None:
    archive_mod = load_script("study_archive")
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    _study(runs)
    archive_mod.save(runs, archive)

    new = tmp_path / "new"
    archive_mod.restore(archive, new)
    assert archive_mod.search_done(new / "s_ahe")  # study.sh skips it, with no Ray state
    assert (new / "s_ahe" / TRIALS_FILE).read_bytes() == (runs / "s_ahe" / TRIALS_FILE).read_bytes()
    assert (new / "s_ahe" / EVALUATION_RUNS_FILE).is_file()  # the evaluation resumes from it
    assert not (new / "s_maml").exists()  # an unfinished search is started again, not half-restored

    # The machine's own files are newer than the archive's: a restore leaves them as they are.
    (runs / "study.invocations").write_text("newer\n")
    (runs / "s_ahe" / EVALUATION_RUNS_FILE).write_text("newer\n")
    assert archive_mod.restore(archive, runs) == []
    assert (runs / "study.invocations").read_text() == "newer\n"
    assert (runs / "s_ahe" / EVALUATION_RUNS_FILE).read_text() == "newer\n"


def test_a_finished_evaluation_drops_the_archived_journal(tmp_path: Path) -> None:
    archive_mod = load_script("study_archive")
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    _study(runs)
    archive_mod.save(runs, archive)

    # evaluate folds its journal into evaluation.parquet and removes it
    shutil.copyfile(runs / "s_ahe" / TRIALS_FILE, runs / "s_ahe" / EVALUATION_FILE)
    (runs / "s_ahe" / EVALUATION_RUNS_FILE).unlink()
    archive_mod.save(runs, archive)

    assert (archive / "s_ahe" / EVALUATION_FILE).is_file()
    assert not (archive / "s_ahe" / EVALUATION_RUNS_FILE).exists()


def test_not_a_study_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive_mod = load_script("study_archive")
    (tmp_path / "runs").mkdir()

    assert archive_mod.main(["save", str(tmp_path / "runs"), str(tmp_path / "archive")]) == 1

    err = capsys.readouterr().err.strip()
    assert err == f"study_archive.py: {tmp_path / 'runs'} has no study.tsv: not a study's run directory"
    assert not (tmp_path / "archive").exists()

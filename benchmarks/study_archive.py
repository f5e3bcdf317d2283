"""Keep the study's tables in git, so a lost machine loses at most the piece in progress.

benchmarks/study.sh runs for days, in pieces, on machines that may not survive between sessions
(the first 5w1s_k5 and 5w1s_k1 run directories were lost that way, checkpoints and tables alike).
Checkpoints stay out of git; the tables a finished step wrote are what the next steps and
benchmarks/study.py read, and they are small. So:

    python benchmarks/study_archive.py save RUNS_DIR ARCHIVE     copy the finished steps' tables
    python benchmarks/study_archive.py restore ARCHIVE RUNS_DIR  put back what RUNS_DIR lacks

What is copied: the study's own files (study.tsv, study.invocations, cost_*.json, spaces/) and, per
run named in study.tsv, its tables once its search has ended all its trials (run.json, space.yaml,
study.db, trials.parquet, metrics.parquet) and its evaluation files whenever they exist (a finished
evaluation.parquet, or an unfinished evaluation's journal, which `gs-tune evaluate` resumes from).
Not copied: Ray Tune's state and checkpoints (tune/), TensorBoard logs, reports. A search still
running is not archived: without Ray's state it could not be continued, only started again.

`save` makes ARCHIVE a copy of RUNS_DIR's finished steps (RUNS_DIR is the newer wherever both
hold a file). `restore` never overwrites: it copies only what RUNS_DIR does not hold, so on the
machine that ran the study it does nothing. A restored search is done by study.sh's count (its
trials.parquet ends all its trials), and benchmarks/study.py reads ARCHIVE as it reads RUNS_DIR:

    python benchmarks/study.py --runs docs/study/data
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from study_runs import INVOCATIONS, MANIFEST, search_done

from gs_tune.fileio import TEMP_SUFFIX, atomic_write
from gs_tune.rundir import (
    EVALUATION_FILE,
    EVALUATION_PAIRS_FILE,
    EVALUATION_RUNS_FILE,
    METRICS_FILE,
    RUN_FILE,
    SPACE_FILE,
    STUDY_FILE,
    TRIALS_FILE,
)

SEARCH_FILES = (RUN_FILE, SPACE_FILE, STUDY_FILE, TRIALS_FILE, METRICS_FILE)
EVALUATION_FILES = (EVALUATION_FILE, EVALUATION_PAIRS_FILE, EVALUATION_RUNS_FILE)


def _copy(src: Path, dst: Path) -> None:
    """Copy one file so that ``dst`` is never half-written: a kill leaves the old file or none."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def finished_files(runs: Path) -> list[Path]:
    """The files of ``runs`` worth keeping, relative to it (see the module's docstring)."""
    if not (runs / MANIFEST).is_file():
        raise ValueError(f"{runs} has no {MANIFEST}: not a study's run directory")
    files = [Path(MANIFEST)]
    files += [Path(p.name) for p in sorted(runs.glob("cost_*.json"))]
    files += [Path("spaces") / p.name for p in sorted((runs / "spaces").glob("*.yaml"))]
    if (runs / INVOCATIONS).is_file():
        files.append(Path(INVOCATIONS))
    lines = (runs / MANIFEST).read_text().splitlines()[1:]
    for name in sorted({line.split("\t")[2] for line in lines}):
        run = runs / name
        if search_done(run):
            files += [Path(name) / f for f in SEARCH_FILES if (run / f).is_file()]
        files += [Path(name) / f for f in EVALUATION_FILES if (run / f).is_file()]
    return files


def save(runs: Path, archive: Path) -> list[Path]:
    """Copy ``runs``' finished files into ``archive`` where they differ; the copied ones."""
    copied = []
    for rel in finished_files(runs):
        src, dst = runs / rel, archive / rel
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        _copy(src, dst)
        copied.append(rel)
    # A finished evaluation removes its journal; the archive's copy must go with it, or a restore
    # would put back a journal beside the table it was folded into.
    for run in archive.iterdir() if archive.is_dir() else ():
        stale = run / EVALUATION_RUNS_FILE
        if stale.is_file() and not (runs / run.name / EVALUATION_RUNS_FILE).is_file() \
                and (runs / run.name / EVALUATION_FILE).is_file():
            stale.unlink()
            copied.append(Path(run.name) / f"{EVALUATION_RUNS_FILE} (removed)")
    return copied


def restore(archive: Path, runs: Path) -> list[Path]:
    """Copy into ``runs`` every archived file it lacks; the copied ones."""
    if not (archive / MANIFEST).is_file():
        return []
    held = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
    copied = []
    for src in sorted(p for p in archive.rglob("*") if p.is_file() and not p.name.endswith(TEMP_SUFFIX)):
        rel = src.relative_to(archive)
        if len(rel.parts) > 1 and rel.parts[0] != "spaces":
            # A run directory this machine holds is its own, newer than any copy: left whole.
            if rel.parts[0] in held:
                continue
        elif (runs / rel).exists():
            continue
        _copy(src, runs / rel)
        copied.append(rel)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("source", type=Path, help="save: RUNS_DIR; restore: ARCHIVE")
    parser.add_argument("target", type=Path, help="save: ARCHIVE; restore: RUNS_DIR")
    args = parser.parse_args(argv)
    try:
        copied = (save if args.action == "save" else restore)(args.source, args.target)
    except (OSError, ValueError) as exc:
        print(f"study_archive.py: {exc}", file=sys.stderr)
        return 1
    print(f"study_archive.py {args.action}: {len(copied)} file(s) into {args.target}"
          + "".join(f"\n  {p}" for p in copied))
    return 0


if __name__ == "__main__":
    from study_runs import exit_now

    exit_now(main())

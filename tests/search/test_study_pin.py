"""benchmarks/study_pin.patch: what the study's pinned gs_tune (3bac847) runs with. BENCHMARKS §4
states it changes only bookkeeping; this holds the patch to the files that claim allows."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATCH = ROOT / "benchmarks" / "study_pin.patch"
PIN = "3bac847"
# journal, run-directory names, evaluate's and resume's bookkeeping: nothing a configuration, the
# training or the test reads
ALLOWED = {"gs_tune/fileio.py", "gs_tune/rundir.py", "gs_tune/search/evaluate.py", "gs_tune/search/runner.py"}


def test_the_patch_touches_only_bookkeeping_files() -> None:
    touched = set(re.findall(r"^diff --git a/(\S+) b/\1$", PATCH.read_text(), flags=re.MULTILINE))
    assert touched and touched <= ALLOWED, touched - ALLOWED


def test_the_patch_applies_to_the_pinned_commit(tmp_path: Path) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PIN}^{{commit}}"],
                      check=False, capture_output=True).returncode != 0:
        pytest.skip(f"this clone does not hold {PIN}")
    tree = tmp_path / "pin"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), PIN],
                   check=True, capture_output=True)
    try:
        subprocess.run(["git", "-C", str(tree), "apply", "--check", str(PATCH)], check=True, capture_output=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)

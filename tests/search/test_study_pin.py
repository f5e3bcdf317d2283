"""benchmarks/study_pin.patch: what the study's pinned gs_tune (3bac847) runs with. BENCHMARKS §4
states it changes only bookkeeping; this holds the patch to the files that claim allows."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
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
    # an extracted tree, not a worktree: a test killed half-way leaves nothing in the repository
    tree = tmp_path / "pin"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", PIN, "gs_tune"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    applied = subprocess.run(["git", "apply", "--check", str(PATCH)], cwd=tree, check=False,
                             capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr

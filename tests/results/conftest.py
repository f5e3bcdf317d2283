"""Fixtures of tests/results: synthetic run directories, built once per session (an SQLite study
costs about a second) and copied into each test's tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from results_helpers import TRIALS, build_run, empty_study_db


@pytest.fixture(scope="session")
def run_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("run_templates")
    db = empty_study_db(base / "empty.db")
    return {
        "single": build_run(base / "single", study_db=db),
        "multi": build_run(base / "multi", multi=True, study_db=db),
        "interrupted": build_run(base / "interrupted", interrupted=True, study_db=db),
        "nostudy": build_run(base / "nostudy"),
    }


@pytest.fixture
def make_run(run_templates: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    """make_run(kind) -> a private copy of a template run directory (kind: single, multi,
    interrupted, nostudy); the copy keeps the template's directory name, which is the study name."""

    def copy(kind: str) -> Path:
        dest = tmp_path / kind
        shutil.copytree(run_templates[kind], dest)
        return dest

    return copy


@pytest.fixture
def trials_spec() -> list[tuple[str, dict[str, Any], list[float], float, str]]:
    return TRIALS

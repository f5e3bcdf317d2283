"""The README's Python examples run as written, each in a fresh interpreter.

A reader copies a block into a new Python session, so each block runs in its own
subprocess, from an empty directory (nothing but the installed package to import
from, and nowhere inside the repository to write to).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_from_python_section_has_an_example():
    # without this, deleting the example would leave nothing to run and the test below vacuous
    section = README.read_text(encoding="utf-8").split("### From Python", 1)
    assert len(section) == 2, "README has no '### From Python' section"
    assert PYTHON_BLOCK.search(section[1].split("\n## ", 1)[0]), "the From Python section has no python block"


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path):
    code = python_blocks()[index]
    # One intra-op thread: the example's tensors are small, and on a loaded 2-core machine
    # OpenMP's spinning threads made it several times slower. The code itself is unchanged.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"README python block {index} failed:\n{done.stderr[-4000:]}"
    assert done.stdout.strip(), "the example printed nothing"
    assert list(tmp_path.iterdir()) == [], "the example wrote files into the working directory"

"""Shared helpers: run grid.py as a user would (a subprocess in a batch directory)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "grid.py"
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT))


def grid_cmd(*args: str) -> list:
    return [sys.executable, str(GRID), *map(str, args)]


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """An empty batch directory."""
    path = tmp_path / "batch"
    path.mkdir()
    return path


@pytest.fixture
def run_grid(batch: Path):
    """Run `grid ARGS` in the batch directory; returns the CompletedProcess (text)."""

    def run(*args: str, cwd: Path = None, timeout: float = 120, env: dict = None) -> subprocess.CompletedProcess:
        return subprocess.run(grid_cmd(*args), cwd=cwd or batch, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

    return run


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

"""Fixtures shared by every tier: a batch directory and a way to run grid.py in it as a user would."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))          # helpers.py, from any tests/ folder
from helpers import ROOT, grid_cmd  # noqa: E402

sys.path.insert(0, str(ROOT))                                      # grid.py itself
import grid  # noqa: E402

grid.use_gevent()                  # the tests' own greenlets run patched, as the engine's commands do


@pytest.fixture
def fast_backoff(monkeypatch):
    """Retries without waiting (the waits themselves are grid.backoff's business)."""
    import grid
    monkeypatch.setattr(grid, "backoff", lambda attempt, base=1.0: 0.001)


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """An empty batch directory."""
    path = tmp_path / "batch"
    path.mkdir()
    return path


@pytest.fixture
def run_grid(batch: Path):
    """Run `grid ARGS` in the batch directory; returns the CompletedProcess (text)."""

    def run(*args, cwd: Path = None, timeout: float = 120, env: dict = None) -> subprocess.CompletedProcess:
        return subprocess.run(grid_cmd(*args), cwd=cwd or batch, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

    return run


@pytest.fixture(autouse=True)
def no_local_site_left(tmp_path: Path):
    """A test's local batches leave no site process (nor job processes) behind, whatever the test did."""
    yield
    import grid
    for info in tmp_path.rglob(".grid/local/site.json"):
        root = info.parent
        for state in root.glob("*/state.json"):
            grid.signal_job(grid.read_local_state(state.parent), signal.SIGKILL)
        pid = json.loads(info.read_text())["pid"]
        try:
            if "_local-site" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass                                     # it ended by itself

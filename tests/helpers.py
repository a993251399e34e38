"""Paths and small helpers shared by the test modules (importable from any tests/ folder)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "grid.py"
EXAMPLES = ROOT / "examples"


def grid_cmd(*args) -> list:
    """The command line of `grid ARGS`, run with this interpreter."""
    return [sys.executable, str(GRID), *map(str, args)]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

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


def step_stdout(folder: Path, step: int = 1) -> str:
    """What step N of a job printed on stdout, from its application log (Script<N>_<name>.log) as
    DIRAC's Script module writes it: a header, the output, a space, then any stderr section."""
    [log] = folder.glob(f"Script{step}_*.log")
    body = log.read_text().split(" Standard Output >>>>>>>>>>\n\n", 1)[1]
    return body.split(" <<<<<<<<<< ", 1)[0].removesuffix(" ")

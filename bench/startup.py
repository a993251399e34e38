"""Start-up: `grid --help`, `grid status` and `grid watch` against `python -c pass`, side by side.

    python bench/startup.py [--rounds N] [--against OLD_GRID_PY]

Runs each command N times (default 9), the commands taking turns so that the machine's noise falls
on all of them alike, and prints the median of each and its ratio to `python -c pass`. `status`
reads a batch of 100 jobs made here; `watch` starts the engine on a local batch of 100 jobs, all
Done and downloaded, so it returns as soon as it has started (gevent patched, the engine built).
Fails if `--help` or `status` imports DIRAC, gevent or matplotlib (only `report` draws with it;
checked with `python -X importtime`, which names every module a process imports). With --against
(e.g. `git show main~5:grid.py > /tmp/old.py`), the same commands of that grid.py take their turns
too, so before and after come from one run.
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "grid.py"
sys.path.insert(0, str(ROOT))
import grid  # noqa: E402


def make_batch(batch: Path, n: int = 100, backend: str = "dirac", status: str = grid.RUNNING,
               grid=grid) -> None:
    """A batch written by `grid` (this module, or an older one: each reads its own store format)."""
    store = grid.Store.open(batch, "submit", create=True)
    jobs = [grid.Job(num=i, name=f"job-{i}", status=status, dirac_id=1000 + i, ids=[1000 + i])
            for i in range(1, n + 1)]
    for job in jobs:
        if status == grid.DONE:
            job.output = job.output_folder()
            (batch / job.output).mkdir(parents=True)
    store.create_batch({"tag": "grid-startup", "backend": backend}, jobs, [b""] * n)
    store.close()


def load(path: Path):
    spec = importlib.util.spec_from_file_location("grid_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry_point(path: Path) -> list:
    """The `grid` command as installed (console script): it imports grid.py, from cached bytecode."""
    if path.name != "grid.py":                 # an old version saved under another name
        folder = Path(tempfile.mkdtemp(prefix="grid-bench-old-"))
        shutil.copy(path, folder / "grid.py")
        path = folder / "grid.py"
    code = f"import sys; sys.path.insert(0, {str(path.parent)!r}); import grid; sys.exit(grid.main())"
    subprocess.run([sys.executable, "-c", code, "--version"], check=True, capture_output=True, env=ENV)
    return [sys.executable, "-c", code]


# As users run it: Python keeps compiled modules (a test runner's PYTHONDONTWRITEBYTECODE would make
# every start compile grid.py's 3,600 lines again).
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def wall(argv: list, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=ENV)
    return time.perf_counter() - start


def imported(argv: list, cwd: Path, package: str) -> bool:
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, capture_output=True,
                          text=True, check=True, env=ENV)
    modules = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    return any(name == package or name.startswith(package + ".") for name in modules)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--against", metavar="GRID_PY", help="another grid.py to time side by side")
    args = parser.parse_args()
    python = sys.executable
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import gevent, plyvel'": [python, "-c", "import gevent, plyvel"],
    }
    grids = [("grid", GRID)] + ([("old grid", Path(args.against).resolve())] if args.against else [])
    for label, path in grids:
        command, folder = entry_point(path), label.replace(" ", "-")
        commands.update({
            f"{label} --help": [*command, "--help"],
            f"{label} status (100 jobs)": [*command, "-C", folder, "status"],
            f"{label} watch (engine start, local)": [*command, "-C", f"{folder}/done", "watch"],
        })
        commands[f"python {label.replace('grid', 'grid.py')} --help"] = [python, str(path), "--help"]
    with tempfile.TemporaryDirectory(prefix="grid-bench-startup-") as tmp:
        batch = Path(tmp)
        for label, path in grids:
            module = grid if path == GRID else load(path)
            folder = batch / label.replace(" ", "-")
            (folder / "done").mkdir(parents=True)
            make_batch(folder, grid=module)
            make_batch(folder / "done", backend="local", status=grid.DONE, grid=module)
        for name in ("grid --help", "grid status (100 jobs)"):
            for package in ("DIRAC", "gevent", "matplotlib"):
                if imported(commands[name], batch, package):
                    print(f"FAIL: {name} imports {package}")
                    return 1
        times: dict = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                times[name].append(wall(argv, batch))
    base = statistics.median(times["python -c pass"])
    print(f"start-up, median of {args.rounds} runs taking turns ({python})")
    print(f"{'command':36} {'median':>9} {'min':>9} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:36} {median * 1000:7.0f} ms {min(values) * 1000:6.0f} ms {median / base:6.2f}x")
    print("DIRAC, gevent or matplotlib imported by grid --help or status: no")
    print("grid: as the installed `grid` command runs it (grid.py imported from cached bytecode); "
          "`python grid.py` compiles the whole module first")
    return 0


if __name__ == "__main__":
    sys.exit(main())

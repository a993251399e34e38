"""`grid status` of a big batch: this grid.py against another one (an older commit), side by side.

    python bench/status.py [--jobs 100000] [--runs 3] [--against OLD_GRID_PY]

Each grid.py writes its own batches (each in its own store format) of --jobs jobs, twice: as after
`submit` (every job Received, two history entries) and as after `watch` (every job Done with an
output folder and the seven history entries of its way there). Then `grid status` (as the
installed command runs it) of each batch, the versions taking turns, --runs times: the median
wall time and CPU time (user + system) of each, and the ratio old / new. Without --against, only
this grid.py. CPU time is the steadier figure on a busy machine; it includes LevelDB's own
background thread (a snapshot of a batch whose writer left compactions undone redid them).

Last run (--runs 5, --against the grid.py of 88b7f60; load average 0.3 to 0.8 on 2 cores): wall
0.30 / 0.40 s now against 1.24 / 1.25 s before (after submit / after watch), CPU 0.30 / 0.40 s
against 1.82 / 2.10 s: 4.1x / 3.1x wall, 6.1x / 5.2x CPU. The goal of 0.5 s is met: since store
format 4 `status` prints each job's line as the store keeps it, ready, beside the job's record.
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
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_batch(grid, batch: Path, n: int, watched: bool) -> None:
    """A batch as `submit` (or `submit` then `watch`) leaves it, written by this grid module."""
    batch.mkdir(parents=True)
    store = grid.Store.open(batch, "submit", create=True)
    now = time.time()
    way = (grid.RECEIVED, grid.WAITING, grid.MATCHED, grid.RUNNING, grid.COMPLETING, grid.DONE)

    def jobs():
        for i in range(1, n + 1):
            job = grid.Job(num=i, name=f"job-{i}", status=grid.RECEIVED, minor="Job accepted", dirac_id=1000 + i,
                           ids=[1000 + i], attempts=1, history=[[grid.SUBMITTING, now], [grid.RECEIVED, now + 1]])
            if watched:
                job.status, job.minor, job.app, job.site = grid.DONE, "Execution Complete", \
                    "Job finished successfully", "LCG.CERN.cern"
                job.history = [[grid.SUBMITTING, now]] + [[s, now + k] for k, s in enumerate(way, 1)]
                job.output, job.ended = job.output_folder(), now + 6
            yield job

    store.create_batch({"tag": "grid-bench-status", "backend": "dirac"}, jobs(), (b"x" * 900 for _ in range(n)))
    store.close()


def entry_point(path: Path) -> list:
    """The `grid` command as installed: grid.py imported (from cached bytecode), then main()."""
    code = f"import sys; sys.path.insert(0, {str(path.parent)!r}); import grid; sys.exit(grid.main())"
    return [sys.executable, "-c", code]


def timed(argv: list, cwd: Path) -> tuple:
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {child.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", metavar="GRID_PY", help="another grid.py (e.g. an older commit's)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="grid-bench-status-"))
    versions = [("new", ROOT / "grid.py")]
    if args.against:
        (root / "old").mkdir()
        shutil.copy(args.against, root / "old" / "grid.py")
        versions.append(("old", root / "old" / "grid.py"))
    print(f"grid status of {args.jobs} jobs, median of {args.runs}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    try:
        results = {}
        for label, path in versions:
            grid = load(path, f"grid_{label}")
            for watched in (False, True):
                make_batch(grid, root / f"{label}-{watched}", args.jobs, watched)
            subprocess.run([*entry_point(path), "--version"], env=ENV, check=True, capture_output=True)
        for _ in range(args.runs):                        # the versions take turns
            for label, path in versions:
                for watched in (False, True):
                    results.setdefault((label, watched), []).append(
                        timed([*entry_point(path), "status"], root / f"{label}-{watched}"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'':28} {'wall s':>8} {'CPU s':>8}")
    for (label, watched), runs in results.items():
        name = f"{label}: after {'watch (histories)' if watched else 'submit'}"
        print(f"{name:28} {statistics.median(w for w, _ in runs):8.2f} {statistics.median(c for _, c in runs):8.2f}")
    if args.against:
        for watched in (False, True):
            old, new = results[("old", watched)], results[("new", watched)]
            wall = statistics.median(w for w, _ in old) / statistics.median(w for w, _ in new)
            cpu = statistics.median(c for _, c in old) / statistics.median(c for _, c in new)
            print(f"old / new, after {'watch' if watched else 'submit'}: {wall:.1f}x wall, {cpu:.1f}x CPU")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

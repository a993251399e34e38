"""Start-up: `grid.py --help` and `grid.py status` against `python -c pass`, side by side.

    python bench/startup.py [--rounds N]

Runs each command N times (default 9), the commands taking turns so that the machine's noise falls
on all of them alike, and prints the median of each and its ratio to `python -c pass`. `status`
reads a batch of 100 jobs made here. Fails if `--help` or `status` imports DIRAC or matplotlib
(only `report` draws with it; checked with `python -X importtime`, which names every module a
process imports).
"""
import argparse
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


def make_batch(batch: Path, n: int = 100) -> None:
    store = grid.Store.open(batch, "submit", create=True)
    jobs = [grid.Job(num=i, name=f"job-{i}", status=grid.RUNNING, dirac_id=1000 + i, ids=[1000 + i])
            for i in range(1, n + 1)]
    store.create_batch({"tag": "grid-startup", "backend": "dirac"}, jobs, [b""] * n)
    store.close()


def wall(argv: list, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def imports(argv: list, cwd: Path, package: str) -> bool:
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, capture_output=True,
                          text=True, check=True)
    modules = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    return any(name == package or name.startswith(package + ".") for name in modules)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    python = sys.executable
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import gevent, plyvel'": [python, "-c", "import gevent, plyvel"],
        "grid.py --help": [python, str(GRID), "--help"],
        "grid.py status (100 jobs)": [python, str(GRID), "status"],
    }
    with tempfile.TemporaryDirectory(prefix="grid-bench-startup-") as tmp:
        batch = Path(tmp)
        make_batch(batch)
        for name in ("grid.py --help", "grid.py status (100 jobs)"):
            for package in ("DIRAC", "matplotlib"):
                if imports(commands[name], batch, package):
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
    print("DIRAC or matplotlib imported by grid.py --help or status: no")
    return 0


if __name__ == "__main__":
    sys.exit(main())

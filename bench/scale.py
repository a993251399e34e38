"""Scale of the store: batches of 1k, 10k and 100k jobs through grid.py's own commands.

    python bench/scale.py [--sizes 1000,10000,100000] [--runs 3] [--keep DIR] [--against OLD_GRID_PY]

For each size, in a fresh batch directory: a job file that submits N trivial jobs with DIRAC's Job
API; `submit --no-watch` with an instant backend (bench/instant.py: the server answers at once, so
only grid.py's own costs are left); `grid.py status` as users run it (no backend at all; median of
--runs, with the time until its summary line arrives); `watch` with the instant backend, which takes
every job through Received, Waiting, Running to Done and downloads its output; then `grid.py report`
draws the finished batch (goals at 100,000 jobs: under 10 s, a page under 5 MB). Wall time and peak
RSS of each process are measured here (os.wait4), the stages of submit by the process itself.
Prints a table per size and the growth ratios between sizes. With --against (e.g. `git show
main~5:grid.py > /tmp/old.py`), that grid.py submits the same job file too, in its own batch, right
after this one at each size: its submit stages and the ratio old / new come from the same run.

Last run (`--sizes 1000,100000 --against` the grid.py of 88b7f60, a sync per tag and per id; load
average 7 on 2 cores): submit's engine stage 0.48 s / 114.5 s against 5.69 s / 636.5 s, 11.8x / 5.6x
faster with group commit; the job file stage of 100,000 jobs took 318 s of the 447 s.
"""
import argparse
import json
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
INSTANT = Path(__file__).resolve().parent / "instant.py"

JOB_FILE = """\
for i in range({n}):
    j = Job()
    j.setName(f"job-{{i}}")
    j.setExecutable("echo", arguments=str(i))
    submit(j)
"""


def run(argv: list, cwd: Path, env: dict = None) -> dict:
    """Run a process; its wall time, peak RSS, the BENCH line it printed (if any), first-line time."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first_line = child.stdout.readline()
    first_at = time.perf_counter() - start
    for _ in iter(lambda: child.stdout.read(1 << 20), b""):
        pass
    stderr = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({child.returncode}):\n{stderr[-3000:]}")
    bench = [json.loads(line[6:]) for line in stderr.splitlines() if line.startswith("BENCH ")]
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "first_line": first_at,
            "first": first_line.decode(errors="replace").rstrip("\n"), "bench": bench[-1] if bench else {}}


def measure(n: int, root: Path, runs: int, against: Path = None) -> dict:
    batch = root / f"batch-{n}"
    batch.mkdir()
    (batch / "jobs.py").write_text(JOB_FILE.format(n=n))
    python = sys.executable
    submit = run([python, str(INSTANT), "submit", "--no-watch", "jobs.py"], batch)
    old_submit = submit_with(against, n, root) if against else None
    statuses = [run([python, str(GRID), "status"], batch) for _ in range(runs)]
    watch = run([python, str(INSTANT), "watch", "--interval", "0.05"], batch)
    after = [run([python, str(GRID), "status"], batch) for _ in range(runs)]
    report = run([python, str(GRID), "report"], batch)
    report["page_mb"] = (batch / "report.html").stat().st_size / 1e6
    done = after[0]["first"]
    expected = f"D: {n:3d}\tF:   0"
    if not done.endswith(expected):
        raise SystemExit(f"{n} jobs: watch did not finish every job: {done!r}")
    return {"n": n, "submit": submit, "status": statuses, "watch": watch, "status_done": after,
            "report": report, "folder_mb": folder_mb(batch / ".grid" / "db"), "old_submit": old_submit}


def submit_with(grid_py: Path, n: int, root: Path) -> dict:
    """`submit --no-watch` of the same n jobs by another grid.py (bench/instant.py loads it), in its own batch."""
    batch = root / f"old-batch-{n}"
    batch.mkdir()
    (batch / "jobs.py").write_text(JOB_FILE.format(n=n))
    result = run([sys.executable, str(INSTANT), "submit", "--no-watch", "jobs.py"], batch,
                 {**os.environ, "GRID_BENCH_GRID": str(grid_py)})
    shutil.rmtree(batch)
    return result


def sync_cost(n: int, root: Path) -> tuple:
    """Submit's engine time for n jobs with and without the two synced writes per job (exactly once)."""
    times = []
    for no_sync in ("0", "1"):
        batch = root / f"sync-{n}-{no_sync}"
        batch.mkdir()
        (batch / "jobs.py").write_text(JOB_FILE.format(n=n))
        env = {**os.environ, "GRID_BENCH_NO_SYNC": no_sync}
        result = run([sys.executable, str(INSTANT), "submit", "--no-watch", "jobs.py"], batch, env)
        times.append(result["bench"]["stages"]["engine"])
        shutil.rmtree(batch)
    return times[0], times[1]


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 1e6


def median(values: list) -> float:
    return statistics.median(values)


def report(results: list) -> None:
    print("\nper size (times in s, memory in MB of peak RSS of the process)")
    header = ("jobs", "submit", "job files", "store", "engine", "submit MB", "in flight",
              "status", "summary at", "status MB", "status*", "watch", "watch MB", "db MB",
              "report", "report MB", "page MB")
    print("  ".join(f"{h:>10}" for h in header))
    for r in results:
        s, stages = r["submit"], r["submit"]["bench"]["stages"]
        flight = r["submit"]["bench"]["most_in_flight"].get("submit_one", 0)
        row = (r["n"], s["wall"], stages.get("job files", 0), stages.get("store", 0), stages.get("engine", 0),
               s["rss_mb"], flight, median([x["wall"] for x in r["status"]]),
               median([x["first_line"] for x in r["status"]]), max(x["rss_mb"] for x in r["status"]),
               median([x["wall"] for x in r["status_done"]]), r["watch"]["wall"], r["watch"]["rss_mb"],
               r["folder_mb"], r["report"]["wall"], r["report"]["rss_mb"], r["report"]["page_mb"])
        print("  ".join(f"{v:>10}" if isinstance(v, int) else f"{v:>10.2f}" for v in row))
    print("status: median after submit (jobs Received); status*: median after watch (jobs Done, longer "
          "histories); summary at: when status's summary line arrived; in flight: most submissions at once;\n"
          "report: `grid.py report` of the finished batch (goals at 100,000 jobs: < 10 s, page < 5 MB)")
    if results[0]["old_submit"]:
        print("\nsubmit, side by side: this grid.py / the --against one (times in s)")
        print("  ".join(f"{h:>12}" for h in ("jobs", "job files", "engine", "engine old", "engine x",
                                               "submit", "submit old")))
        for r in results:
            new, old = r["submit"], r["old_submit"]
            row = (r["n"], new["bench"]["stages"]["job files"], new["bench"]["stages"]["engine"],
                   old["bench"]["stages"]["engine"],
                   old["bench"]["stages"]["engine"] / new["bench"]["stages"]["engine"], new["wall"], old["wall"])
            print("  ".join(f"{v:>12}" if isinstance(v, int) else f"{v:>12.2f}" for v in row))
    if len(results) < 2:
        return
    print("\ngrowth from one size to the next (linear = the ratio of sizes)")
    for small, big in zip(results, results[1:]):
        size = big["n"] / small["n"]
        ratios = {
            "status": median([x["wall"] for x in big["status_done"]]) / median([x["wall"] for x in small["status_done"]]),
            "submit engine": big["submit"]["bench"]["stages"]["engine"] / small["submit"]["bench"]["stages"]["engine"],
            "job files": big["submit"]["bench"]["stages"]["job files"] / small["submit"]["bench"]["stages"]["job files"],
            "watch": big["watch"]["wall"] / small["watch"]["wall"],
            "report": big["report"]["wall"] / small["report"]["wall"],
        }
        print(f"  {small['n']:>6} -> {big['n']:<6} (x{size:g}): "
              + ", ".join(f"{k} x{v:.1f}" for k, v in ratios.items()))
    last, first = results[-1], results[0]
    per_job_kb = (last["watch"]["rss_mb"] - first["watch"]["rss_mb"]) * 1024 / (last["n"] - first["n"])
    print(f"\nwatch memory per job: {per_job_kb:.2f} kB "
          f"(peak RSS {first['watch']['rss_mb']:.0f} MB at {first['n']} jobs, "
          f"{last['watch']['rss_mb']:.0f} MB at {last['n']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=3, help="status runs per size (median)")
    parser.add_argument("--keep", metavar="DIR", help="make the batches in DIR and keep them")
    parser.add_argument("--against", metavar="GRID_PY", type=Path, help="another grid.py to submit side by side")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(args.keep or tempfile.mkdtemp(prefix="grid-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"scale: {', '.join(map(str, sizes))} jobs in {root}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    results = []
    try:
        for n in sizes:
            started = time.perf_counter()
            results.append(measure(n, root, args.runs, args.against and args.against.resolve()))
            print(f"  {n} jobs measured in {time.perf_counter() - started:.0f} s", flush=True)
        sync_n = min(10_000, max(sizes))
        synced, unsynced = sync_cost(sync_n, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(results)
    print(f"\nsubmit engine for {sync_n} jobs, side by side: {synced:.2f} s with the synced writes of "
          f"exactly-once (the tag before the call, the id after; concurrent submissions share a sync), "
          f"{unsynced:.2f} s without them (x{synced / unsynced:.1f})")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

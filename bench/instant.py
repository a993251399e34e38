"""grid.py with a backend that answers at once: for volume benchmarks, never for users.

    python bench/instant.py [grid.py arguments]       e.g. -C DIR submit --no-watch jobs.py

runs grid.py's own command line (its job files, store, engine and display) with every backend
replaced by InstantBackend: submissions are accepted at once, every status call moves each job it
asks about one step along Received, Waiting, Running, Done, and an output is one small file. What is
left to measure is grid.py itself (GRID_BENCH_NO_SYNC=1: without the syncs of each submission;
GRID_BENCH_GRID=PATH: that grid.py instead of this one, e.g. an older commit's). On exit it prints
one line to stderr:
``BENCH {"seconds": ..., "peak_rss_mb": ..., "stages": {...}}``.
"""
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

GRID_PY = Path(os.environ.get("GRID_BENCH_GRID") or Path(__file__).resolve().parent.parent / "grid.py")
module_spec = importlib.util.spec_from_file_location("grid", GRID_PY)
grid = sys.modules["grid"] = importlib.util.module_from_spec(module_spec)
module_spec.loader.exec_module(grid)

import gevent  # noqa: E402

PATH = (grid.RECEIVED, grid.WAITING, grid.RUNNING)


class InstantBackend(grid.Backend):
    """No server: ids are counted up, each status call is one step, outputs are one line."""

    name = "instant"
    threaded = False

    def __init__(self, first_id: int = 1, end: str = grid.DONE) -> None:
        self.next_id, self.end = first_id, end
        self.steps: dict[int, int] = {}
        self.status_calls: list[int] = []              # ids asked per call, in order

    def submit(self, spec: grid.JobSpec, tag: str) -> int:
        gevent.sleep(0)                    # as a real call would, let the other greenlets run
        job_id, self.next_id = self.next_id, self.next_id + 1
        return job_id

    def find(self, tags: list[str], groups: list[str], known: set[int], since: float = 0.0) -> dict[str, int]:
        return {}

    def status(self, ids: list[int]) -> dict[int, grid.JobState]:
        self.status_calls.append(len(ids))
        states = {}
        for job_id in ids:
            step = self.steps.get(job_id, 0) + 1
            self.steps[job_id] = step
            states[job_id] = grid.JobState(PATH[step] if step < len(PATH) else self.end, "instant")
        return states

    def fetch_output(self, job_id: int, dest: Path) -> None:
        gevent.sleep(0)
        (dest / "std.out").write_text(f"job {job_id}\n")

    def kill(self, ids: list[int]) -> None:
        pass


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(stages: dict, name: str, fn):
    """fn, with its wall time added to stages[name] and the peak RSS at its end in stages[name + " MB"]."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
            stages[name + " MB"] = peak_rss_mb()
    return wrapper


def counting_in_flight(fn, seen: dict):
    """Engine.submit_one / download_one, counting how many run at once (the pools' bounds)."""
    name = fn.__name__

    def wrapper(self, *args, **kwargs):
        seen[name] = seen.get(name, 0) + 1
        seen[name + " max"] = max(seen.get(name + " max", 0), seen[name])
        try:
            return fn(self, *args, **kwargs)
        finally:
            seen[name] -= 1
    return wrapper


def main(argv: list[str]) -> int:
    stages: dict[str, float] = {}
    in_flight: dict[str, int] = {}
    backend = InstantBackend()
    grid.make_backend = lambda name, batch_dir: backend
    grid.Engine.submit_one = counting_in_flight(grid.Engine.submit_one, in_flight)
    downloads = getattr(grid, "DownloadQueue", grid.Engine)   # where download_one is (older: the engine)
    downloads.download_one = counting_in_flight(downloads.download_one, in_flight)
    if os.environ.get("GRID_BENCH_NO_SYNC") == "1":       # to measure what exactly-once's syncs cost
        save = grid.Store.save
        grid.Store.save = lambda self, *jobs, sync=False: save(self, *jobs, sync=False)
    grid.load_job_files = timed(stages, "job files", grid.load_job_files)
    grid.Store.create_batch = timed(stages, "store", grid.Store.create_batch)
    grid.Store.jobs = timed(stages, "load", grid.Store.jobs)
    grid.Engine.run = timed(stages, "engine", grid.Engine.run)
    start = time.perf_counter()
    code = grid.main(argv)
    report = {"seconds": round(time.perf_counter() - start, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
              "stages": {k: round(v, 3) for k, v in stages.items()},
              "status_calls": len(backend.status_calls),
              "most_in_flight": {k[:-4]: v for k, v in in_flight.items() if k.endswith(" max")}}
    print("BENCH " + json.dumps(report), file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Downloads: 100 outputs with grid.py's bounded download pool versus one by one, same run, same server.

    python bench/downloads.py [--jobs 100] [--keep-lab]

In the lab (tests/lab, needs root): --jobs jobs submitted with grid.py, JobAgent stopped, all driven
to Done with an output sandbox (tests/lab/drive.py); the batch is copied, so two batches hold the
same jobs. With a 50 ms round trip (lab.sh wan on), one process inside the lab learns their status
(one sweep each, not timed) and then runs grid.py's engine on each batch until every output is
downloaded: first with the download pool (grid.DOWNLOAD_PARALLEL at once), then with a pool of one.
Same code path, same jobs, same sandboxes; the pool goes first, so any server-side cache favours the
one-by-one run. Prints both times, the ratio, and the DISET calls and client CPU per download.
"""
import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import grid  # noqa: E402


def client(batches: list, sizes: list) -> None:
    """Download every output of each batch with its pool size; prints RESULT {json}."""
    import json

    from lab import CallCounter
    backend = grid.DiracBackend()
    backend.connect()
    counter = CallCounter()
    for batch in batches:                          # learn that the jobs are Done; not timed
        store = grid.Store.open(batch, "watch")
        grid.Engine(store, backend, grid.Display(io.StringIO()), batch).sweep()
        store.close()
    counter.take()
    runs = []
    for batch, size in zip(batches, sizes):
        store = grid.Store.open(batch, "watch")
        engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch, download_parallel=size)
        wall, cpu = time.perf_counter(), time.process_time()
        jobs = engine.run(watch=True)
        calls = counter.take()
        runs.append({"pool": size, "seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                     "calls": len(calls), "kinds": sorted({name for name, _ in calls}), "downloaded": sum(1 for j in jobs.values() if j.output),
                     "files": sum(1 for _ in (batch / grid.SUCCEEDED_DIR).rglob("std.out"))})
        store.close()
    print("RESULT " + json.dumps(runs))


def on_the_lab(jobs: int, keep: bool) -> None:
    from lab import client as run_client
    from lab import lab_up, submit_batch
    with lab_up(keep=keep) as lab, tempfile.TemporaryDirectory(prefix="grid-bench-downloads-") as tmp:
        pooled, serial = Path(tmp) / "pool", Path(tmp) / "one-by-one"
        ids = submit_batch(lab, pooled, jobs)
        driven = lab.drive(ids, "Done")
        print(f"drove {len(driven['ok'])} jobs to Done with an output sandbox", flush=True)
        serial.mkdir()
        shutil.copytree(pooled / grid.STATE_DIR, serial / grid.STATE_DIR)
        lab.wan(True)
        runs = run_client(lab, Path(__file__), "--client", pooled, serial, grid.DOWNLOAD_PARALLEL, 1)
        lab.wan(False)
    print(f"\n{jobs} outputs from a real DIRAC SandboxStore (lab), 50 ms round trip")
    print(f"{'how':24} {'seconds':>8} {'per output':>11} {'DISET calls':>12} {'client CPU s':>13} {'downloaded':>11}")
    for run in runs:
        how = f"pool of {run['pool']}" if run["pool"] > 1 else "one by one"
        print(f"{how:24} {run['seconds']:>8.2f} {run['seconds'] / jobs:>10.3f}s {run['calls']:>12} "
              f"{run['cpu']:>13.2f} {run['downloaded']:>11}")
    pool, one = runs
    print(f"DISET calls: {', '.join(pool['kinds'])}")
    print(f"\nratio, one by one / pool: {one['seconds'] / pool['seconds']:.1f}x")
    if pool["downloaded"] != jobs or one["downloaded"] != jobs:
        raise SystemExit("not every output was downloaded")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--client", nargs=4, metavar=("POOLED", "SERIAL", "SIZE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client([Path(args.client[0]), Path(args.client[1])], [int(args.client[2]), int(args.client[3])])
        return 0
    on_the_lab(args.jobs, args.keep_lab)
    return 0


if __name__ == "__main__":
    sys.exit(main())

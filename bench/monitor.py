"""Monitoring cost: server calls per status sweep, and what a sweep costs on a real DIRAC WMS.

    python bench/monitor.py [--jobs 2500] [--no-lab] [--keep-lab]

1. Counts (no server): batches of 1, 1000, 2500 and 10,000 jobs, every third one final, one sweep of
   grid.py's engine each, against a backend that counts its status calls; then a sweep with nothing
   left to watch. Expected: ceil(open jobs / 1000) calls, zero when nothing is open.
2. The lab (tests/lab, needs root): --jobs jobs submitted with grid.py, JobAgent stopped; a third
   driven to Done; 50 ms round trip (lab.sh wan on). In one process inside the lab, grid.py's
   sweeps of the batch, each with its DISET calls counted where DIRAC makes them (InnerRPCClient),
   its wall time and the client's CPU time; side by side, Dirac().getJobStatus on the same open jobs.
   Then the rest are killed: one sweep sees them end, the next one makes no call at all.
"""
import argparse
import io
import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import grid  # noqa: E402

OPEN = [grid.RECEIVED, grid.WAITING, grid.MATCHED, grid.RUNNING]
ENDED = [grid.DONE, grid.FAILED, grid.KILLED]


class CountingBackend(grid.Backend):
    name = "counting"

    def __init__(self) -> None:
        self.calls: list = []

    def status(self, ids):
        self.calls.append(len(ids))
        return {i: grid.JobState(grid.RUNNING) for i in ids}


def counted_sweeps(total: int, root: Path) -> dict:
    """One sweep over `total` jobs of which every third is final, then one over the same jobs all final."""
    batch = root / f"count-{total}"
    batch.mkdir()
    statuses = [ENDED[i % 3] if i % 3 == 2 else OPEN[i % 4] for i in range(total)]
    store = grid.Store.open(batch, "watch", create=True)
    jobs = [grid.Job(num=i, name=f"j{i}", status=s, dirac_id=i, ids=[i]) for i, s in enumerate(statuses, 1)]
    store.create_batch({"tag": "grid-count", "backend": "counting"}, jobs, [b""] * total)
    backend = CountingBackend()
    engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch)
    open_jobs = engine.batch.jobs_in_progress
    engine.sweep()
    calls = list(backend.calls)
    engine.batch.apply({j.dirac_id: grid.JobState(grid.DONE) for j in engine.batch.jobs.values() if not grid.is_final(j.status)})
    backend.calls.clear()
    engine.sweep()
    store.close()
    return {"total": total, "final": total - open_jobs, "open": open_jobs, "calls": calls,
            "expected": math.ceil(open_jobs / grid.BULK_STATUS_MAX), "calls_when_all_final": len(backend.calls)}


def print_counts(results: list) -> bool:
    print("status calls per sweep (counting backend; every third job final)")
    print(f"{'jobs':>7} {'final':>7} {'open':>7} {'calls':>6} {'expected':>9} {'all final':>10}  ids per call")
    ok = True
    for r in results:
        sizes = ",".join(map(str, r["calls"]))
        print(f"{r['total']:>7} {r['final']:>7} {r['open']:>7} {len(r['calls']):>6} {r['expected']:>9} "
              f"{r['calls_when_all_final']:>10}  {sizes}")
        ok &= len(r["calls"]) == r["expected"] and r["calls_when_all_final"] == 0
    print("calls = ceil(open / 1000), none when nothing is open:", "yes" if ok else "NO")
    return ok


# -------------------------------------------------------------------------------- inside the lab

def client(batch: Path, phase: str) -> None:
    """Sweeps of the batch with the dirac backend; prints RESULT {json}."""
    import json

    from lab import CallCounter
    backend = grid.DiracBackend()
    backend.connect()
    counter = CallCounter()
    store = grid.Store.open(batch, "watch")
    engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch)
    sweeps = []
    for _ in range(3 if phase == "active" else 2):
        sweeps.append(timed_sweep(engine, counter))
    result = {"sweeps": sweeps}
    if phase == "active":
        from DIRAC.Interfaces.API.Dirac import Dirac
        from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient
        open_ids = [j.dirac_id for j in engine.batch.jobs.values() if not grid.is_final(j.status)]
        result["dirac_getJobStatus"] = timed_call(counter, Dirac().getJobStatus, open_ids)
        monitoring, thousand = JobMonitoringClient(), open_ids[:1000]
        result["one_call"] = {name: timed_call(counter, getattr(monitoring, name), thousand)
                              for name in ("getJobsSummary", "getJobsStates", "getJobsStatus")}
    store.close()
    print("RESULT " + json.dumps(result))


def timed_call(counter, method, ids: list) -> dict:
    import json
    wall, cpu = time.perf_counter(), time.process_time()
    answer = method(ids)
    seconds, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"ids": len(ids), "ok": answer["OK"], "calls": counter.take(), "seconds": seconds, "cpu": cpu,
            "bytes": len(json.dumps(answer.get("Value"), default=str))}


def timed_sweep(engine: "grid.Engine", counter) -> dict:
    asked = engine.batch.jobs_in_progress
    wall, cpu = time.perf_counter(), time.process_time()
    engine.sweep()
    return {"open_before": asked, "seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "calls": counter.take(), "open_after": engine.batch.jobs_in_progress}


def on_the_lab(jobs: int, keep: bool) -> None:
    from lab import client as run_client
    from lab import lab_up, submit_batch
    with lab_up(keep=keep) as lab, tempfile.TemporaryDirectory(prefix="grid-bench-monitor-") as tmp:
        batch = Path(tmp) / "batch"
        ids = submit_batch(lab, batch, jobs)
        lab.drive(ids[: jobs // 3], "Done")
        lab.wan(True)
        active = run_client(lab, Path(__file__), "--client", batch, "active")
        lab.wan(False)
        lab.kill_waiting()
        lab.wan(True)
        ended = run_client(lab, Path(__file__), "--client", batch, "ended")
        lab.wan(False)
    print(f"\nreal DIRAC WMS (lab), 50 ms round trip: {jobs} jobs, {jobs // 3} driven to Done first")
    print(f"{'':36} {'jobs':>5} {'wall s':>7} {'CPU s':>6}  server calls (ids in each)")
    rows = [("grid.py sweep " + str(i + 1), s) for i, s in enumerate(active["sweeps"])]
    rows += [("rest killed; grid.py sweep " + str(i + 1), s) for i, s in enumerate(ended["sweeps"])]
    rows += [("Dirac().getJobStatus, the open jobs", active["dirac_getJobStatus"])]
    rows += [(f"one {name} call", call) for name, call in active["one_call"].items()]
    for name, s in rows:
        print(f"{name:36} {s.get('open_before', s.get('ids')):>5} {s['seconds']:>7.2f} {s['cpu']:>6.3f}  "
              f"{describe(s['calls'])}")
    steady, calls = active["sweeps"][-1], active["one_call"]
    summary, states = calls["getJobsSummary"], calls["getJobsStates"]
    print(f"\nsteady sweep of {steady['open_before']} open jobs: {len(steady['calls'])} calls "
          f"(ceil(open/1000) = {math.ceil(steady['open_before'] / 1000)}), {steady['seconds']:.2f} s, "
          f"{steady['cpu'] * 1000:.0f} ms client CPU")
    print(f"getJobsSummary / getJobsStates for {states['ids']} ids: {summary['seconds'] / states['seconds']:.1f}x "
          f"wall, {summary['cpu'] / states['cpu']:.1f}x client CPU, {summary['bytes'] / states['bytes']:.1f}x bytes")


def describe(calls: list) -> str:
    if not calls:
        return "none"
    by_name: dict = {}
    for name, size in calls:
        by_name.setdefault(name, []).append(size)
    return "; ".join(f"{len(sizes)} {name}({'/'.join(str(s) for s in sizes if s is not None) or '-'})"
                     for name, sizes in by_name.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2500, help="jobs submitted to the lab (default 2500)")
    parser.add_argument("--no-lab", action="store_true", help="only the counts, no DIRAC server")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--client", nargs=2, metavar=("BATCH", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(Path(args.client[0]), args.client[1])
        return 0
    with tempfile.TemporaryDirectory(prefix="grid-bench-count-") as tmp:
        ok = print_counts([counted_sweeps(n, Path(tmp)) for n in (1, 1000, 2500, 10_000)])
    if not args.no_lab:
        on_the_lab(args.jobs, args.keep_lab)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

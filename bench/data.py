"""Output data: 100 files of a few MB downloaded by grid.py against serial DIRAC loops, same lab, same run.

    python bench/data.py [--jobs 25] [--files 4] [--size-mib 3] [--cli-sample 20] [--wan] [--keep-lab]

In the lab (tests/lab, needs root): --jobs jobs that declare --files output data files each are submitted
with grid.py (JobAgent stopped) and driven to Done (tests/lab/drive.py): each file, --size-mib of random
bytes, is uploaded to SE-1 and registered in the DIRAC File Catalog where DIRAC's job wrapper puts it.
Then the same files are downloaded three ways, each into a folder of its own:

  1. grid.py: `grid watch` of the batch (every job's sandbox and data files, verified against the
     catalogue's size and adler32, into succeeded/): wall time of the whole command;
  2. a serial `DataManager().getFile(lfn, destinationDir=...)` loop in one Python process (after DIRAC's
     start-up), what a script written against DIRAC's API does;
  3. a serial `dirac-dms-get-file LFN` loop, one command per file, what a shell loop does; on the first
     --cli-sample files (each costs a DIRAC start-up), reported per file.

grid.py goes first, so any cache on the server's side favours the loops. Every copy's sha256 is checked
against what was uploaded. Prints the figures, the ratios per file, and what each side costs: client CPU,
the StorageElement's and FileCatalog's CPU, and how busy the machine was.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DM_LOOP = r'''
import json, os, sys, time
started = time.perf_counter()
import DIRAC
DIRAC.initialize()
from DIRAC.DataManagementSystem.Client.DataManager import DataManager
lfns, dest = json.loads(sys.argv[1]), sys.argv[2]
ready = time.perf_counter()
cpu = time.process_time()
failed = []
for lfn in lfns:
    folder = os.path.join(dest, lfn.split("/")[-2])     # one per job: their files share names
    os.makedirs(folder, exist_ok=True)
    res = DataManager().getFile(lfn, destinationDir=folder)
    if not res["OK"] or lfn not in res["Value"]["Successful"]:
        failed.append(lfn)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - ready, "startup": ready - started,
                              "cpu": time.process_time() - cpu, "failed": failed}))
'''


def ticks(pid) -> float:
    """CPU seconds (user + system, children included) of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple:
    """(busy, total) jiffies of the whole machine."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Meter:
    """CPU of the lab's data services and of the machine over one measured run."""

    def __init__(self, lab) -> None:
        self.pids = {}
        for name in ("StorageElement", "FileCatalog"):
            pid_file = lab.lab_dir / "run" / f"{name}.pid"
            self.pids[name] = int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    def __enter__(self):
        self.start = {name: ticks(pid) for name, pid in self.pids.items() if pid}
        self.machine = machine_busy()
        self.wall = time.perf_counter()
        self.cpu_children = os.times()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.wall
        self.services = {name: ticks(pid) - self.start[name] for name, pid in self.pids.items() if pid}
        busy, total = machine_busy()
        self.busy = (busy - self.machine[0]) / max(1, total - self.machine[1])
        now = os.times()
        self.client_cpu = (now.children_user - self.cpu_children.children_user
                           + now.children_system - self.cpu_children.children_system)

    def describe(self) -> str:
        services = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in self.services.items())
        return f"server CPU: {services}; machine {100 * self.busy:.0f}% busy"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(copies: dict, expected: dict, what: str) -> None:
    """copies: {lfn: local path}; every one present, byte for byte what was uploaded."""
    bad = [lfn for lfn, digest in expected.items() if lfn not in copies or not copies[lfn].is_file()
           or sha256(copies[lfn]) != digest]
    if bad:
        raise SystemExit(f"{what}: {len(bad)} file(s) missing or wrong, e.g. {bad[:3]}")


def data_job_file(batch: Path, jobs: int, files: int) -> None:
    names = [f"out{i}.dat" for i in range(files)]
    (batch / "jobs.py").write_text(
        f"for i in range({jobs}):\n    j = Job()\n    j.setName(f'data-{{i}}')\n"
        "    j.setExecutable('echo', arguments=str(i))\n"
        f"    j.setOutputData({names!r}, outputSE='SE-1')\n    submit(j)\n")


def on_the_lab(args) -> None:
    from lab import GRID, lab_up, run_grid
    size = int(args.size_mib * (1 << 20))
    total = args.jobs * args.files
    with lab_up(keep=args.keep_lab) as lab, tempfile.TemporaryDirectory(prefix="grid-bench-data-") as tmp:
        batch = Path(tmp) / "batch"
        batch.mkdir()
        data_job_file(batch, args.jobs, args.files)
        run_grid(lab, batch, "submit", "--no-watch", "jobs.py")
        ids = [job["id"] for job in json.loads(run_grid(lab, batch, "status", "--json").stdout)["jobs"]]
        started = time.monotonic()
        driven = lab.drive(ids, "Done", data_size=size)
        expected = {lfn: digest for files in driven["data"].values() for lfn, digest in files.items()}
        lfns = sorted(expected)
        print(f"{len(ids)} jobs driven to Done, {len(expected)} files of {args.size_mib:g} MiB uploaded and "
              f"registered in {time.monotonic() - started:.0f} s", flush=True)
        if len(expected) != total:
            raise SystemExit(f"expected {total} files, the lab has {len(expected)}")
        if args.wan:
            lab.wan(True)

        # 1. grid.py
        with Meter(lab) as grid_run:
            if not args.skip_grid:
                result = lab.run([lab.python, str(GRID), "watch", "--interval", "1"], cwd=batch,
                                 capture_output=True, text=True, timeout=3600)
                if result.returncode != 0:
                    raise SystemExit(f"grid watch failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                     f"{result.stderr[-3000:]}")
        if not args.skip_grid:
            jobs = json.loads(run_grid(lab, batch, "status", "--json").stdout)["jobs"]
            folder_of = {job["id"]: batch / job["output"] for job in jobs}
            check({lfn: folder_of[int(lfn.split("/")[-2])] / Path(lfn).name for lfn in lfns}, expected, "grid.py")

        # 2. serial DataManager().getFile loop, one process
        dm_dir = Path(tmp) / "datamanager"
        dm_dir.mkdir()
        with Meter(lab) as dm_run:
            dm = lab.run_python(DM_LOOP, json.dumps(lfns), dm_dir, timeout=3600)
        dm_result = json.loads([line for line in dm.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
        check({lfn: dm_dir / lfn.split("/")[-2] / Path(lfn).name for lfn in lfns}, expected, "DataManager loop")

        # 3. serial dirac-dms-get-file loop, one command per file
        sample = lfns[:min(args.cli_sample, len(lfns))]
        cli_dir = Path(tmp) / "cli"
        cli_dir.mkdir()
        with Meter(lab) as cli_run:
            for lfn in sample:
                folder = cli_dir / lfn.split("/")[-2]
                folder.mkdir(exist_ok=True)
                p = lab.run(["dirac-dms-get-file", lfn], cwd=folder, capture_output=True, text=True, timeout=600)
                if p.returncode != 0:
                    raise SystemExit(f"dirac-dms-get-file {lfn} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        check({lfn: cli_dir / lfn.split("/")[-2] / Path(lfn).name for lfn in sample}, {lfn: expected[lfn] for lfn in sample},
              "dirac-dms-get-file loop")
        if args.wan:
            lab.wan(False)
        shutil.rmtree(dm_dir)

    mb = total * size / 1e6
    rows = [("grid.py watch (sandboxes too)", total, grid_run.seconds, grid_run.client_cpu, ""),
            ("serial DataManager().getFile", total, dm_result["seconds"], dm_result["cpu"],
             f"   (+ {dm_result['startup']:.1f} s DIRAC start-up)"),
            ("serial dirac-dms-get-file", len(sample), cli_run.seconds, cli_run.client_cpu, "")]
    if args.skip_grid:
        rows.pop(0)
    print(f"\n{total} output data files of {args.size_mib:g} MiB ({mb:.0f} MB) from a real DIRAC StorageElement "
          f"(lab SE-1, DIP){', 50 ms round trip' if args.wan else ', loopback'}")
    print(f"{'how':32} {'files':>5} {'seconds':>8} {'per file':>9} {'MB/s':>6} {'client CPU':>11}")
    for how, files, seconds, cpu, note in rows:
        print(f"{how:32} {files:>5} {seconds:>8.1f} {seconds / files:>8.3f}s {files * size / 1e6 / seconds:>6.1f} "
              f"{cpu:>10.1f}s{note}")
    print()
    for how, meter in (("grid.py", grid_run), ("the DataManager loop", dm_run), ("the dirac-dms-get-file loop", cli_run)):
        if meter is not grid_run or not args.skip_grid:
            print(f"while {how} ran: {meter.describe()}")
    if not args.skip_grid:
        per_file = grid_run.seconds / total
        print(f"\nratio per file, serial DataManager loop / grid.py: {dm_result['seconds'] / total / per_file:.1f}x")
        print(f"ratio per file, dirac-dms-get-file loop / grid.py: {cli_run.seconds / len(sample) / per_file:.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=25, help="jobs (default 25)")
    parser.add_argument("--files", type=int, default=4, help="output data files per job (default 4)")
    parser.add_argument("--size-mib", type=float, default=3, help="size of each file, MiB (default 3)")
    parser.add_argument("--cli-sample", type=int, default=20,
                        help="files fetched by the dirac-dms-get-file loop (each command starts DIRAC; default 20)")
    parser.add_argument("--wan", action="store_true", help="50 ms round trip (lab.sh wan on) while downloading")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--skip-grid", action="store_true", help="measure the serial loops only")
    on_the_lab(parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())

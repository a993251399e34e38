#!/usr/bin/env python3
"""Submission speed against the lab's real DIRAC WMS at a 50 ms round trip, measured side by side.

    .venv/bin/python bench/submit.py [--jobs 200] [--serial 20] [--parallel 16,32,64]

Needs what the integration tests need (root, tests/lab/lab.sh; NS, DBPREFIX and LAB as there). It
brings the lab up if needed, switches the 50 ms round trip on and the JobAgent off (jobs stay
Waiting), and in one run measures:

- the serial loop users write today: Dirac().submitJob, one job after the other (on --serial jobs:
  at 0.8 s a job the whole --jobs would take minutes; it is reported per job);
- `grid.py submit --no-watch` of --jobs jobs at each --parallel, and with --bulk;
- --bulk call by call: how long a bundle's upload, submission and confirmation take;
- what the server takes at most: several plain client processes (Dirac().submitJob in threads);
- client CPU per submission and per 1000-job status sweep, with DIRAC's default client objects
  (a new one per call) and with grid.py's reused clients and prebuilt SSL context;
- the most calls a second a DISET service takes at this round trip (its threads over one call's
  time: a call holds a thread from the TLS handshake to the reply).

grid.py's rate is that of its submission phase (first job created to last job recorded), as the
serial loop's is per job after DIRAC's start-up; whole-command times are printed too. Each figure
comes with the server's CPU per job (services and optimizers, from their PID files, until they are
idle again; MariaDB is shared with other labs and not counted) and how busy the machine's CPUs were
meanwhile (every process: a saturated machine is the limit). Between two measurements it waits
until the lab's services and optimizers are idle. At the end the jobs it made are killed, the round
trip is switched off and the JobAgent restarted if it was running.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
LAB_SH = ROOT / "tests" / "lab" / "lab.sh"
GRID = ROOT / "grid.py"
VENV_PYTHON = Path(os.environ.get("VENV", ROOT / ".venv")) / "bin" / "python"
LAB = Path(os.environ.get("LAB", ROOT / "tests" / "lab" / ".lab"))
DROP = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "DIRACSYSCONFIG", "DIRAC_USE_TORNADO_IOLOOP",
        "X509_USER_CERT", "X509_USER_KEY")

JOB_FILE = """\
for i in range({n}):
    j = Job()
    j.setName(f"bench-{{i}}")
    j.setExecutable("echo", arguments=f"hello {{i}}")
    j.setInputSandbox(["small.txt"])
    j.setCPUTime(100)
    submit(j)
"""

# One client process of the serial loop or of the server's ceiling: DIRAC started, jobs made, then
# on "go" (stdin) THREADS threads submit them with Dirac().submitJob, as a user script would.
PLAIN_CLIENT = r"""
import json, os, resource, sys, threading, time
import DIRAC
DIRAC.initialize()
from DIRAC.Interfaces.API.Dirac import Dirac
from DIRAC.Interfaces.API.Job import Job
n, threads, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def job(i):
    j = Job()
    j.setName(f"{name}-{i}")
    j.setExecutable("echo", arguments=f"hello {i}")
    j.setInputSandbox(["small.txt"])
    j.setCPUTime(100)
    return j
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
assert Dirac().submitJob(job(-1))["OK"]              # warm: imports, configuration, proxy
print("ready", flush=True)
sys.stdin.readline()
ids, errors, lock, todo = [], [], threading.Lock(), list(range(n))
def work():
    while True:
        with lock:
            if not todo:
                return
            i = todo.pop()
        result = Dirac().submitJob(job(i))
        with lock:
            (ids.append(result["Value"]) if result["OK"] else errors.append(result["Message"]))
c0, t0 = cpu(), time.time()
pool = [threading.Thread(target=work) for _ in range(threads)]
[t.start() for t in pool]
[t.join() for t in pool]
print("RESULT " + json.dumps({"start": t0, "end": time.time(), "cpu": cpu() - c0, "ids": ids,
                              "errors": errors[:3]}), flush=True)
"""

# Client CPU of grid.py's dirac backend per call, in THREADS threads as grid.py runs them: with its
# reused clients and prebuilt SSL context ("reuse"), or with DIRAC's default client objects made for
# each call and getJobsSummary for status, as grid.py did before ("new").
CPU_CLIENT = r"""
import io, json, resource, sys, threading, time
sys.path.insert(0, sys.argv[1])
import grid
mode, n, threads, ids = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
specs = list(grid.load_job_files(["jobs.py"], "grid-bench-cpu"))[:n]
backend = grid.DiracBackend()
backend.connect()
backend.reuse_clients = mode == "reuse"
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
backend.submit(specs[0], "grid-bench-cpu.warm")
todo, lock, made = list(specs), threading.Lock(), []
def work():
    backend.submit(specs[0], "grid-bench-cpu.warm")  # each thread makes its clients before timing
    barrier.wait()
    while True:
        with lock:
            if not todo:
                return
            spec = todo.pop()
        made.append(backend.submit(spec, "grid-bench-cpu.x"))
barrier = threading.Barrier(threads + 1)
pool = [threading.Thread(target=work) for _ in range(threads)]
[t.start() for t in pool]
barrier.wait()
c0 = cpu()
[t.join() for t in pool]
submit_cpu = (cpu() - c0) / n
if mode == "new":
    from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient
    sweep = lambda: JobMonitoringClient().getJobsSummary(ids)
else:
    sweep = lambda: backend.status(ids)
c0 = cpu()
sweep()                                          # grid.py's first sweep also asks every job's site
first_cpu = cpu() - c0
c0 = cpu()
for _ in range(3):
    sweep()
sweep_cpu = (cpu() - c0) / 3
# One DISET call holds one of the service's threads (MaxThreads, 15 by default) from the TLS
# handshake to the reply: with the wall time of one small call, the most calls a second it serves.
from DIRAC import gConfig
from DIRAC.ConfigurationSystem.Client.PathFinder import getServiceSection
threads = gConfig.getValue(getServiceSection(grid.JOB_MANAGER) + "/MaxThreads", 15)
start = time.time()
for _ in range(5):
    backend._clients().monitoring.getJobsStates(ids[:1])
print("RESULT " + json.dumps({"submit": submit_cpu, "first": first_cpu, "sweep": sweep_cpu,
                              "sweep_ids": len(ids), "ids": made, "call": (time.time() - start) / 5,
                              "threads": threads}), flush=True)
"""

# Where the time of --bulk goes: the jobs as bundles of SIZE (0: the server's limit), all at once,
# through grid.py's dirac backend, timing each of the three calls a bundle makes, and how busy the
# JobManager process (PID) was while the submissions ran (one process: one core at most, Python's GIL).
BUNDLE_CLIENT = r"""
import json, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import grid
specs = list(grid.load_job_files(["jobs.py"], "grid-bench-bundle"))
backend = grid.DiracBackend()
backend.connect()
limit = int(sys.argv[2]) or backend.bundle_limit()
steps, spans, ids, samples, done = {}, [], [], [], threading.Event()
def process_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
def machine():
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return values[0] + values[1] + values[2] + values[5] + values[6], values[4], sum(values)
def sample():
    while not done.is_set():
        samples.append((time.time(), process_cpu(sys.argv[3]), process_cpu(sys.argv[4]), *machine()))
        time.sleep(0.05)
def timed(obj, name):
    call = getattr(obj, name)
    def wrapper(*args, **kw):
        start = time.time()
        try:
            return call(*args, **kw)
        finally:
            steps.setdefault(name, []).append(time.time() - start)
            if name == "submitJob":
                spans.append((start, time.time()))
    setattr(obj, name, wrapper)
def bundle(k, part):
    clients = backend._clients()
    timed(clients.sandbox, "uploadFilesAsSandbox")
    timed(clients.job_manager, "submitJob")
    timed(clients.job_manager, "confirmBulkSubmission")
    barrier.wait()
    ids.extend(backend.submit_bundle(part, [f"grid-bench-bundle.{k}.{i}" for i in range(len(part))]))
parts = grid.split_evenly(specs, limit)
barrier = threading.Barrier(len(parts) + 1)
threads = [threading.Thread(target=bundle, args=(k, part)) for k, part in enumerate(parts)]
[t.start() for t in threads]
sampler = threading.Thread(target=sample)
sampler.start()
barrier.wait()
start = time.time()
[t.join() for t in threads]
seconds = time.time() - start
done.set()
sampler.join()
first, last = min(s for s, _ in spans), max(e for _, e in spans)
inside = [s for s in samples if first <= s[0] <= last]
a, b = (inside[0], inside[-1]) if len(inside) > 1 else (samples[0], samples[-1])
window, total = b[0] - a[0], max(1, b[5] - a[5])
print("RESULT " + json.dumps({"seconds": seconds, "limit": limit, "bundles": len(parts), "steps": steps,
                              "job_manager_busy": (b[1] - a[1]) / window, "mariadb_busy": (b[2] - a[2]) / window,
                              "machine_busy": (b[3] - a[3]) / total, "iowait": (b[4] - a[4]) / total,
                              "ids": ids}), flush=True)
"""


def lab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(LAB_SH), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        sys.exit(f"lab.sh {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def client_env() -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    for line in lab("env").stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value.replace("$PATH", os.environ.get("PATH", "/usr/bin:/bin")).strip("'\"")
    return env, env["GRID_LAB_NS"]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.env, self.ns = client_env()
        self.ids: list[int] = []

    def netns(self, argv: list) -> list:
        return ["ip", "netns", "exec", self.ns, "env", *map(str, argv)]

    def run(self, argv: list, cwd: Path, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, float, float]:
        """Run a client in the lab's namespace: its result, wall seconds and CPU seconds."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        result = subprocess.run(self.netns(argv), cwd=cwd, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        wall = time.time() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if result.returncode != 0:
            sys.exit(f"{' '.join(map(str, argv))} failed ({result.returncode}):\n"
                     f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return result, wall, cpu

    def folder(self, name: str, jobs: int) -> Path:
        folder = self.work / name
        folder.mkdir()
        (folder / "small.txt").write_text("small input sandbox\n")
        (folder / "jobs.py").write_text(JOB_FILE.format(n=jobs))
        return folder

    # -- measurements -----------------------------------------------------------------------------

    def plain_clients(self, name: str, processes: int, threads: int, jobs: int) -> dict:
        """Dirac().submitJob from `processes` processes of `threads` threads, started together."""
        folder = self.folder(name, 0)
        share = [jobs // processes + (1 if i < jobs % processes else 0) for i in range(processes)]
        procs = [subprocess.Popen(self.netns([VENV_PYTHON, "-c", PLAIN_CLIENT, n, threads, f"{name}{i}"]),
                                  cwd=folder, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i, n in enumerate(share)]
        for proc in procs:
            lines = []                            # DIRAC logs to stdout too
            while not lines or lines[-1].strip() not in ("ready", ""):
                lines.append(proc.stdout.readline())
            if lines[-1].strip() != "ready":
                for other in procs:
                    other.kill()
                sys.exit(f"client did not start: {''.join(lines)[-2000:]}{proc.stderr.read()[-3000:]}")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=1800)
            lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
            if not lines:
                sys.exit(f"client failed:\n{out[-2000:]}{err[-3000:]}")
            results.append(json.loads(lines[-1][7:]))
        ids = [i for r in results for i in r["ids"]]
        errors = [e for r in results for e in r["errors"]]
        if len(ids) != jobs:
            sys.exit(f"{name}: {jobs - len(ids)} submission(s) failed: {errors}")
        self.ids += ids
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        return {"jobs": jobs, "seconds": span, "cpu": sum(r["cpu"] for r in results)}

    def grid_submit(self, name: str, jobs: int, *options: str) -> dict:
        folder = self.folder(name, jobs)
        result, wall, cpu = self.run([VENV_PYTHON, GRID, "submit", "--no-watch", *options, "jobs.py"], folder)
        status = json.loads(subprocess.run([VENV_PYTHON, GRID, "status", "--json"], cwd=folder,
                                           capture_output=True, text=True, check=True).stdout)
        ids = [job["id"] for job in status["jobs"]]
        if None in ids or len(set(ids)) != jobs:
            sys.exit(f"{name}: not every job was submitted once:\n{result.stdout[-3000:]}")
        self.ids += ids
        created = min(job["history"][0][1] for job in status["jobs"])
        recorded = max(job["history"][-1][1] for job in status["jobs"])
        return {"jobs": jobs, "seconds": recorded - created, "wall": wall, "cpu": cpu}

    def bundle_steps(self, jobs: int, size: int) -> dict:
        folder = self.folder(f"bundle-steps-{size}", jobs)
        job_manager = (LAB / "run" / "JobManager.pid").read_text().split()[0]
        mariadb = Path("/run/mysqld/mysqld.pid").read_text().split()[0]
        result, _, _ = self.run([VENV_PYTHON, "-c", BUNDLE_CLIENT, ROOT, size, job_manager, mariadb], folder)
        data = json.loads([l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
        data["jobs"] = len(data["ids"])
        self.ids += data.pop("ids")
        return data

    def client_cpu(self, mode: str, calls: int) -> dict:
        folder = self.folder(f"cpu-{mode}", calls)
        sweep = self.ids[-1000:]
        result, _, _ = self.run([VENV_PYTHON, "-c", CPU_CLIENT, ROOT, mode, calls, 8, json.dumps(sweep)], folder)
        data = json.loads([l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
        self.ids += data.pop("ids")
        return data

    # -- the lab ----------------------------------------------------------------------------------

    def server_cpu(self) -> float:
        """CPU seconds used so far by the lab's services and optimizers (from their PID files)."""
        total = 0.0
        for pid_file in (LAB / "run").glob("*.pid"):
            if pid_file.stem in ("jobagent", "nfq_delay"):
                continue
            try:
                pid = pid_file.read_text().split()[0]
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                continue
        return total

    def wait_idle(self, most: float = 180.0) -> None:
        """Until the server has finished with the jobs of the last measurement (optimizers included)."""
        end = time.time() + most
        last = self.server_cpu()
        quiet = 0
        while time.time() < end and quiet < 2:
            time.sleep(1.0)
            now = self.server_cpu()
            quiet = quiet + 1 if now - last < 0.05 else 0
            last = now


def machine_cpu() -> list[int]:
    """The machine's CPU counters (/proc/stat): user, nice, system, idle, iowait, ..."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def busy_since(before: list[int]) -> float:
    """Share of the machine's CPU time (every core, every process) that was busy since `before`."""
    delta = [a - b for a, b in zip(machine_cpu(), before)]
    return 1 - (delta[3] + delta[4]) / max(1, sum(delta))


def default_parallel() -> int:
    return int(re.search(r"^DEFAULT_PARALLEL = (\d+)", GRID.read_text(), re.MULTILINE).group(1))


def per_job_ms(m: dict) -> float:
    return m["seconds"] / m["jobs"] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per grid.py run (default 200)")
    parser.add_argument("--serial", type=int, default=20, help="jobs of the serial loop (default 20)")
    parser.add_argument("--parallel", default="16,32,64,128", help="grid.py --parallel values to measure "
                        "(the default one is always measured)")
    parser.add_argument("--bundle-sizes", default="0,25", help="bundle sizes of the call-by-call --bulk "
                        "measurement, 0 for the server's limit (default 0,25)")
    parser.add_argument("--ceiling", default="4x8,4x16", help="plain clients, PROCESSESxTHREADS, to find "
                        "the server's most (default 4x8,4x16)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/submit.py needs root, as the lab does (tests/lab/README.md)")
    print("lab: up, 50 ms round trip on, JobAgent off", flush=True)
    lab("up")
    jobagent_was_on = lab("jobagent", "status", check=False).returncode == 0
    lab("jobagent", "stop")
    lab("wan", "on")
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="grid-bench-") as tmp:
            bench = Bench(args, Path(tmp))
            rows = measure(bench, args)
    finally:
        print("lab: killing the Waiting jobs, 50 ms round trip off", flush=True)
        lab("kill-waiting", check=False)
        lab("wan", "off", check=False)
        if jobagent_was_on:
            lab("jobagent", "start", check=False)
    print()
    width = max(len(r[0]) for r in rows)
    for what, measured, ratio in rows:
        print(f"{what:<{width}}  {measured:<34}  {ratio}")
    return 0


def measure(bench: Bench, args: argparse.Namespace) -> list:
    rows = []

    def row(what: str, measured: str, ratio: str) -> None:
        rows.append((what, measured, ratio))
        print(f"  {what}: {measured}  {ratio}", flush=True)

    def timed(title: str, measurement: Callable) -> dict:
        """Run one measurement; add the server's CPU for its jobs (until the server is idle again)."""
        print(title, flush=True)
        before, busy = bench.server_cpu(), machine_cpu()
        result = measurement()
        result["busy"] = busy_since(busy)
        bench.wait_idle()
        result["server"] = (bench.server_cpu() - before) / result.get("jobs", 1) * 1000
        return result

    bench.wait_idle()
    serial = timed(f"serial loop: Dirac().submitJob, {args.serial} jobs one after the other",
                   lambda: bench.plain_clients("serial", 1, 1, args.serial))
    base = per_job_ms(serial)
    row(f"serial Dirac().submitJob loop ({args.serial} jobs)",
        f"{base:.0f} ms/job, {1000 / base:.2f} jobs/s; server CPU {serial['server']:.0f} ms/job; "
        f"machine busy {serial['busy']:.0%}", "1x")

    runs, default = {}, default_parallel()
    for parallel in sorted({int(p) for p in args.parallel.split(",") if p} | {default}):
        m = runs[parallel] = timed(f"grid.py submit --parallel {parallel}, {args.jobs} jobs",
                                   lambda: bench.grid_submit(f"grid{parallel}", args.jobs, "--parallel", str(parallel)))
        ms = per_job_ms(m)
        row(f"grid.py submit --parallel {parallel}{' (default)' if parallel == default else ''} ({m['jobs']} jobs)",
            f"{ms:.1f} ms/job, {1000 / ms:.1f} jobs/s, whole command {m['wall']:.1f} s; "
            f"server CPU {m['server']:.0f} ms/job; machine busy {m['busy']:.0%}", f"{base / ms:.1f}x serial (goal 25x)")

    bulk = timed(f"grid.py submit --bulk, {args.jobs} jobs", lambda: bench.grid_submit("bulk", args.jobs, "--bulk"))
    ms = per_job_ms(bulk)
    row(f"grid.py submit --bulk ({bulk['jobs']} jobs)",
        f"{ms:.1f} ms/job, {1000 / ms:.0f} jobs/s, whole command {bulk['wall']:.1f} s; "
        f"server CPU {bulk['server']:.0f} ms/job; machine busy {bulk['busy']:.0%}", f"{base / ms:.0f}x serial (goal 100x)")
    for size in [int(z) for z in args.bundle_sizes.split(",") if z]:
        steps = timed(f"--bulk, call by call: {args.jobs} jobs in bundles of "
                      f"{size or 'the server limit'}, all at once", lambda: bench.bundle_steps(args.jobs, size))
        mean = {name: sum(times) / len(times) for name, times in steps["steps"].items()}
        row(f"--bulk call by call ({steps['bundles']} bundles of <= {steps['limit']} at once)",
            f"{steps['seconds']:.2f} s: upload {mean.get('uploadFilesAsSandbox', 0):.2f} s, submission "
            f"{mean.get('submitJob', 0):.2f} s, confirmation {mean.get('confirmBulkSubmission', 0):.2f} s "
            f"(means); while they submit: JobManager {steps['job_manager_busy']:.0%} of a core, "
            f"MariaDB {steps['mariadb_busy']:.0%} of a core, machine {steps['machine_busy']:.0%} busy and "
            f"{steps['iowait']:.0%} waiting for the disk; server CPU {steps['server']:.0f} ms/job", "")

    ceiling = {}
    for shape in [s for s in args.ceiling.split(",") if s]:
        processes, threads = map(int, shape.split("x"))
        m = ceiling[shape] = timed(f"server's most: {processes} processes x {threads} threads of "
                                   f"Dirac().submitJob, {args.jobs} jobs",
                                   lambda: bench.plain_clients(f"ceiling{shape}", processes, threads, args.jobs))
        ms = per_job_ms(m)
        row(f"server's most: plain clients, {shape} ({m['jobs']} jobs)",
            f"{ms:.1f} ms/job, {1000 / ms:.1f} jobs/s; server CPU {m['server']:.0f} ms/job; "
            f"machine busy {m['busy']:.0%}", f"{base / ms:.1f}x serial")
    if ceiling:
        best = min(ceiling, key=lambda s: per_job_ms(ceiling[s]))
        top = per_job_ms(ceiling[best])
        for parallel, m in runs.items():
            row(f"grid.py --parallel {parallel} / server's most ({best})", "",
                f"{top / per_job_ms(m):.2f} (goal 0.80)")

    small_jobs = max(20, args.jobs // 10)
    small = timed(f"grid.py submit, {small_jobs} jobs, for its start-up CPU",
                  lambda: bench.grid_submit("small", small_jobs))
    big = runs[default]
    if big["jobs"] > small["jobs"]:
        per_job = (big["cpu"] - small["cpu"]) / (big["jobs"] - small["jobs"]) * 1000
        row("client CPU per submission, grid.py process", f"{per_job:.1f} ms (start-up "
            f"{small['cpu'] - per_job * small['jobs'] / 1000:.1f} s)",
            f"runs of {big['jobs']} and {small['jobs']} jobs")
    row("client CPU per submission, Dirac().submitJob", f"{serial['cpu'] / serial['jobs'] * 1000:.1f} ms", "serial loop")
    cpu = {mode: timed(f"client CPU per call ({mode} clients)", lambda: bench.client_cpu(mode, 40))
           for mode in ("new", "reuse")}
    new, reuse = cpu["new"], cpu["reuse"]
    row("client CPU per submission call, before / now",
        f"{new['submit'] * 1000:.1f} / {reuse['submit'] * 1000:.1f} ms", f"{new['submit'] / reuse['submit']:.1f}x less")
    bound = reuse["threads"] / reuse["call"]
    ms = per_job_ms(runs[default])
    row("a DISET service's most at this round trip: its threads / one call's time",
        f"{reuse['threads']} threads / {reuse['call'] * 1000:.0f} ms = {bound:.0f} calls/s (a submission is "
        f"one SandboxStore and one JobManager call)", f"grid.py --parallel {default}: {1000 / ms:.1f} jobs/s, "
        f"{1000 / ms / bound:.0%} of it")
    scale = 1000 / max(1, reuse["sweep_ids"])
    row(f"client CPU per 1000-job status sweep, before / now ({reuse['sweep_ids']} ids)",
        f"{new['sweep'] * scale * 1000:.1f} / {reuse['sweep'] * scale * 1000:.1f} ms "
        f"(first sweep {reuse['first'] * scale * 1000:.1f})", f"{new['sweep'] / reuse['sweep']:.1f}x less")
    return rows


if __name__ == "__main__":
    sys.exit(main())

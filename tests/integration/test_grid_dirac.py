"""grid.py against a real DIRAC WMS on loopback: the dirac backend, end to end."""
import re
import sys
from pathlib import Path

import pytest

from helpers import EXAMPLES, GRID, lab_grid as grid, lab_status as status, write

pytestmark = pytest.mark.integration


def server_statuses(lab, ids: list) -> dict:
    """What DIRAC's own command line says: {id: status}."""
    out = lab.run([str(Path(sys.executable).parent / "dirac-wms-job-status"), *map(str, ids)],
                  capture_output=True, text=True, timeout=120).stdout
    statuses = {}
    for line in out.splitlines():
        job_id, status = re.search(r"JobID=(\d+)", line), re.search(r"(?<![A-Za-z])Status=(\w+);", line)
        if job_id and status:
            statuses[int(job_id.group(1))] = status.group(1)
    return statuses


def test_examples_go_to_done_and_failed_through_the_real_jobagent(dirac_lab, tmp_path):
    dirac_lab.jobagent(True)
    batch = tmp_path / "batch"
    batch.mkdir()
    result = grid(dirac_lab, batch, "submit", "--interval", "1", EXAMPLES / "hello.py", EXAMPLES / "fail.py")
    assert result.returncode == 6, result.stdout + result.stderr           # one job fails on purpose
    assert "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD:   1\tF:   1" in result.stdout.splitlines()
    assert "Waiting → Running" in result.stdout or "Matched → Running" in result.stdout
    # On the grid a step's output is in its application log; std.out is the job wrapper's log.
    assert "Hello World" in (batch / "succeeded/00001_Test_job/Script1_CodeOutput.log").read_text()
    failed = (batch / "failed/00002_fails-on-purpose").iterdir()
    assert any("about to fail" in f.read_text(errors="replace") for f in failed)
    data = status(dirac_lab, batch)
    ids = [job["id"] for job in data["jobs"]]
    assert server_statuses(dirac_lab, ids) == {ids[0]: "Done", ids[1]: "Failed"}
    assert [job["status"] for job in data["jobs"]] == ["Done", "Failed"]
    assert data["jobs"][0]["site"] and data["jobs"][0]["site"] != "ANY"


def test_hundreds_of_jobs_submitted_once_each_and_every_output_downloaded(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)
    batch = tmp_path / "batch"
    batch.mkdir()
    write(batch / "jobs.py", "for i in range(200):\n    j = Job()\n    j.setName(f'n{i}')\n"
          "    j.setExecutable('echo', arguments=str(i))\n    submit(j)\n")
    result = grid(dirac_lab, batch, "submit", "--no-watch", "--parallel", "16", "jobs.py")
    assert result.returncode == 0, result.stderr
    data = status(dirac_lab, batch)
    ids = [job["id"] for job in data["jobs"]]
    assert len(set(ids)) == 200 and None not in ids
    dirac_lab.drive(ids[:150], status="Done")
    dirac_lab.drive(ids[150:], status="Failed")
    result = grid(dirac_lab, batch, "watch", "--interval", "1")
    assert result.returncode == 6, result.stdout[-2000:] + result.stderr    # 50 failed: not all Done
    data = status(dirac_lab, batch)
    assert data["summary"]["Done"] == 150 and data["summary"]["Failed"] == 50
    assert len(list((batch / "succeeded").iterdir())) == 150
    assert len(list((batch / "failed").iterdir())) == 50
    for job in data["jobs"][:3] + data["jobs"][-3:]:
        text = (batch / job["output"] / "std.out").read_text()
        assert str(job["id"]) in text
    server = server_statuses(dirac_lab, ids)
    assert all(server[job["id"]] == job["status"] for job in data["jobs"])


OVERLAP = r"""
import io, sys, time, threading
from pathlib import Path
sys.path.insert(0, {root!r})
import gevent, grid
batch = Path({batch!r})
specs = grid.load_job_files([{jobfile!r}], "grid-overlap")
store = grid.Store.open(batch, "submit", create=True)
jobs = [grid.Job(num=i, name=s.name) for i, s in enumerate(specs, 1)]
store.create_batch({{"tag": "grid-overlap", "backend": "dirac"}}, jobs, specs)
backend = grid.DiracBackend()
backend.connect()
spans, lock = [], threading.Lock()
real_submit = backend.submit
def timed_submit(spec, tag):
    start = time.monotonic()
    try:
        return real_submit(spec, tag)
    finally:
        with lock:
            spans.append((start, time.monotonic()))
backend.submit = timed_submit
engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch, parallel=8)
ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.01)
t = gevent.spawn(ticker)
start = time.monotonic()
engine.run(watch=False)
elapsed = time.monotonic() - start
t.kill()
events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
depth = peak = 0
for _, d in events:
    depth += d
    peak = max(peak, depth)
serial = sum(e - s for s, e in spans)
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
print("RESULT", peak, round(serial, 3), round(elapsed, 3), round(max(gaps), 3), len(spans))
"""


def test_dirac_calls_issued_by_the_tool_really_overlap(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)
    batch = tmp_path / "batch"
    batch.mkdir()
    write(batch / "jobs.py", "for i in range(32):\n    j = Job()\n    j.setExecutable('true')\n    submit(j)\n")
    code = OVERLAP.format(root=str(GRID.parent), batch=str(batch), jobfile=str(batch / "jobs.py"))
    result = dirac_lab.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT")][-1]
    peak, serial, elapsed, max_gap, calls = line.split()[1:]
    print(line)
    assert int(calls) == 32
    assert int(peak) >= 4                       # several submissions in flight at the same moment
    assert float(elapsed) < float(serial) / 2   # and the batch took well under the sum of its calls
    assert float(max_gap) < 0.5                 # the gevent loop kept ticking meanwhile


def test_bulk_submission_makes_one_tracked_job_per_local_job(dirac_lab, tmp_path):
    """submit --bulk: parametric bundles on the real server; each job recorded, run and downloaded on its own."""
    dirac_lab.jobagent(False)
    batch = tmp_path / "batch"
    batch.mkdir()
    write(batch / "data.txt", "shared input\n")
    write(batch / "show.sh", "#!/bin/sh\necho hello $1\ncat data.txt\n")
    write(batch / "jobs.py", "for i in range(30):\n    j = Job()\n    j.setName(f'bulk-{i}')\n"
          "    j.setExecutable('show.sh', arguments=str(i))\n"
          "    j.setInputSandbox(['data.txt'])\n    submit(j)\n")
    result = grid(dirac_lab, batch, "submit", "--bulk", "--no-watch", "jobs.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bulk: 30 job(s) in 1 bundle(s)" in result.stdout
    data = status(dirac_lab, batch)
    ids = [job["id"] for job in data["jobs"]]
    assert None not in ids and len(set(ids)) == 30
    assert set(server_statuses(dirac_lab, ids).values()) <= {"Received", "Checking", "Waiting"}
    # Most jobs are driven to Done; the JobAgent really runs the last three, each its own workflow.
    dirac_lab.drive(ids[:27], status="Done")
    dirac_lab.jobagent(True)
    result = grid(dirac_lab, batch, "watch", "--interval", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    data = status(dirac_lab, batch)
    assert data["summary"]["Done"] == 30
    outputs = [batch / job["output"] for job in data["jobs"]]
    assert len(set(outputs)) == 30 and all(folder.is_dir() for folder in outputs)
    for job in data["jobs"][:27:9]:
        assert str(job["id"]) in (batch / job["output"] / "std.out").read_text()
    for i, job in list(enumerate(data["jobs"]))[27:]:
        log = (batch / job["output"] / "Script1_show.sh.log").read_text()
        assert f"hello {i}\n" in log and "shared input" in log

"""Failure triage against a real DIRAC WMS: `why` shows DIRAC's logging info, `logs` downloads."""
import json
import time
from pathlib import Path

import pytest

from helpers import EXAMPLES, lab_grid as grid, write

pytestmark = pytest.mark.integration


def job_ids(lab, batch: Path) -> list:
    result = grid(lab, batch, "status", "--json")
    assert result.returncode == 0, result.stderr
    return [job["id"] for job in json.loads(result.stdout)["jobs"]]


def wait_on_server(lab, job_id: int, status: str, timeout: float = 180) -> None:
    """Until DIRAC itself says the job has this status (asked without grid.py)."""
    code = ("import sys, DIRAC\nDIRAC.initialize()\n"
            "from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient\n"
            "r = JobMonitoringClient().getJobsStatus([int(sys.argv[1])])\n"
            "print(r['Value'][int(sys.argv[1])]['Status'] if r['OK'] else r['Message'])\n")
    deadline = time.monotonic() + timeout
    while True:
        now = lab.run_python(code, job_id).stdout.strip()
        if now == status:
            return
        assert time.monotonic() < deadline, f"job {job_id} is still {now} on the server"
        time.sleep(2)


def test_why_shows_diracs_logging_info_of_a_job_driven_to_failed(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)
    batch = tmp_path / "batch"
    batch.mkdir()
    write(batch / "jobs.py", "j = Job()\nj.setName('doomed')\nj.setExecutable('true')\nsubmit(j)\n")
    assert grid(dirac_lab, batch, "submit", "--no-watch", "jobs.py").returncode == 0
    [job_id] = job_ids(dirac_lab, batch)
    dirac_lab.drive([job_id], status="Failed")
    watched = grid(dirac_lab, batch, "watch", "--interval", "1")
    assert watched.returncode == 6, watched.stdout + watched.stderr

    result = grid(dirac_lab, batch, "why", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "  status:      Failed since " in out and "  site:        DIRAC.Lab.local\n" in out
    assert f"  DIRAC id:    {job_id}\n" in out
    logging = out.split(f"DIRAC logging info (job {job_id}):\n", 1)[1].splitlines()
    assert logging[0].split()[2:5] == ["Received", "Job", "accepted"] and logging[0].endswith("JobManager")
    assert logging[-1].split()[2] == "Failed" and "Application Finished With Errors" in logging[-1]
    assert logging[-1].endswith("drive.py")                   # the source DIRAC recorded
    offline = grid(dirac_lab, batch, "why", "1", "--offline")
    assert offline.returncode == 0 and "logging info" not in offline.stdout

    failures = json.loads(grid(dirac_lab, batch, "failures", "--json").stdout)
    [group] = failures["groups"]
    assert group["jobs"] == [1] and group["sites"] == {"DIRAC.Lab.local": 1}
    assert group["reason"].startswith("Failed: Application Finished With Errors / ")


def test_logs_downloads_and_prints_the_stdout_of_a_done_job(dirac_lab, tmp_path):
    dirac_lab.jobagent(True)
    batch = tmp_path / "batch"
    batch.mkdir()
    assert grid(dirac_lab, batch, "submit", "--no-watch", EXAMPLES / "hello.py").returncode == 0
    [job_id] = job_ids(dirac_lab, batch)
    wait_on_server(dirac_lab, job_id, "Done")              # run by the lab's JobAgent; grid.py not watching

    result = grid(dirac_lab, batch, "logs", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello World" in result.stdout
    assert "#1 Test job: Done on the server (was Received here)" in result.stderr
    assert "output downloaded into succeeded/00001_Test_job/" in result.stderr
    assert (batch / "succeeded" / "00001_Test_job" / "Script1_CodeOutput.log").is_file()
    data = json.loads(grid(dirac_lab, batch, "status", "--json").stdout)
    assert data["jobs"][0]["status"] == "Done" and data["jobs"][0]["output"] == "succeeded/00001_Test_job"
    wrapper = grid(dirac_lab, batch, "logs", "1", "--file", "std.out")    # the job wrapper's log
    assert wrapper.returncode == 0 and "dirac-jobexec" in wrapper.stdout

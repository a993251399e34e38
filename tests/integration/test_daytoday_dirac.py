"""kill, reschedule and resubmit against a real DIRAC WMS on loopback."""
import json
from pathlib import Path

from helpers import lab_grid as grid, write


def jobs(lab, batch: Path) -> list:
    result = grid(lab, batch, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["jobs"]


def server_status(lab, job_id: int) -> str:
    """What the server itself says, asked without grid.py."""
    code = ("import sys, DIRAC; DIRAC.initialize()\n"
            "from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient\n"
            "r = JobMonitoringClient().getJobsStatus([int(sys.argv[1])])\n"
            "print(r['Value'][int(sys.argv[1])]['Status'])")
    return lab.run_python(code, job_id).stdout.strip().splitlines()[-1]


def new_batch(tmp_path: Path, count: int) -> Path:
    batch = tmp_path / "batch"
    batch.mkdir()
    write(batch / "jobs.py", f"for i in range({count}):\n    j = Job()\n    j.setName(f'j{{i}}')\n"
          "    j.setExecutable('echo', arguments=str(i))\n    submit(j)\n")
    return batch


def test_kill_all_kills_on_the_server_and_records_it(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)                                  # jobs stay Waiting
    batch = new_batch(tmp_path, 3)
    assert grid(dirac_lab, batch, "submit", "--no-watch", "jobs.py").returncode == 0
    refused = grid(dirac_lab, batch, "kill", "--all")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    result = grid(dirac_lab, batch, "kill", "--all", "--yes")
    assert result.returncode == 0, result.stderr
    recorded = jobs(dirac_lab, batch)
    assert [j["status"] for j in recorded] == ["Killed"] * 3
    assert {server_status(dirac_lab, j["id"]) for j in recorded} == {"Killed"}


def test_resubmit_a_failed_job_makes_a_new_dirac_job_with_lineage(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)
    batch = new_batch(tmp_path, 2)
    assert grid(dirac_lab, batch, "submit", "--no-watch", "jobs.py").returncode == 0
    first = jobs(dirac_lab, batch)
    dirac_lab.drive([first[0]["id"]], status="Done")
    dirac_lab.drive([first[1]["id"]], status="Failed")
    assert grid(dirac_lab, batch, "watch", "--interval", "1").returncode == 6
    result = grid(dirac_lab, batch, "resubmit", "--all", "--no-watch")
    assert result.returncode == 0, result.stdout + result.stderr
    second = jobs(dirac_lab, batch)[1]
    assert second["attempts"] == 2 and second["ids"][0] == first[1]["id"] != second["id"]
    dirac_lab.drive([second["id"]], status="Done")
    assert grid(dirac_lab, batch, "watch", "--interval", "1").returncode == 0
    final = jobs(dirac_lab, batch)[1]
    assert final["status"] == "Done" and final["past"][0]["status"] == "Failed"
    assert server_status(dirac_lab, first[1]["id"]) == "Failed"          # the old job is left as it was
    assert server_status(dirac_lab, final["id"]) == "Done"
    assert (batch / "retried" / "00002_j1.1" / "std.out").is_file()
    assert (batch / "succeeded" / "00002_j1" / "std.out").is_file()


def test_reschedule_sends_the_same_dirac_job_back_to_the_queue(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)
    batch = new_batch(tmp_path, 1)
    assert grid(dirac_lab, batch, "submit", "--no-watch", "jobs.py").returncode == 0
    job_id = jobs(dirac_lab, batch)[0]["id"]
    dirac_lab.drive([job_id], status="Failed")
    assert grid(dirac_lab, batch, "watch", "--interval", "1").returncode == 6
    assert (batch / "failed" / "00001_j0").is_dir()
    result = grid(dirac_lab, batch, "reschedule", "1", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    job = jobs(dirac_lab, batch)[0]
    assert job["id"] == job_id and job["ids"] == [job_id] and job["past"][0]["status"] == "Failed"
    assert job["status"] in ("Received", "Checking", "Waiting", "Rescheduled")
    # DIRAC holds a rescheduled job for a minute (JobScheduling's RescheduleDelays) before it can run
    assert server_status(dirac_lab, job_id) in ("Received", "Checking", "Waiting", "Rescheduled")
    assert (batch / "retried" / "00001_j0.1").is_dir() and not (batch / "failed" / "00001_j0").exists()
    assert grid(dirac_lab, batch, "kill", "1", "--yes").returncode == 0

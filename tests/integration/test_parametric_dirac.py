"""Parametric jobs against a real DIRAC WMS: every job the server makes is a job grid.py follows."""
import json

import pytest

from helpers import lab_grid as grid, lab_status as status, parametric_job_file, write

pytestmark = pytest.mark.integration

JOBS = parametric_job_file("value %(args)s")


def server_jobs(lab, tag: str) -> dict:
    """The server's own view of the batch: {id: JobName} of every job whose JDL carries its tag."""
    code = ("import sys, json, DIRAC; DIRAC.initialize()\n"
            "from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient\n"
            "m = JobMonitoringClient(); found = {}\n"
            "for i in m.getJobs({})['Value']:\n"
            "    if f'\"{sys.argv[1]}.' in m.getJobJDL(int(i), True)['Value']:\n"
            "        summary = m.getJobsSummary([int(i)])['Value']\n"
            "        found[i] = (summary.get(int(i)) or summary[str(i)])['JobName']\n"
            "print(json.dumps(found))")
    return {int(k): v for k, v in json.loads(lab.run_python(code, tag).stdout.splitlines()[-1]).items()}


def test_three_parametric_jobs_are_three_followed_jobs_in_parameter_order_and_resubmit_alone(dirac_lab, tmp_path):
    dirac_lab.jobagent(True)
    batch = tmp_path / "batch"
    batch.mkdir()
    write(batch / "jobs.py", JOBS)
    result = grid(dirac_lab, batch, "submit", "--interval", "1", "jobs.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "parametric: 3 job(s) in 1 bundle(s)" in result.stdout
    jobs = status(dirac_lab, batch)["jobs"]
    ids = [job["id"] for job in jobs]
    assert [job["name"] for job in jobs] == ["p-1", "p-2", "p-3"]
    assert ids == sorted(ids) and len(set(ids)) == 3            # the server made them in parameter order
    for n, job in enumerate(jobs, 1):
        assert job["status"] == "Done" and job["output"] == f"succeeded/0000{n}_p-{n}"
        assert f"value {n}" in (batch / job["output"] / "Script1_CodeOutput.log").read_text()
    tag = status(dirac_lab, batch)["tag"]
    assert server_jobs(dirac_lab, tag) == {ids[0]: "p-1", ids[1]: "p-2", ids[2]: "p-3"}

    result = grid(dirac_lab, batch, "resubmit", "--force", "--interval", "1", "2")   # #2 is Done
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    after = status(dirac_lab, batch)["jobs"]
    assert [job["ids"] for job in after] == [[ids[0]], [ids[1], after[1]["id"]], [ids[2]]]
    assert "value 2" in (batch / after[1]["output"] / "Script1_CodeOutput.log").read_text()
    on_server = server_jobs(dirac_lab, tag)
    assert len(on_server) == 4 and on_server[after[1]["id"]] == "p-2"      # one new job, not three

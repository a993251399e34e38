"""Conformance: the job files of jobs/ run through the local backend and through DIRAC's real JobAgent
(tests/lab), and every job must end the same way on both: final status, minor and application status,
exit code, and the payload files of its output folder, byte for byte.

The job wrapper's own logs are not compared: on the grid `std.out` and `std.err` are what DIRAC's job
wrapper (dirac-jobexec) printed, locally they hold what the steps printed. Each difference that is left
on purpose is in KNOWN with its reason, as in the README's "Local and grid" section; a job the local
backend does not run as the grid does yet is in PENDING, and must still differ.

One batch per backend holds every job file (9 jobs: the lab's single JobAgent runs one job at a time).
"""
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import GRID

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
JOB_FILES = sorted((HERE / "jobs").glob("*.py"))
WRAPPER_LOGS = {"std.out", "std.err"}

# What a user must see on both backends (so that two identical mistakes cannot pass): job name ->
# status and application status. Parametric values lose their spaces, as DIRAC's JDL lists do.
# DIRAC's Script module names the last step in a Done job's application status.
EXPECTED = {
    "arguments": ("Done", "printf successful"),
    "inputs": ("Done", "cat successful"),
    "outputs": ("Done", "sh successful"),
    "large-output": ("Done", "seq successful"),
    "param-first": ("Done", "args.sh successful"),
    "param-secondvalue": ("Done", "args.sh successful"),
    "param-trois-é": ("Done", "args.sh successful"),
    "fails": ("Failed", "sh Exited With Status 3"),
    "cannot-start": ("Failed", "no-such-program Exited With Status 1000"),
}

# (job name, file or field) -> why the local backend differs from the grid on purpose.
KNOWN: dict = {}
# Jobs the local backend does not run as the grid does yet, and why: each must still differ (the
# test fails once it conforms, so that it is taken off this list).
PENDING: dict = {}


def payload(path: Path) -> bytes:
    """A file's bytes; for a folder DIRAC sent as a tar, what it holds (its members' paths from the
    folder on, and their bytes): the job's own working directory is in the member names."""
    if path.suffix != ".tar":
        return path.read_bytes()
    with tarfile.open(path) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.rstrip("/").split("/")
            inside = "/".join(parts[len(parts) - 1 - parts[::-1].index(path.stem):]) if path.stem in parts \
                else member.name
            members.append((inside, tar.extractfile(member).read() if member.isfile() else b""))
    return repr(sorted(members)).encode()


def outcome(batch: Path, run) -> dict:
    """Every job of the batch by name: what `grid status` says and the payload files of its folder."""
    result = run([sys.executable, str(GRID), "status", "--json"], cwd=batch, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    jobs = {}
    for job in json.loads(result.stdout)["jobs"]:
        folder = batch / job["output"] if job["output"] else None
        files = {str(path.relative_to(folder)): payload(path) for path in sorted(folder.rglob("*"))
                 if path.is_file() and path.name not in WRAPPER_LOGS} if folder else {}
        jobs[job["name"]] = {"status": job["status"], "minor": job["minor"], "application": job["application"],
                             "files": files}
    return jobs


def submit_everything(batch: Path, run, backend: str) -> dict:
    result = run([sys.executable, str(GRID), "submit", "--backend", backend, "--interval", "1", *JOB_FILES],
                 cwd=batch, capture_output=True, text=True, timeout=1800)
    assert result.returncode in (0, 6), result.stdout[-3000:] + result.stderr
    return outcome(batch, run)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    batch = tmp_path_factory.mktemp("local")
    return submit_everything(batch, subprocess.run, "local")


@pytest.fixture(scope="module")
def grid_site(dirac_lab, tmp_path_factory) -> dict:
    dirac_lab.jobagent(True)
    batch = tmp_path_factory.mktemp("dirac")
    return submit_everything(batch, dirac_lab.run, "dirac")


def known(name: str, what: str) -> bool:
    return (name, what) in KNOWN


def differences(name: str, local: dict, grid_site: dict) -> list:
    """What differs between the two runs of one job, known differences left out."""
    mine, theirs = local[name], grid_site[name]
    found = [what for what in ("status", "minor", "application")
             if not known(name, what) and mine[what] != theirs[what]]
    files = {f for f in set(mine["files"]) | set(theirs["files"]) if not known(name, f)}
    return found + sorted(f for f in files if mine["files"].get(f) != theirs["files"].get(f))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_job_ends_as_it_should_and_the_same_on_both_backends(name, local, grid_site):
    assert (grid_site[name]["status"], grid_site[name]["application"]) == EXPECTED[name]
    found = differences(name, local, grid_site)
    if name in PENDING:
        assert found, f"{name} conforms now: take it off PENDING"
        pytest.xfail(f"{PENDING[name]}: {', '.join(found)}")
    assert not found, {what: [repr(run.get(what, run["files"].get(what)))[:300] for run in (local[name], grid_site[name])]
                       for what in found}

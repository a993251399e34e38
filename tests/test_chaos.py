"""Chaos: SIGKILL `submit` at random points; every job must exist exactly once, and the store agree."""
import json
import random
import signal
import subprocess
import time
from collections import Counter

from helpers import grid_cmd, write

JOBS = 150


def server_side_jobs(batch) -> Counter:
    """What the local backend accepted: job number -> how many jobs carry its tag."""
    accepted = Counter()
    for spec in (batch / ".grid" / "local").glob("*/spec.json"):
        accepted[int(json.loads(spec.read_text())["tag"].split(".")[-2])] += 1
    return accepted


def test_sigkill_during_submission_never_loses_or_duplicates_a_job(batch, run_grid):
    write(batch / "jobs.py", f"for i in range({JOBS}):\n    j = Job()\n    j.setName(f'c{{i}}')\n"
          "    j.setExecutable('true')\n    submit(j)\n")
    rng = random.Random(20261125)
    kill_points = sorted(rng.sample(range(2, JOBS), 15))    # kill once this many jobs are accepted
    local = batch / ".grid" / "local"
    command = grid_cmd("submit", "--backend", "local", "--no-watch", "--parallel", "4", "jobs.py")
    kills = 0
    for point in kill_points:
        process = subprocess.Popen(command, cwd=batch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and (not local.exists() or len(list(local.iterdir())) < point):
            time.sleep(0.002)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        command = grid_cmd("watch", "--interval", "30")  # resume; the long interval keeps it submitting
    result = run_grid("watch", "--interval", "0.2", timeout=600)
    assert result.returncode == 0, result.stderr
    accepted = server_side_jobs(batch)
    assert sorted(accepted) == list(range(1, JOBS + 1))            # none lost
    assert set(accepted.values()) == {1}                            # none twice
    data = json.loads(run_grid("status", "--json").stdout)
    assert data["summary"]["Done"] == JOBS
    assert len({job["id"] for job in data["jobs"]}) == JOBS
    assert kills >= 10, "the kills should land during submission"

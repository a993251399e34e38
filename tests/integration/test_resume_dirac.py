"""Resuming after a SIGKILLed `submit --no-watch` with submissions in flight, against the real WMS
(no added delay): the resuming `watch` says at once what it is doing, settles the cut submissions
in bounded time, even with many other jobs of the same VO on the server, and every job is there
exactly once."""
import collections
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import grid_cmd
from test_chaos_dirac import JobDB, job_file, status, wait_until

pytestmark = pytest.mark.integration

JOBS = 100
KILL_AFTER = 20                  # jobs on the server when submit is killed (64 in flight by default)
OTHERS = 60                      # jobs of an earlier batch of the same user and VO on the server


class Lines:
    """A process's output lines, each with the seconds since it started."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.started, self.lines = time.monotonic(), []
        self.reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, b""):
            self.lines.append((time.monotonic() - self.started, line.decode(errors="replace").rstrip("\n")))

    def first(self, pattern: str):
        return next(((t, line) for t, line in self.lines if re.search(pattern, line)), None)

    def text(self) -> str:
        return "\n".join(f"{t:7.2f} {line}" for t, line in self.lines)


def test_resume_after_a_sigkill_with_submissions_in_flight_is_prompt_bounded_and_exactly_once(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)                    # jobs stay Waiting: nothing moves but what grid.py does
    jobdb = JobDB(dirac_lab)
    earlier = tmp_path / "earlier"               # other jobs of the VO: an honest server is not empty
    earlier.mkdir()
    job_file(earlier, OTHERS)
    assert dirac_lab.run(grid_cmd("submit", "--no-watch", "jobs.py"), cwd=earlier, capture_output=True,
                         timeout=600).returncode == 0
    batch = tmp_path / "batch"
    batch.mkdir()
    job_file(batch, JOBS)
    since = jobdb.last_id()
    with open(tmp_path / "submit.log", "w") as log:
        submit = dirac_lab.popen(grid_cmd("submit", "--no-watch", "jobs.py"), cwd=batch, stdout=log,
                                 stderr=subprocess.STDOUT)
    wait_until(lambda: jobdb.count(since) >= KILL_AFTER, 300, "submissions", submit, step=0.05)
    submit.kill()                                # SIGKILL with calls in flight
    submit.wait()
    in_doubt = sum(1 for job in status(batch)["jobs"] if not job["id"])

    watch = dirac_lab.popen(grid_cmd("watch", "--interval", "60"), cwd=batch, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = Lines(watch)
    try:
        done = wait_until(lambda: all(j["id"] for j in status(batch)["jobs"]), 900, "every job submitted",
                          watch, 1.0)
    except AssertionError:
        done = False
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=600)
    assert done, "not every job submitted:\n" + out.text()[-3000:]
    summary = out.first(r"^S:\s+\d+")
    resuming = out.first(r"resuming: \d+ submission\(s\) were cut short earlier")
    settled = out.first(r"\d+ submission\(s\) cut short earlier: \d+ found on the server")
    assert summary and resuming and settled, out.text()[-3000:]
    print(f"\nRESUME: {in_doubt} in doubt after the kill; first line {summary[0]:.1f} s, resuming line "
          f"{resuming[0]:.1f} s, settled {settled[0]:.1f} s: {settled[1]}")
    assert resuming[0] - summary[0] < 5, out.text()[-3000:]       # says what it does, at once
    assert settled[0] - resuming[0] < 60, out.text()[-3000:]      # and is done with it in bounded time

    data = status(batch)
    on_server = collections.defaultdict(list)
    for job_id, tag in jobdb.tags(since).items():
        if tag.startswith(data["tag"] + "."):
            on_server[int(tag.split(".")[-2])].append(job_id)
    assert sorted(on_server) == list(range(1, JOBS + 1))                       # none lost
    assert {n: ids for n, ids in on_server.items() if len(ids) > 1} == {}       # none twice
    assert {job["num"]: job["id"] for job in data["jobs"]} == {n: ids[0] for n, ids in on_server.items()}
    jobdb.close()

"""The examples end to end on the local backend, including SIGKILL and Ctrl-C in the middle."""
import json
import signal
import subprocess
import time
from pathlib import Path

from grid import EXIT_JOBS_FAILED
from helpers import EXAMPLES, grid_cmd, step_stdout

EXAMPLE_FILES = [EXAMPLES / "hello.py", EXAMPLES / "many.py", EXAMPLES / "fail.py"]


def status(run_grid) -> dict:
    result = run_grid("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_examples_finished(batch: Path, run_grid) -> None:
    data = status(run_grid)
    assert data["summary"]["Done"] == 101 and data["summary"]["Failed"] == 1
    succeeded = sorted(p.name for p in (batch / "succeeded").iterdir())
    failed = sorted(p.name for p in (batch / "failed").iterdir())
    assert len(succeeded) == 101 and failed == ["00102_fails-on-purpose"]
    assert step_stdout(batch / "succeeded" / "00001_Test_job") == "Hello World\n"
    for i in range(1, 101):
        folder = batch / "succeeded" / f"{i + 1:05d}_square-{i:03d}"
        assert (folder / "result.txt").read_text() == f"{i * i}\n"
    assert step_stdout(batch / "failed" / "00102_fails-on-purpose") == "about to fail\n"
    assert not list((batch / ".grid").glob("tmp/*"))               # no partial download left
    ids = [job["id"] for job in data["jobs"]]
    assert len(set(ids)) == len(ids) == 102                           # every job submitted once


def wait_for_the_batch(batch: Path, timeout: float = 120) -> None:
    """Until `submit` has stored the batch (a loaded machine takes seconds to load the job files)."""
    deadline = time.monotonic() + timeout
    while not (batch / ".grid" / "db").exists():
        assert time.monotonic() < deadline, "the batch was never stored"
        time.sleep(0.05)


def test_examples_run_to_completion_with_the_seeds_summary_lines(batch, run_grid):
    result = run_grid("submit", "--backend", "local", "--interval", "0.2", *EXAMPLE_FILES, timeout=300)
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr                # fail.py fails on purpose
    lines = result.stdout.splitlines()
    assert "S: 102\tR:   0\tW:   0\tM:   0\tR:   0\tD:   0\tF:   0" in lines
    assert lines[-2] == "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD: 101\tF:   1" or \
        "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD: 101\tF:   1" in lines
    assert any("#102 [" in line and "→ Failed (Application Finished With Errors)" in line
               for line in lines)
    assert_examples_finished(batch, run_grid)
    again = run_grid("watch")                                          # nothing left to do
    assert again.returncode == EXIT_JOBS_FAILED and "all 102 job(s) final" in again.stdout


def test_watch_after_sigkill_finishes_with_no_duplicate_and_no_partial_folder(batch, run_grid):
    for kill_after in (1.0, 2.5, 4.0):
        if (batch / ".grid" / "db").exists():
            process = subprocess.Popen(grid_cmd("watch", "--interval", "0.2"), cwd=batch,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        else:
            process = subprocess.Popen(grid_cmd("submit", "--backend", "local", "--interval", "0.2",
                                                *EXAMPLE_FILES), cwd=batch,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wait_for_the_batch(batch)          # kills while the job files load prove nothing here
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        process.wait()
    result = run_grid("watch", "--interval", "0.2", timeout=300)
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr
    assert_examples_finished(batch, run_grid)


def test_ctrl_c_stops_cleanly_and_watch_resumes(batch, run_grid):
    process = subprocess.Popen(grid_cmd("submit", "--backend", "local", "--interval", "0.2", *EXAMPLE_FILES),
                               cwd=batch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_the_batch(batch)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopping: state is kept" in out
    assert "Traceback" not in err
    result = run_grid("watch", "--interval", "0.2", timeout=300)
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr
    assert_examples_finished(batch, run_grid)


def test_submit_refuses_a_directory_that_already_holds_a_batch(batch, run_grid):
    assert run_grid("submit", "--backend", "local", "--no-watch", EXAMPLES / "hello.py").returncode == 0
    result = run_grid("submit", "--backend", "local", EXAMPLES / "hello.py")
    assert result.returncode == 4 and "already holds a batch" in result.stderr
    assert len(status(run_grid)["jobs"]) == 1


def test_no_watch_returns_after_submitting_and_local_jobs_run_on_without_the_tool(batch, run_grid):
    result = run_grid("submit", "--backend", "local", "--no-watch", EXAMPLES / "hello.py")
    assert result.returncode == 0
    assert "1 of 1 job(s) submitted" in result.stdout
    deadline = time.monotonic() + 120
    while status(run_grid)["jobs"][0]["status"] != "Done":        # the local site runs it meanwhile
        assert time.monotonic() < deadline, "the job did not run without a grid command"
        time.sleep(0.5)
    result = run_grid("watch", "--interval", "0.2")
    assert result.returncode == 0
    assert step_stdout(batch / "succeeded" / "00001_Test_job") == "Hello World\n"


def test_unwritable_batch_directory_is_a_clear_error(run_grid):
    result = run_grid("-C", "/proc/sys", "submit", "--backend", "local", EXAMPLES / "hello.py")
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("grid: error: cannot write in /proc/sys")
    assert "Traceback" not in result.stderr

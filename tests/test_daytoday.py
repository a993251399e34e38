"""Running a batch day to day on the local backend: exit codes, --exit-when, --retries, resubmit,
kill, reschedule, and the three ways `watch` talks (live footer on a terminal, plain lines, JSON)."""
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

import grid
from helpers import EXAMPLES, grid_cmd, step_stdout, write

FAST = ("--interval", "0.2")


def status(run_grid) -> dict:
    result = run_grid("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_status(batch: Path, run_grid, wanted: str, num: int = 1, timeout: float = 120) -> None:
    """Until job #num has the wanted status (the batch may not exist yet)."""
    deadline = time.monotonic() + timeout
    while not (batch / ".grid" / "db").is_dir() or status(run_grid)["jobs"][num - 1]["status"] != wanted:
        assert time.monotonic() < deadline, f"job #{num} never became {wanted}"
        time.sleep(0.2)


def job_file(batch: Path, lines: list[str]) -> Path:
    """A job file with one job per (name, shell command)."""
    body = "".join(f"j = Job()\nj.setName({name!r})\nj.setExecutable('/bin/sh', arguments={'-c ' + repr(cmd)!r})\n"
                   "submit(j)\n" for name, cmd in lines)
    return write(batch / "jobs.py", body)


def flaky_job_file(batch: Path) -> Path:
    """Job 1 fails on its first run only (a marker outside the batch remembers it); job 2 always works."""
    marker = batch.parent / "flaky-ran-once"
    return job_file(batch, [("flaky", f"test -e {marker} || {{ touch {marker}; echo first try; exit 7; }}; echo ok"),
                            ("steady", "echo ok")])


# -- exit codes and --exit-when ------------------------------------------------------------------

def test_exit_code_tells_whether_every_job_succeeded(batch, run_grid, tmp_path):
    good = run_grid("submit", "--backend", "local", *FAST, EXAMPLES / "hello.py")
    assert good.returncode == 0, good.stderr
    other = tmp_path / "other"
    other.mkdir()
    bad = run_grid("submit", "--backend", "local", *FAST, EXAMPLES / "hello.py", EXAMPLES / "fail.py", cwd=other)
    assert bad.returncode == grid.EXIT_JOBS_FAILED == 6
    assert "1 done, 1 failed" in bad.stdout and "grid failures" in bad.stdout


def test_exit_when_first_failure_returns_before_slow_jobs_end(batch, run_grid):
    jobs = job_file(batch, [("breaks", "exit 2"), ("slow-1", "sleep 30"), ("slow-2", "sleep 30")])
    started = time.monotonic()
    result = run_grid("submit", "--backend", "local", *FAST, "--exit-when", "first-failure", jobs)
    assert time.monotonic() - started < 25
    assert result.returncode == grid.EXIT_JOBS_FAILED
    assert "#1 breaks failed" in result.stdout and "stopped early" in result.stdout
    data = status(run_grid)
    assert data["jobs"][0]["status"] == "Failed" and data["jobs"][0]["output"]   # its output is kept
    assert {j["status"] for j in data["jobs"][1:]} <= {"Waiting", "Matched", "Running", "Received"}
    run_grid("kill", "--all", "--yes")


def test_exit_when_all_done_waits_while_a_retry_can_still_succeed(batch, run_grid):
    result = run_grid("submit", "--backend", "local", *FAST, "--retries", "1", "--exit-when", "all-done",
                      flaky_job_file(batch))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped early" not in result.stdout
    flaky = status(run_grid)["jobs"][0]
    assert flaky["status"] == "Done" and flaky["attempts"] == 2


def test_exit_when_all_done_stops_once_a_job_has_failed_for_good(batch, run_grid):
    jobs = job_file(batch, [("breaks", "exit 2"), ("slow", "sleep 30")])
    result = run_grid("submit", "--backend", "local", *FAST, "--exit-when", "all-done", jobs)
    assert result.returncode == grid.EXIT_JOBS_FAILED
    assert "failed for good" in result.stdout
    run_grid("kill", "--all", "--yes")


# -- retries and resubmission -------------------------------------------------------------------

def test_retries_resubmit_a_flaky_job_keeping_its_number_lineage_and_first_output(batch, run_grid):
    result = run_grid("submit", "--backend", "local", *FAST, "--retries", "2", flaky_job_file(batch))
    assert result.returncode == 0, result.stdout + result.stderr
    flaky, steady = status(run_grid)["jobs"]
    assert flaky["num"] == 1 and flaky["status"] == "Done" and flaky["attempts"] == 2
    assert len(flaky["ids"]) == 2 and flaky["id"] == flaky["ids"][-1] != flaky["ids"][0]
    assert flaky["past"][0]["status"] == "Failed" and "Status 7" in flaky["past"][0]["reason"]
    assert steady["attempts"] == 1 and steady["past"] == []
    first = batch / flaky["past"][0]["output"]
    assert first == batch / "retried" / "00001_flaky.1"
    assert step_stdout(first) == "first try\n"
    assert step_stdout(batch / "succeeded" / "00001_flaky") == "ok\n"
    assert not (batch / "failed").exists() or not list((batch / "failed").iterdir())


def test_retry_policy_stops_retrying_a_reason_that_fails_everywhere(batch, run_grid):
    jobs = job_file(batch, [(f"broken-{i}", "exit 4") for i in range(8)])
    result = run_grid("submit", "--backend", "local", *FAST, "--retries", "3", jobs, timeout=180)
    assert result.returncode == grid.EXIT_JOBS_FAILED
    refusals = [line for line in result.stdout.splitlines() if "not retrying jobs that fail with" in line]
    assert len(refusals) == 1 and "Status 4" in refusals[0] and "grid resubmit --reason" in refusals[0]
    attempts = sum(job["attempts"] for job in status(run_grid)["jobs"])
    assert 8 <= attempts < 8 * 4          # without the rule every job would have run 4 times


def test_resubmit_by_number_and_by_reason(batch, run_grid):
    jobs = job_file(batch, [("ok", "echo fine"), ("exit-3", "exit 3"), ("exit-5", "exit 5")])
    assert run_grid("submit", "--backend", "local", *FAST, jobs).returncode == grid.EXIT_JOBS_FAILED
    before = {j["num"]: j for j in status(run_grid)["jobs"]}

    result = run_grid("resubmit", *FAST, "--reason", "Status 5")
    assert result.returncode == grid.EXIT_JOBS_FAILED, result.stderr
    after = {j["num"]: j for j in status(run_grid)["jobs"]}
    assert after[3]["attempts"] == 2 and after[3]["ids"][0] == before[3]["id"]
    assert after[2]["attempts"] == 1 and after[1]["attempts"] == 1          # the others are untouched
    assert (batch / "retried" / "00003_exit-5.1").is_dir() and (batch / "failed" / "00003_exit-5").is_dir()
    why = run_grid("why", "3", "--offline").stdout
    assert f"attempts:    2 (ids: {before[3]['id']}, {after[3]['id']})" in why
    assert "attempt 1:" in why and "Status 5, output in retried/00003_exit-5.1/" in why

    result = run_grid("resubmit", *FAST, "2", "--no-watch")
    assert result.returncode == 0, result.stderr
    assert status(run_grid)["jobs"][1]["attempts"] == 2


@pytest.mark.parametrize("args, message", [
    ((), "name the jobs"),
    (("9",), "no job #9 in the batch"),
    (("1",), "resubmit is for failed jobs"),   # a Done job runs again only with --force
    (("1", "--force"), None),
])
def test_resubmit_mistakes_are_one_line_errors(batch, run_grid, args, message):
    assert run_grid("submit", "--backend", "local", *FAST, EXAMPLES / "hello.py").returncode == 0
    result = run_grid("resubmit", "--no-watch", *args)
    if message is None:
        assert result.returncode == 0 and status(run_grid)["jobs"][0]["attempts"] == 2
        return
    assert result.returncode == grid.EXIT_USAGE
    assert message in result.stderr and "Traceback" not in result.stderr


def test_resubmit_refuses_a_job_that_is_not_final(batch, run_grid):
    jobs = job_file(batch, [("slow", "sleep 30")])
    assert run_grid("submit", "--backend", "local", "--no-watch", jobs).returncode == 0
    result = run_grid("resubmit", "1")
    assert result.returncode == grid.EXIT_USAGE and "not final" in result.stderr
    run_grid("kill", "--all", "--yes")


# -- kill and reschedule ------------------------------------------------------------------------

def test_kill_asks_for_yes_without_a_terminal_then_kills(batch, run_grid):
    jobs = job_file(batch, [("slow-1", "sleep 60"), ("slow-2", "sleep 60")])
    assert run_grid("submit", "--backend", "local", "--no-watch", jobs).returncode == 0
    refused = run_grid("kill", "--all")
    assert refused.returncode == grid.EXIT_USAGE and "--yes" in refused.stderr
    assert run_grid("kill", "--all", "--yes").returncode == 0
    assert {j["status"] for j in status(run_grid)["jobs"]} == {"Killed"}
    watched = run_grid("watch", *FAST)
    assert watched.returncode == grid.EXIT_JOBS_FAILED and "0 done, 2 failed" in watched.stdout


def test_kill_asks_on_a_terminal_and_does_nothing_unless_told_yes(batch, run_grid):
    jobs = job_file(batch, [("slow", "sleep 60")])
    assert run_grid("submit", "--backend", "local", "--no-watch", jobs).returncode == 0
    out = run_in_terminal(grid_cmd("kill", "1"), batch, {}, answer=b"n\n").decode()
    assert "kill 1 job(s)? [y/N]" in out and "nothing done" in out
    assert status(run_grid)["jobs"][0]["status"] != "Killed"
    out = run_in_terminal(grid_cmd("kill", "1"), batch, {}, answer=b"y\n").decode()
    assert "killed 1 job(s)" in out
    assert status(run_grid)["jobs"][0]["status"] == "Killed"


def test_kill_beside_a_running_watch_is_recorded_by_the_watch(batch, run_grid):
    jobs = job_file(batch, [("slow", "sleep 60"), ("quick", "echo hi")])
    watch = subprocess.Popen(grid_cmd("submit", "--backend", "local", *FAST, jobs), cwd=batch,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_status(batch, run_grid, "Running")
        killed = run_grid("kill", "1", "--yes")
        assert killed.returncode == 0 and "records it" in killed.stdout
        out, err = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert "#1 [" in out and "→ Killed" in out
    assert watch.returncode == grid.EXIT_JOBS_FAILED


def test_reschedule_runs_the_same_job_again_and_keeps_the_old_output(batch, run_grid):
    counter = batch.parent / "runs"
    jobs = job_file(batch, [("again", f"echo run >> {counter}; cat {counter} | wc -l")])
    assert run_grid("submit", "--backend", "local", *FAST, jobs).returncode == 0
    first = status(run_grid)["jobs"][0]
    result = run_grid("reschedule", "1", "--yes")
    assert result.returncode == 0, result.stderr
    assert run_grid("watch", *FAST).returncode == 0
    job = status(run_grid)["jobs"][0]
    assert job["id"] == first["id"] and job["ids"] == first["ids"]           # same DIRAC id
    assert job["past"][0]["status"] == "Done"
    assert step_stdout(batch / "retried" / "00001_again.1").strip() == "1"
    assert step_stdout(batch / "succeeded" / "00001_again").strip() == "2"


def test_reschedule_needs_the_batch_to_itself(batch, run_grid):
    jobs = job_file(batch, [("slow", "sleep 60")])
    watch = subprocess.Popen(grid_cmd("submit", "--backend", "local", *FAST, jobs), cwd=batch,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_status(batch, run_grid, "Running")
        result = run_grid("reschedule", "1", "--yes")
        assert result.returncode == grid.EXIT_BATCH and "in use by `grid submit`" in result.stderr
    finally:
        run_grid("kill", "--all", "--yes")
        watch.wait(timeout=60)


# -- how watch talks ----------------------------------------------------------------------------

def run_in_terminal(argv: list, cwd: Path, env: dict, columns: int = 160, timeout: float = 120,
                    answer: bytes = b"") -> bytes:
    """Run a command under a real pseudo-terminal, typing `answer` once it asks; returns what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                               env={**os.environ, **env}, close_fds=True)
    os.close(slave)
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            output += data
            if answer and b"[y/N]" in output:
                os.write(master, answer)
                answer = b""
        elif process.poll() is not None:
            break
    process.kill()
    process.wait()
    os.close(master)
    return output


def test_live_footer_on_a_terminal(batch):
    out = run_in_terminal(grid_cmd("submit", "--backend", "local", *FAST, EXAMPLES / "many.py"), batch,
                          {"TERM": "xterm", "NO_COLOR": ""}).decode()
    assert "\r\x1b[K" in out                                          # the footer is redrawn in place
    footers = [part.rsplit("\n", 1)[-1] for part in out.split("\r\x1b[K")]   # log lines end in \n
    footers = [f for f in footers if "final" in f and "submitted" in f]
    assert footers, out[-2000:]
    assert any("100/100 final" in f and "100 downloaded" in f for f in footers)
    assert any("/min" in f and "ETA" in f for f in footers)           # rate and time left once under way
    assert "\x1b[32m" in out                                         # colour by default
    assert all(len(line) < 160 for f in footers for line in [grid.re.sub(r"\x1b\[[0-9;]*m", "", f)])
    assert "all 100 job(s) final" in out and "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD: 100\tF:   0" in out


def test_no_color_keeps_the_footer_without_colours(batch):
    out = run_in_terminal(grid_cmd("submit", "--backend", "local", *FAST, EXAMPLES / "hello.py"), batch,
                          {"TERM": "xterm", "NO_COLOR": "1"}).decode()
    assert "\r\x1b[K" in out and "1/1 final" in out
    assert "\x1b[3" not in out and "\x1b[0m" not in out


def test_piped_output_is_plain_seed_lines(batch, run_grid):
    result = run_grid("submit", "--backend", "local", *FAST, EXAMPLES / "hello.py")
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    assert "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD:   1\tF:   0" in result.stdout.splitlines()


def test_json_lines_when_asked(batch, run_grid):
    result = run_grid("submit", "--backend", "local", *FAST, "--json", EXAMPLES / "hello.py", EXAMPLES / "fail.py")
    events = [json.loads(line) for line in result.stdout.splitlines()]   # every line is one JSON object
    kinds = {e["event"] for e in events}
    assert {"message", "summary", "status", "output", "result"} <= kinds
    failed = [e for e in events if e["event"] == "status" and e["status"] == "Failed"]
    assert failed and failed[0]["num"] == 2 and failed[0]["minor"] == "Application Finished With Errors"
    assert events[-1] == {**events[-1], "event": "result", "jobs": 2, "done": 1, "failed": 1}
    assert result.returncode == grid.EXIT_JOBS_FAILED


# -- pieces -------------------------------------------------------------------------------------

def progress(**kw) -> "grid.Progress":
    values = dict(counts=[0, 0, 3, 0, 2, 90, 5], total=100, final=95, failed=5, submitted=100,
                  downloaded=93, rate=0.5, server="server ok")
    return grid.Progress(**{**values, **kw})


@pytest.mark.parametrize("width", [40, 80, 120, 200])
def test_footer_never_wraps_and_keeps_the_counts(width):
    line = grid.render_footer(progress(), width, color=True)
    assert grid.visible_length(line) < width
    assert line.startswith("S: 0 R: 0 W: 3")


def test_footer_shows_the_proxy_time_left_when_the_server_is_fine():
    line = grid.render_footer(progress(server="server ok, proxy 2 h 05 min left"), 300, False)
    assert line.endswith("ETA 10 s · server ok, proxy 2 h 05 min left")


def test_footer_shows_trouble_before_details():
    line = grid.render_footer(progress(server="server unreachable since 10:00:00"), 80, False)
    assert line.startswith("S: 0 R: 0 W: 3 M: 0 R: 2 D: 90 F: 5 · server unreachable since 10:00:00")
    wide = grid.render_footer(progress(), 300, False)
    assert "[##################x-] 95/100 final" in wide and "30.0/min" in wide and "ETA 10 s" in wide


def test_a_reason_is_systematic_only_when_it_fails_most_attempts_often():
    def failed(reason_code: int) -> grid.Job:
        return grid.Job(num=1, name="j", status=grid.FAILED, minor="Application Finished With Errors",
                        app=f"'sh' Exited With Status {reason_code}")

    done = grid.Job(num=2, name="k", status=grid.DONE)
    stats = grid.AttemptStats([failed(1)] * 4 + [done] * 3)
    reason = grid.failure_reason(failed(1))
    assert not stats.systematic(reason)                     # 4 of 7: too few to call it
    stats.add(failed(1))
    assert stats.systematic(reason)                         # 5 of 8
    stats = grid.AttemptStats([failed(1)] * 5 + [done] * 5)
    assert not stats.systematic(reason)                     # 5 of 10: not more than half
    assert not stats.systematic(grid.failure_reason(failed(2)))

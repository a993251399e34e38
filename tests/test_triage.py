"""Failure triage and day-to-day commands on the local backend: failures, why, logs, export, list."""
import csv
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import grid
from helpers import EXAMPLES, grid_cmd, write

# Two ways to fail: a step that exits 3 (three jobs here, and examples/fail.py) and a step whose
# executable does not exist (two jobs); one job succeeds.
JOBS = """\
for i in range(3):
    j = Job()
    j.setName(f'exits-3-{i}')
    j.setExecutable('/bin/sh', arguments='-c "seq 1 30; echo oops >&2; exit 3"')
    submit(j)
for i in range(2):
    j = Job()
    j.setName(f'missing-{i}')
    j.setExecutable('no-such-program-xyz')
    submit(j)
j = Job()
j.setName('fine')
j.setExecutable('echo Hello')
submit(j)
"""
EXIT_3 = [1, 2, 3, 7]
MISSING = [4, 5]
FINE = 6


def run(batch: Path, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(grid_cmd(*args), cwd=batch, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A local batch whose jobs are all final and downloaded (made once for the module)."""
    batch = tmp_path_factory.mktemp("triage") / "batch"
    batch.mkdir()
    write(batch / "jobs.py", JOBS)
    result = run(batch, "submit", "--backend", "local", "jobs.py", EXAMPLES / "fail.py", timeout=300)
    assert result.returncode == 6, result.stdout + result.stderr          # not every job is Done
    return batch


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    """A copy of the finished batch that a test may change."""
    target = tmp_path / "copy"
    shutil.copytree(finished, target)
    return target


def stored_jobs(batch: Path) -> dict:
    with grid.Store.snapshot(batch) as store:
        return store.jobs()


def forget_output(batch: Path, num: int) -> None:
    """As if the output of job num had never been downloaded (the local backend keeps it once:
    it goes back to where the backend collected it)."""
    store = grid.Store.open(batch, "test")
    try:
        job = store.jobs()[num]
        shutil.move(batch / job.output, batch / ".grid" / "local" / str(job.dirac_id) / "output")
        job.output = ""
        store.save(job, sync=True)
    finally:
        store.close()


# -- failures -------------------------------------------------------------------------------------

def test_failures_groups_the_two_reasons_with_counts_sites_and_job_numbers(finished):
    result = run(finished, "failures", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["jobs"] == 7 and data["failed"] == 6
    groups = {group["reason"]: group for group in data["groups"]}
    assert [group["count"] for group in data["groups"]] == [4, 2]          # biggest group first
    jobs = stored_jobs(finished)
    exit_3, missing = grid.failure_reason(jobs[EXIT_3[0]]), grid.failure_reason(jobs[MISSING[0]])
    assert set(groups) == {exit_3, missing}
    assert groups[exit_3]["jobs"] == EXIT_3 and groups[exit_3]["exit_code"] == 3
    assert groups[missing]["jobs"] == MISSING and groups[missing]["exit_code"] == grid.NOT_STARTED_STATUS
    assert exit_3 == "Failed: Application Finished With Errors / sh Exited With Status 3"
    assert "no-such-program-xyz Exited With Status 1000" in missing
    assert groups[exit_3]["sites"] == {"Local": 4}


def test_failures_text_prints_each_reason_exactly_with_a_resubmit_line(finished):
    result = run(finished, "failures")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("6 of 7 job(s) failed, for 2 reason(s)")
    jobs = stored_jobs(finished)
    for members in (EXIT_3, MISSING):
        reason = grid.failure_reason(jobs[members[0]])
        head = lines.index(f"{len(members):5d}  {reason}")
        assert lines[head + 1].split() == ["sites:", "Local", f"({len(members)})"]
        assert lines[head + 2].split() == ["jobs:", *(f"#{n}" for n in members)]
        hint = lines[head + 3].split("resubmit: ", 1)[1]
        assert shlex.split(hint) == ["grid.py", "resubmit", "--reason", reason]


def test_failures_with_no_failed_job_says_so(batch):
    assert run(batch, "submit", "--backend", "local", EXAMPLES / "hello.py").returncode == 0
    result = run(batch, "failures")
    assert result.returncode == 0 and result.stdout == "no failed job among 1\n"
    assert json.loads(run(batch, "failures", "--json").stdout)["groups"] == []


def test_failure_reason_and_exit_code_of_a_stored_job():
    job = grid.Job(num=3, name="x", status="Failed", minor="Application Finished With Errors",
                   app="my_exe Exited With Status 42", site="LCG.CERN.cern")
    assert grid.failure_reason(job) == "Failed: Application Finished With Errors / my_exe Exited With Status 42"
    assert grid.exit_code(job) == 42
    assert grid.exit_code(grid.Job(num=1, name="y", status="Killed", minor="Marked for termination")) is None
    assert grid.failure_reason(grid.Job(num=1, name="y", status="Deleted")) == "Deleted: - / -"


# -- why ------------------------------------------------------------------------------------------

def section(text: str, title: str) -> list:
    """The indented lines under the line starting with title."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        body.append(line)
    return body


def test_why_shows_statuses_stdout_tail_and_the_backends_logging_info(finished):
    job = stored_jobs(finished)[EXIT_3[0]]
    result = run(finished, "why", f"#{job.num}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"#{job.num} exits-3-0\n")
    assert "  application: sh Exited With Status 3\n" in out and "  exit code:   3\n" in out
    assert f"  reason:      {grid.failure_reason(job)}\n" in out
    assert "  site:        Local\n" in out
    assert f"  attempts:    1 (ids: {job.dirac_id})\n" in out
    assert f"  output:      {job.output}/\n" in out
    assert [line.split()[-1] for line in section(out, "history")] == [entry[0] for entry in job.history]
    tail = section(out, "stdout (last 20 lines of")
    assert len(tail) == 20 and "  | 30" in tail and "  | 13" not in tail and tail[-1] == "  | oops"
    logging = section(out, "local backend's logging info")
    statuses = [line.split()[2] for line in logging]
    assert statuses == ["Received", "Waiting", "Matched", "Running", "Failed"]
    assert logging[-1].split()[-1] == "Site" and "sh Exited With Status 3" in logging[-1]


def test_why_of_a_step_that_could_not_start_shows_the_sites_log_of_it(finished):
    result = run(finished, "why", str(MISSING[0]), "--offline")
    assert result.returncode == 0, result.stderr
    assert "  exit code:   none: the step could not be started (DIRAC reports 1000)\n" in result.stdout
    assert section(result.stdout, "stdout")[-1].endswith(           # std.out: the site's log, as on the grid
        "ERROR: System call execution failed: no-such-program-xyz: No such file or directory")
    assert "logging info" not in result.stdout                     # --offline


def test_why_of_a_done_job_has_no_reason_and_shows_its_output(finished):
    result = run(finished, "why", str(FINE))
    assert result.returncode == 0, result.stderr
    assert "reason:" not in result.stdout
    assert "  | Hello" in section(result.stdout, "stdout")


def test_why_says_when_the_output_is_not_downloaded_yet(copy):
    forget_output(copy, FINE)
    result = run(copy, "why", str(FINE), "--offline")
    assert result.returncode == 0
    assert f"stdout: not downloaded yet (`grid.py logs {FINE}` fetches it)" in result.stdout


@pytest.mark.parametrize("args, code, message", [
    (["why", "99"], 2, "grid: error: no job #99 in the batch in "),
    (["logs", "99"], 2, "grid: error: no job #99 in the batch in "),
    (["why", "abc"], 2, "not a job number: 'abc'"),
    (["logs", "0"], 2, "job numbers start at 1"),
])
def test_unknown_job_numbers_are_one_line_usage_errors(finished, args, code, message):
    result = run(finished, *args)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr
    if message.startswith("grid: error"):
        assert "(its jobs are #1 to #7)" in result.stderr.splitlines()[0]


@pytest.mark.parametrize("command", [["failures"], ["why", "1"], ["logs", "1"], ["export", "--csv", "-"]])
def test_commands_outside_a_batch_say_so(batch, command):
    result = run(batch, *command)
    assert result.returncode == 4
    assert result.stderr.startswith(f"grid: error: no batch in {batch}")


# -- logs -----------------------------------------------------------------------------------------

def test_logs_prints_the_steps_stdout_or_another_file(finished):
    result = run(finished, "logs", str(FINE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "<<<<<<<<<< echo Hello Standard Output >>>>>>>>>>\n\nHello\n "   # as DIRAC writes it
    failed = run(finished, "logs", str(EXIT_3[-1]))
    assert failed.returncode == 0 and failed.stdout.endswith("Standard Error >>>>>>>>>>\n\noops\n ")
    wrapper = run(finished, "logs", str(EXIT_3[-1]), "--file", "std.out")
    assert wrapper.returncode == 0 and "exited with status 3" in wrapper.stdout
    escape = run(finished, "logs", str(FINE), "--file", "../../jobs.py")
    assert escape.returncode == 2 and "no file '../../jobs.py'" in escape.stderr


def test_logs_downloads_a_missing_output_unless_another_command_holds_the_batch(copy):
    forget_output(copy, FINE)
    holder = grid.Store.open(copy, "watch")
    try:
        refused = run(copy, "logs", str(FINE))
        assert run(copy, "why", str(FINE), "--offline").returncode == 0         # read-only views still work
    finally:
        holder.close()
    assert refused.returncode == 4
    error, fix = refused.stderr.splitlines()
    assert error.startswith(f"grid: error: the output of #{FINE} is not downloaded yet and the batch is in use "
                            "by `grid watch` (pid ")
    assert fix.startswith("grid: fix: wait until `grid status` shows its output folder")
    assert not (copy / "succeeded" / f"{FINE:05d}_fine").exists()
    result = run(copy, "logs", str(FINE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("Hello\n ")
    assert f"output downloaded into succeeded/{FINE:05d}_fine/" in result.stderr
    assert stored_jobs(copy)[FINE].output == f"succeeded/{FINE:05d}_fine"
    assert not list((copy / ".grid").glob("tmp/*"))


def test_logs_of_a_job_not_final_asks_the_backend_and_says_when_to_come_back(batch):
    write(batch / "jobs.py", "j = Job()\nj.setName('slow')\nj.setExecutable('sleep 60')\nsubmit(j)\n")
    assert run(batch, "submit", "--backend", "local", "--no-watch", "jobs.py").returncode == 0
    try:
        result = run(batch, "logs", "1")
    finally:
        run(batch, "kill", "--all", "--yes")
    assert result.returncode == 1
    now = stored_jobs(batch)[1].status
    assert f"#1 slow: {now} on the server (was Received here)" in result.stderr or now == "Killed"
    assert re.search(r"grid: error: #1 slow is (Waiting|Matched|Running): its output comes once it is final",
                     result.stderr)
    assert not (batch / "succeeded").exists()


# -- export ---------------------------------------------------------------------------------------

def test_export_writes_one_row_per_job_with_every_stored_field(finished, tmp_path):
    result = run(finished, "export", "--csv", tmp_path / "jobs.csv", "--json", tmp_path / "jobs.json")
    assert result.returncode == 0, result.stderr
    jobs = stored_jobs(finished)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "jobs.csv").read_text())))
    assert list(rows[0]) == list(grid.Job.FIELDS)
    assert [int(row["num"]) for row in rows] == sorted(jobs)
    for row in rows:
        job = jobs[int(row["num"])]
        assert row["status"] == job.status and row["app"] == job.app and row["output"] == job.output
        assert row["ids"] == ";".join(map(str, job.ids))
        assert [entry.split(" ")[0] for entry in row["history"].split("; ")] == [s for s, _ in job.history]
    exported = json.loads((tmp_path / "jobs.json").read_text())
    assert exported == [jobs[num].to_dict() for num in sorted(jobs)]
    to_terminal = run(finished, "export", "--json", "-")
    assert json.loads(to_terminal.stdout) == exported


def test_export_needs_a_target(finished):
    result = run(finished, "export")
    assert result.returncode == 2 and "--csv FILE and/or --json FILE" in result.stderr


# -- list -----------------------------------------------------------------------------------------

def test_list_shows_every_batch_under_a_folder_even_while_one_is_watched(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "runs" / "a")
    nested = tmp_path / "runs" / "nested" / "b"
    nested.mkdir(parents=True)
    assert run(nested, "submit", "--backend", "local", "--no-watch", EXAMPLES / "hello.py").returncode == 0
    (tmp_path / "runs" / "notes").mkdir()
    holder = grid.Store.open(tmp_path / "runs" / "a", "watch")
    try:
        text = run(tmp_path, "list", "runs")
        data = run(tmp_path, "list", "runs", "--json")
    finally:
        holder.close()
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    path, *columns = lines[0].split("\t")
    assert path == "a" and "\t".join(columns[:7]) == "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD:   1\tF:   6"
    assert columns[7] == "local" and columns[9].startswith("grid-batch-")
    assert columns[10].startswith("in use by `grid watch` (pid ")
    assert lines[1].startswith("nested/b\tS:   0\tR:   1\t")
    records = json.loads(data.stdout)
    assert [r["path"] for r in records] == ["a", "nested/b"]
    assert records[0]["summary"]["Failed"] == 6 and records[0]["jobs"] == 7
    assert records[1]["summary"]["Received"] == 1 and records[1]["in_use_by"] is None


def test_list_reports_an_unreadable_batch_and_an_empty_folder(tmp_path):
    (tmp_path / "broken" / ".grid" / "db").mkdir(parents=True)
    result = run(tmp_path, "list")
    assert result.returncode == 4
    assert result.stdout.startswith("broken\tunreadable: cannot read the batch database")
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run(empty, "list")
    assert none.returncode == 0 and none.stdout == "" and "no batch under" in none.stderr
    assert run(empty, "list", "--json").stdout == "[]\n"
    assert run(empty, "list", "missing").returncode == 2


# -- read-only, without DIRAC -----------------------------------------------------------------------

PROBE = """\
import atexit, runpy, sys
sys.argv = ['grid.py', *sys.argv[1:]]
atexit.register(lambda: print('DIRAC imported:', 'DIRAC' in sys.modules))   # a command that ran gevent
runpy.run_path({grid!r}, run_name='__main__')                                  # ends with os._exit
"""


@pytest.mark.parametrize("command", [["failures"], ["why", "1"], ["logs", "1"], ["export", "--json", "-"],
                                     ["list"]])
def test_day_to_day_commands_on_a_local_batch_do_not_import_dirac(finished, command):
    probe = PROBE.format(grid=str(grid.__file__))
    result = subprocess.run([sys.executable, "-c", probe, *command], cwd=finished, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.rstrip().endswith("DIRAC imported: False"), result.stdout[-500:] + result.stderr

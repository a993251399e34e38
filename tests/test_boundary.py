"""The command-line boundary as a new user meets it: closed pipes, Ctrl-C at any moment, --json
that stays JSON, errors that say what is wrong, refusals that protect, and one line per job
whatever the job is called. Everything runs `grid` as a user would, on the local backend."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import grid
from helpers import grid_cmd, step_stdout, write


def jobs_file(folder: Path, count: int, command: str = "true", name: str = "job-{i}",
              before_each: str = "") -> Path:
    """A job file with `count` jobs running `command` in /bin/sh; `before_each` runs in the loop."""
    return write(folder / "jobs.py", f"""
import time
for i in range({count}):
    {before_each or 'pass'}
    j = Job()
    j.setName({name!r}.format(i=i))
    j.setExecutable('/bin/sh', arguments={('-c ' + repr(command))!r})
    submit(j)
""")


def status_of(run_grid) -> dict:
    result = run_grid("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- a closed pipe ends quietly --------------------------------------------------------------------

def read_first_line_then_close(*args, cwd: Path) -> subprocess.CompletedProcess:
    """`grid ARGS | head -1`: read one line, close the pipe, let grid run on."""
    process = subprocess.Popen(grid_cmd(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, first.decode(), stderr)


def test_dry_run_cut_by_a_closed_pipe_ends_quietly(batch):
    jobs = jobs_file(batch, 400)                        # far more than a pipe holds: grid must meet the close
    result = read_first_line_then_close("submit", "--backend", "local", "--dry-run", jobs, cwd=batch)
    assert result.stdout.startswith("dry run: 400 job(s)")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""                           # no "Broken pipe", no "Exception ignored"


def test_watch_cut_by_a_closed_pipe_stops_quietly_and_keeps_the_state(batch, run_grid):
    jobs = jobs_file(batch, 3, "echo hi")
    result = read_first_line_then_close("submit", "--backend", "local", "--interval", "0.2", jobs, cwd=batch)
    assert "3 job(s) from" in result.stdout
    assert result.stderr == "" and result.returncode == grid.EXIT_INTERRUPTED
    again = run_grid("watch", "--interval", "0.2")     # nobody read on: `watch` takes over
    assert again.returncode == 0, again.stdout + again.stderr
    assert status_of(run_grid)["summary"]["Done"] == 3


# -- Ctrl-C at any moment: exit 130 and one true line -----------------------------------------------

def started_python_code(process: subprocess.Popen, timeout: float = 300) -> None:
    """Until grid.py runs its own imports (gevent's greenlet is loaded): a Ctrl-C before that meets
    Python's own start-up, which grid.py cannot answer for."""
    deadline = time.monotonic() + timeout
    maps = Path(f"/proc/{process.pid}/maps")
    while "greenlet" not in maps.read_text():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)


def interrupt(batch: Path, jobs: Path, after: float, wait_for: Path = None) -> subprocess.CompletedProcess:
    """Start `grid submit`, press Ctrl-C `after` seconds after grid.py started (or after wait_for
    appeared), and collect what it said."""
    process = subprocess.Popen(grid_cmd("submit", "--backend", "local", "--interval", "0.2", jobs),
                               cwd=batch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started_python_code(process)
    deadline = time.monotonic() + 300                    # a loaded machine starts DIRAC slowly
    while wait_for and not wait_for.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


INTERRUPTION = re.compile(r"interrupted|stopping")


def assert_one_true_line(result: subprocess.CompletedProcess, batch: Path, run_grid) -> str:
    """Exit 130, no traceback, one line about the interruption, and that line true of the batch."""
    said = result.stdout + result.stderr
    assert result.returncode == grid.EXIT_INTERRUPTED, said
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said
    lines = [line for line in said.splitlines() if INTERRUPTION.search(line)]
    assert len(lines) == 1, said
    line = lines[0]
    if (batch / ".grid" / "db").is_dir():
        assert "state is kept" in line and "`grid watch` resumes" in line, said
        assert status_of(run_grid)["jobs"]                # and it is: the batch is there
        run_grid("kill", "--all", "--yes")
    else:
        assert "nothing was done" in line or "nothing was stored" in line, said
        assert run_grid("watch").returncode == grid.EXIT_BATCH      # indeed no batch
    return line


def test_ctrl_c_at_any_moment_exits_130_with_one_true_line(batch, run_grid, tmp_path):
    """A sweep of moments from grid.py's first imports on; which phase each meets depends on how
    busy the machine is (the tests below reach the job files and the engine for sure)."""
    for n, after in enumerate((0.0, 0.05, 0.15, 0.3, 0.6, 1.0, 1.6, 2.5, 4.0)):
        here = tmp_path / f"run{n}"
        here.mkdir()
        jobs = jobs_file(here, 20, "sleep 1", before_each="time.sleep(0.05)")
        assert_one_true_line(interrupt(here, jobs, after), here, lambda *a: run_grid(*a, cwd=here))


def test_ctrl_c_while_the_job_file_runs_is_an_interruption_not_a_job_file_error(batch, run_grid):
    marker = batch / "in-the-loop"
    jobs = jobs_file(batch, 200, before_each=f"time.sleep(0.02); i == 3 and open({str(marker)!r}, 'w')")
    result = interrupt(batch, jobs, 0.05, wait_for=marker)
    line = assert_one_true_line(result, batch, run_grid)
    assert "fix the job file" not in result.stderr
    assert line == "grid: interrupted before anything was submitted; nothing was stored"


def test_ctrl_c_while_watching_says_state_is_kept_and_watch_resumes(batch, run_grid):
    jobs = jobs_file(batch, 3, "sleep 2")
    result = interrupt(batch, jobs, 0.5, wait_for=batch / ".grid" / "db")
    assert_one_true_line(result, batch, run_grid)


# -- --json: stdout is JSON lines and nothing else ---------------------------------------------------

def test_json_output_is_json_lines_when_the_job_file_prints_and_dirac_logs(batch, run_grid):
    jobs = write(batch / "jobs.py", """
import os, warnings
print("making the jobs")
os.system("echo from a child process")
warnings.warn("careful")
j = Job()
j.setName("hi")
j.setExecutable("echo hi")
submit(j)
""")
    result = run_grid("submit", "--backend", "local", "--json", "--interval", "0.2", jobs,
                      env={"GRID_DIRAC_LOGLEVEL": "DEBUG"})          # DIRAC logs what it does
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]   # every line is JSON
    assert events[-1]["event"] == "result" and events[-1]["done"] == 1
    for said in ("making the jobs", "from a child process", "careful", "DEBUG"):
        assert said in result.stderr                      # nothing lost: it is all on stderr


# -- refusals and summaries ------------------------------------------------------------------------

def test_resubmit_of_a_done_job_is_refused_without_force(batch, run_grid):
    job_pair = write(batch / "jobs.py", """
j = Job(); j.setName("works"); j.setExecutable("/bin/true"); submit(j)
j = Job(); j.setName("breaks"); j.setExecutable("/bin/false"); submit(j)
""")
    assert run_grid("submit", "--backend", "local", "--interval", "0.2", job_pair).returncode == 6
    refused = run_grid("resubmit", "1", "2", "--no-watch")
    assert refused.returncode == grid.EXIT_USAGE
    assert refused.stderr.splitlines() == [
        "grid: error: 1 job(s) named succeeded (#1): resubmit is for failed jobs",
        "grid: fix: add --force to run them again anyway (their outputs move to retried/)"]
    assert [job["attempts"] for job in status_of(run_grid)["jobs"]] == [1, 1]     # nothing resubmitted
    assert "--force" in run_grid("resubmit", "--help").stdout
    forced = run_grid("resubmit", "1", "--force", "--interval", "0.2")
    assert forced.returncode == grid.EXIT_JOBS_FAILED, forced.stderr            # #2 is still failed
    works = status_of(run_grid)["jobs"][0]
    assert works["attempts"] == 2 and works["status"] == "Done"


def test_kill_all_of_150_jobs_prints_one_summary(batch, run_grid):
    jobs = jobs_file(batch, 150, "sleep 60")
    assert run_grid("submit", "--backend", "local", "--no-watch", jobs, timeout=300).returncode == 0
    result = run_grid("kill", "--all", "--yes", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["killed 150 job(s); `grid watch` downloads what they left"]
    assert status_of(run_grid)["summary"]["Failed"] == 150                  # Killed counts as failed


# -- errors that say what is wrong ---------------------------------------------------------------

def without_root_override() -> None:
    """In the child, before exec: even root meets file permissions (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH leave its bounding set, so the exec'd grid does not have them)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        libc.prctl(24, capability, 0, 0, 0)              # PR_CAPBSET_DROP


def run_as_a_user(batch: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(grid_cmd(*args), cwd=batch, capture_output=True, text=True, timeout=120,
                          preexec_fn=without_root_override)


@pytest.fixture
def stored_batch(batch, run_grid) -> Path:
    """A batch of one job on the local backend, submitted and never watched."""
    jobs = jobs_file(batch, 1, "echo hi")
    assert run_grid("submit", "--backend", "local", "--no-watch", jobs).returncode == 0
    return batch


def test_a_permission_problem_on_the_database_is_not_reported_as_in_use(stored_batch):
    state = stored_batch / ".grid"
    (state / "owner").write_text(json.dumps({"pid": 999999, "command": "watch", "since": 1}))  # killed
    (state / "db" / "LOCK").chmod(0o444)
    result = run_as_a_user(stored_batch, "watch")
    assert result.returncode == grid.EXIT_BATCH
    assert result.stderr.splitlines() == [
        f"grid: error: cannot use the batch database: permission denied on {state}/db/LOCK",
        f"grid: fix: give yourself access to the batch's state again: `chmod -R u+rwX {state}`"]


def test_an_unreadable_database_file_is_one_error_and_a_fix_for_every_command(stored_batch):
    tables = list((stored_batch / ".grid" / "db").glob("*.ldb"))
    assert tables
    for table in tables:
        table.chmod(0)
    for command in (["watch"], ["status"], ["kill", "--all", "--yes"]):
        result = run_as_a_user(stored_batch, *command)
        assert result.returncode == grid.EXIT_BATCH, (command, result.stderr)
        error, fix = result.stderr.splitlines()
        assert error.startswith("grid: error: cannot use the batch database: permission denied on "
                                f"{stored_batch}/.grid/db/0") and error.endswith(".ldb")
        assert fix.startswith("grid: fix: give yourself access")


def test_a_dead_process_is_never_named_as_holding_the_batch(stored_batch, run_grid):
    state = stored_batch / ".grid"
    holder = subprocess.Popen([sys.executable, "-c", "import plyvel, sys, time; db = plyvel.DB(sys.argv[1]); "
                               "print('open', flush=True); time.sleep(60)", str(state / "db")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        (state / "owner").write_text(json.dumps({"pid": 999999, "command": "watch", "since": 1}))
        result = run_grid("watch")
        assert result.returncode == grid.EXIT_BATCH
        assert "is in use by another grid command" in result.stderr and "999999" not in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_export_errors_name_the_users_file_and_give_a_fix(stored_batch, run_grid, tmp_path):
    target = tmp_path / "no-such-folder" / "jobs.csv"
    result = run_grid("export", "--csv", target)
    assert result.returncode == grid.EXIT_ERROR
    assert result.stderr.splitlines() == [
        f"grid: error: cannot write {target}: no such folder",
        "grid: fix: give a file in a folder that exists and that you can write to, or '-' for the terminal"]
    folder = run_grid("export", "--json", tmp_path)
    assert folder.stderr.splitlines()[0] == f"grid: error: cannot write {tmp_path}: it is a folder"
    assert folder.stderr.splitlines()[1].startswith("grid: fix: give a file name")
    assert not list(tmp_path.rglob(".*.tmp"))


def test_export_into_a_named_pipe_writes_to_it_and_leaves_it_a_pipe(stored_batch, run_grid, tmp_path):
    pipe = tmp_path / "jobs.pipe"
    os.mkfifo(pipe)
    reader = subprocess.Popen(["cat", str(pipe)], stdout=subprocess.PIPE, text=True)
    try:
        result = run_grid("export", "--csv", pipe, timeout=30)
        assert result.returncode == 0, result.stderr
        assert reader.communicate(timeout=30)[0].startswith("num,name,status")
        assert pipe.is_fifo()
    finally:
        reader.kill()
        reader.wait()


# -- output folders honour the umask ---------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_output_folders_honour_the_umask(batch, umask, mode):
    jobs = jobs_file(batch, 1, "echo hi")
    result = subprocess.run(grid_cmd("submit", "--backend", "local", "--interval", "0.2", jobs), cwd=batch,
                            capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    folder = batch / "succeeded" / "00001_job-0"
    assert step_stdout(folder) == "hi\n"
    assert folder.stat().st_mode & 0o777 == mode
    assert (batch / "succeeded").stat().st_mode & 0o777 == mode


# -- a job killed by a signal ----------------------------------------------------------------------

def test_a_job_killed_by_a_signal_names_the_signal(batch, run_grid):
    jobs = jobs_file(batch, 1, "echo crashing; kill -SEGV $$", name="crashes")
    assert run_grid("submit", "--backend", "local", "--interval", "0.2", jobs).returncode == 6
    why = run_grid("why", "1", "--offline")
    assert "  exit code:   killed by signal 11 (SIGSEGV)\n" in why.stdout
    assert "-11" not in why.stdout.split("exit code:")[1].splitlines()[0]
    failures = run_grid("failures").stdout.splitlines()
    assert "       exit:  killed by signal 11 (SIGSEGV)" in failures
    assert json.loads(run_grid("failures", "--json").stdout)["groups"][0]["exit_code"] == -11   # as stored


# -- one line per job, whatever the job is called ----------------------------------------------------

STRANGE = "two\nlines\tand a tab"
SHOWN = "two\\nlines\\tand a tab"


def test_job_names_with_newlines_and_tabs_keep_one_line_per_job(batch, run_grid):
    jobs = write(batch / "jobs.py", f"""
j = Job(); j.setName({STRANGE!r}); j.setExecutable("/bin/false"); submit(j)
j = Job(); j.setName("plain"); j.setExecutable("/bin/true"); submit(j)
""")
    watched = run_grid("submit", "--backend", "local", "--interval", "0.2", jobs)
    assert watched.returncode == 6
    job_lines = [line for line in watched.stdout.splitlines() if " #1 " in line]
    assert job_lines and all(SHOWN in line for line in job_lines)         # every log line of #1, whole
    assert not any(line.startswith("lines") for line in watched.stdout.splitlines())
    status = run_grid("status").stdout.splitlines()
    assert len(status) == 3 and all(len(line.split("\t")) == 7 for line in status[1:])
    assert status[1].split("\t")[2] == SHOWN
    assert run_grid("why", "1", "--offline").stdout.splitlines()[0] == f"#1 {SHOWN}"
    assert run_grid("status", "--json").stdout.count(json.dumps(STRANGE)) == 1   # JSON keeps the name as it is
    dry = run_grid("submit", "--backend", "local", "--dry-run", jobs).stdout.splitlines()
    assert dry[1].startswith(f"#1 {SHOWN}  [")


def test_list_keeps_one_line_per_batch_whatever_the_folder_is_called(tmp_path, run_grid):
    folder = tmp_path / "run\none"
    folder.mkdir()
    assert run_grid("submit", "--backend", "local", "--no-watch", jobs_file(folder, 1), cwd=folder).returncode == 0
    listed = run_grid("list", cwd=tmp_path).stdout.splitlines()
    assert len(listed) == 1 and listed[0].startswith("run\\none\t")
    assert json.loads(run_grid("list", "--json", cwd=tmp_path).stdout)[0]["path"] == "run\none"


# -- the end of a command ------------------------------------------------------------------------------

ENDING = r'''
import atexit, sys
sys.path.insert(0, {root!r})
import grid

class Finalized:
    def __del__(self):
        sys.stdout.write("finalized\n")
        sys.stdout.flush()

grid.left_to_finalize = Finalized()          # its __del__ runs only if Python finalizes the module
atexit.register(lambda: sys.stdout.write("atexit ran\n"))
sys.argv = ["grid", *{argv!r}]
grid.run()
'''


@pytest.mark.parametrize("argv, gevent_ran", [(["submit", "--backend", "local", "--no-watch", "jobs.py"], True),
                                              (["status"], False)])
def test_a_command_that_ran_gevent_ends_without_finalizing_python(batch, argv, gevent_ran):
    """Daemon threads with gevent loops of their own (DIRAC's scheduler, gevent's threadpool) that
    wake up while Python finalizes crash the process with a segfault after its work is done. A
    command that ran gevent ends with os._exit once its output is flushed and atexit has run."""
    jobs_file(batch, 2)
    if not gevent_ran:
        subprocess.run(grid_cmd("submit", "--backend", "local", "--no-watch", "jobs.py"), cwd=batch, check=True,
                       capture_output=True)
    code = ENDING.format(root=str(Path(grid.__file__).parent), argv=argv)
    result = subprocess.run([sys.executable, "-c", code], cwd=batch, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "atexit ran" in lines
    assert ("finalized" in lines) is not gevent_ran, result.stdout
    if gevent_ran:
        assert "2 of 2 job(s) submitted" in result.stdout
    else:
        assert lines[0].startswith("S:") and len([line for line in lines if line.startswith("#")]) == 2
